"""Realtime over batch, with flock gates beside each pool, event-driven and crash-safe.

Two gate files per pool, in the lock dir:

- `<pool>.realtime-waiting`: every realtime job *waiting* for the pool holds a shared lock
  on it. A batch job passes only when it can take an exclusive lock, i.e. when no
  realtime job waits; it sleeps in `flock(LOCK_EX)` until then (no polling), and a
  realtime waiter killed -9 releases its shared lock with its last fd, so batch is
  never left blocked. Linux grants a new shared lock while an exclusive request is
  merely pending, so a realtime job never queues behind batch.
- `<pool>.realtime-running`: with `batch_yields = "running"`, a realtime job also holds a
  shared lock on this for as long as it runs (the fd is inherited by the exec'd job).

A batch job that wins a slot checks the gates again without blocking; if a realtime job
arrived meanwhile, it gives the slot straight back ("steps back") and waits at the gate.
"""

from __future__ import annotations

import fcntl
import os

from gpurouter.job import fsutil
from gpurouter.errors import LockDirError

WAITING = "realtime-waiting"
RUNNING = "realtime-running"


def open_gate(lock_dir: str, pool: str, which: str) -> int:
    """An fd on one of the pool's gate files (created 0666 like the slot files).

    Raises:
        LockDirError: the gate name is planted (symlink, FIFO, ...) or unusable.
    """
    try:
        dir_fd = fsutil.open_shared_dir(lock_dir)
    except OSError as error:
        raise LockDirError(lock_dir, f"lock dir unusable: {error.strerror or error}") from None
    try:
        return fsutil.open_shared_file(f"{pool}.{which}", os.O_RDONLY, dir_fd=dir_fd)
    except OSError as error:
        raise LockDirError(os.path.join(lock_dir, f"{pool}.{which}"), f"gate file unusable: {error.strerror}") from None
    finally:
        os.close(dir_fd)


def hold_shared(fd: int) -> None:
    """Announce a realtime waiter/runner (blocks only for a batch job's instant check)."""
    fcntl.flock(fd, fcntl.LOCK_SH)


def pass_gate(fd: int, blocking: bool) -> bool:
    """Batch: pass when no realtime job holds the gate; sleep in the kernel if `blocking`."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)  # held for an instant only: never make realtime wait on batch
    return True
