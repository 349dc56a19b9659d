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

from gpurouter.errors import LockDirError, NoFreeSlot
from gpurouter.job import fsutil
from gpurouter.job.slots import acquire_slot

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from gpurouter.job.slots import Slot

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
        raise LockDirError(
            os.path.join(lock_dir, f"{pool}.{which}"), f"gate file unusable: {error.strerror}"
        ) from None
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


def take_as_realtime(
    lock_dir: str, pool: str, size: int, wait_s: float, announce_wait: Callable[[], None]
) -> tuple[Slot, list[int]]:
    """A slot for a realtime job: batch steps back while we wait; returns (slot, gate fds the job keeps)."""
    waiting = open_gate(lock_dir, pool, WAITING)
    running = open_gate(lock_dir, pool, RUNNING)
    try:
        hold_shared(waiting)  # while we wait, batch jobs step back
        held = acquire_slot(lock_dir, pool, size, wait_s, on_wait=announce_wait)
        hold_shared(running)  # for batch_yields = "running": held by the job until it exits
    except BaseException:
        os.close(running)
        raise
    finally:
        os.close(waiting)
    return held, [running]


def take_as_batch(
    lock_dir: str,
    pool: str,
    size: int,
    wait_s: float,
    announce_wait: Callable[[], None],
    began: float,
    yield_to_running: bool,
) -> Slot:
    """A slot for a batch job: only while no realtime job waits (or runs, with `yield_to_running`)."""
    import time

    gates = [open_gate(lock_dir, pool, WAITING)]
    if yield_to_running:
        gates.append(open_gate(lock_dir, pool, RUNNING))
    try:
        while True:
            for gate in gates:
                if not pass_gate(gate, blocking=False):
                    if wait_s <= 0:
                        raise _realtime_first(pool, size, 0.0)
                    announce_wait()
                    _sleep_at_gate(gate, wait_s - (time.monotonic() - began), pool, size)
            remaining = wait_s - (time.monotonic() - began) if wait_s > 0 else 0.0
            held = acquire_slot(lock_dir, pool, size, max(0.0, remaining), on_wait=announce_wait)
            if all(pass_gate(gate, blocking=False) for gate in gates):
                return held
            held.release()  # a realtime job arrived while we waited: step back and let it have the slot
            if wait_s <= 0:
                raise _realtime_first(pool, size, 0.0)
    finally:
        for gate in gates:
            os.close(gate)


def _sleep_at_gate(gate: int, remaining_s: float, pool: str, size: int) -> None:
    """Sleep in flock until the gate opens, or raise NoFreeSlot when `remaining_s` runs out."""
    if remaining_s == float("inf"):
        pass_gate(gate, blocking=True)
        return
    if remaining_s <= 0:
        raise _realtime_first(pool, size, 0.0)
    import threading

    opened = threading.Event()

    def sleeper() -> None:
        try:
            pass_gate(os.dup(gate), blocking=True)  # its own fd number: ours may close first
        except OSError:
            return
        opened.set()

    threading.Thread(target=sleeper, daemon=True).start()
    if not opened.wait(min(remaining_s, threading.TIMEOUT_MAX)):
        raise _realtime_first(pool, size, remaining_s)


def _realtime_first(pool: str, size: int, waited_s: float) -> NoFreeSlot:
    return NoFreeSlot(pool, size, waited_s, why=f"a realtime job has priority on pool {pool!r}")
