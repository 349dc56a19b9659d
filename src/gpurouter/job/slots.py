"""An N-slot counting semaphore made of flock'ed files `lock_dir/<pool>.<i>`.

A slot is held by an open file description with an exclusive `flock(2)` on it. The kernel
releases it when the last descriptor closes: when the job exits, crashes or is killed -9.
No daemon, no pid file, no stale lock.

Waiting happens in the kernel: a blocked caller sleeps inside `flock(LOCK_EX)` and the
kernel wakes it when a holder's last fd closes (the util-linux flock(1) way). GNU parallel
`sem` and `filelock` sleep-and-retry instead, which makes their hand-off 20-50x slower.
With several slots, one thread per slot sleeps in flock; the first to win is the slot.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from gpurouter.errors import LockDirError, NoFreeSlot
from gpurouter.job import fsutil

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

# errnos that mean "someone else holds it", as opposed to a real failure (see filelock's _unix.py).
_HELD_ELSEWHERE = frozenset((errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES))


class Slot:
    """A held slot; owns the locked fd until `release()` or exec hands it to the job."""

    __slots__ = ("pool", "index", "fd", "path", "waited_s")

    def __init__(self, pool: str, index: int, fd: int, path: str, waited_s: float) -> None:
        self.pool, self.index, self.fd, self.path, self.waited_s = pool, index, fd, path, waited_s

    @property
    def name(self) -> str:
        """'gpu.0'."""
        return f"{self.pool}.{self.index}"

    def release(self) -> None:
        """Unlock by closing the fd (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Slot({self.name!r}, fd={self.fd}, waited_s={self.waited_s:.3f})"


def slot_path(lock_dir: str, pool: str, index: int) -> str:
    """The file behind slot `index` of `pool`."""
    return os.path.join(lock_dir, f"{pool}.{index}")


def open_lock_dir(lock_dir: str) -> int:
    """An fd on the lock dir (created 1777 if missing).

    Raises:
        LockDirError: missing parent, not a directory, a symlink, unsafe mode, unwritable.
    """
    try:
        return fsutil.open_shared_dir(lock_dir)
    except OSError as error:
        raise LockDirError(lock_dir, f"lock dir unusable: {error.strerror or error}") from None


def _open_slot_file(dir_fd: int, lock_dir: str, pool: str, index: int) -> int:
    try:
        return fsutil.open_shared_file(f"{pool}.{index}", os.O_RDONLY, dir_fd=dir_fd)
    except OSError as error:
        raise LockDirError(
            slot_path(lock_dir, pool, index), f"slot file unusable: {error.strerror or error}"
        ) from None


def _try_lock(fd: int, path: str) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in _HELD_ELSEWHERE:
            return False
        raise LockDirError(path, f"flock failed: {error.strerror}") from None
    return True


def acquire_slot(
    lock_dir: str, pool: str, slots: int, wait_s: float, on_wait: Callable[[], None] | None = None
) -> Slot:
    """Take one of the first `slots` slots of `pool`.

    Args:
        lock_dir: directory holding the slot files.
        pool: pool name (file name prefix).
        slots: how many slots of the pool this caller may use (slots 0..slots-1).
        wait_s: 0 to fail fast, `math.inf` to block, else the longest wait in seconds.
        on_wait: called once, just before the caller starts to sleep for a slot.

    Returns:
        The held slot; its fd is close-on-exec until `execute` hands it to the job.

    Raises:
        NoFreeSlot: all slots are held and `wait_s` is 0 or ran out.
        LockDirError: the lock dir or a slot file cannot be used safely.
    """
    return acquire_any(lock_dir, [(pool, index) for index in range(slots)], wait_s, on_wait)


def acquire_any(
    lock_dir: str,
    candidates: Sequence[tuple[str, int]],
    wait_s: float,
    on_wait: Callable[[], None] | None = None,
) -> Slot:
    """Take the first free slot of `candidates` (in order), or wait for whichever frees first.

    Raises:
        NoFreeSlot: all are held and `wait_s` is 0 or ran out.
        LockDirError: the lock dir or a slot file cannot be used safely.
    """
    started = time.monotonic()
    pool_name = ",".join(dict.fromkeys(pool for pool, _ in candidates))
    dir_fd = open_lock_dir(lock_dir)
    unusable: list[LockDirError] = []
    try:
        usable = []
        for pool, index in candidates:  # fail-fast pass: first free slot in order, one open at a time
            try:
                fd = _open_slot_file(dir_fd, lock_dir, pool, index)
            except LockDirError as error:
                # A name planted by another user (symlink, FIFO, directory...) costs that slot only:
                # it must not fail a job that another slot of the pool can take.
                unusable.append(error)
                continue
            usable.append((pool, index))
            if _try_lock(fd, slot_path(lock_dir, pool, index)):
                _warn_unusable(unusable)
                return Slot(pool, index, fd, slot_path(lock_dir, pool, index), 0.0)
            os.close(fd)
        if not usable:
            raise unusable[0]
        if wait_s <= 0:
            raise NoFreeSlot(pool_name, len(usable), 0.0)
        if on_wait is not None:
            on_wait()
        fds = [_open_slot_file(dir_fd, lock_dir, pool, index) for pool, index in usable]
    finally:
        os.close(dir_fd)
    _warn_unusable(unusable)
    return _wait_for_any(lock_dir, usable, fds, wait_s, started)


def _warn_unusable(problems: list[LockDirError]) -> None:
    for problem in problems:
        try:
            os.write(2, f"gpurouter: warning: skipped {problem}\n".encode("utf-8", "replace"))
        except OSError:
            pass


def _wait_for_any(
    lock_dir: str, candidates: list[tuple[str, int]], fds: list[int], wait_s: float, started: float
) -> Slot:
    if len(fds) == 1 and wait_s == float("inf"):
        fcntl.flock(fds[0], fcntl.LOCK_EX)  # sleeps in the kernel; nothing else to watch
        pool, index = candidates[0]
        return Slot(pool, index, fds[0], slot_path(lock_dir, pool, index), time.monotonic() - started)

    import threading  # deferred: only a waiter on several slots or with a deadline pays for it

    won: list[int] = []
    settled = threading.Lock()
    done = threading.Event()

    def sleep_on(position: int) -> None:
        try:
            fcntl.flock(fds[position], fcntl.LOCK_EX)
        except OSError:
            return
        with settled:
            if not won and not done.is_set():
                won.append(position)
                done.set()
                return
        os.close(fds[position])  # a late winner: give the slot straight back

    for position in range(len(fds)):
        threading.Thread(
            target=sleep_on,
            args=(position,),
            daemon=True,
            name=f"gpurouter-{candidates[position][0]}.{candidates[position][1]}",
        ).start()
    # Past threading.TIMEOUT_MAX (~292 years) a bound is the same as none, and Event.wait would overflow.
    bounded = wait_s != float("inf") and wait_s < threading.TIMEOUT_MAX
    done.wait(max(0.0, wait_s - (time.monotonic() - started)) if bounded else None)
    with settled:
        done.set()  # from here on a late winner releases at once
        winner = won[0] if won else None
    if winner is None:
        # Threads still asleep hold only their own fds; each closes its fd if it ever wins.
        pool_name = ",".join(dict.fromkeys(pool for pool, _ in candidates))
        raise NoFreeSlot(pool_name, len(fds), time.monotonic() - started)
    # Loser threads still sleep in flock() on their own fds; closing those fds here would let
    # the numbers be reused under them. Exec closes them (close-on-exec), or each thread
    # closes its fd itself if it ever wins.
    pool, index = candidates[winner]
    return Slot(pool, index, fds[winner], slot_path(lock_dir, pool, index), time.monotonic() - started)
