"""Per-user cache of probe metrics, keyed by the input's identity.

A runner that gets 75 retries the same input again and again; with the cache a retry
probes nothing. Entries live in `lock_dir/probe-cache.<uid>/` (mode 0700, owned by the
user, opened without following symlinks), one small file each, written to a temporary
name and renamed into place. Anything unexpected is ignored, never trusted.
"""

from __future__ import annotations

import os
import stat
import zlib

from gpurouter.job import fsutil

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_MAX_ENTRIES = 20000  # past this, a writer now and then drops the oldest half


def entry_name(kind: str, info: os.stat_result, command: tuple[str, ...] | None = None) -> str:
    """'duration-803-1a2b-3e8-17f...-18a...' (+ a checksum of the probe command for command probes).

    The ctime is in the key (issue 12): `cp -p` or `touch -r` rewrites a file keeping its size
    and mtime, but no one can set the ctime back.
    """
    name = (
        f"{kind}-{info.st_dev:x}-{info.st_ino:x}-{info.st_size:x}-{info.st_mtime_ns:x}-{info.st_ctime_ns:x}"
    )
    if command:
        name += f"-{zlib.crc32(chr(0).join(command).encode('utf-8', 'surrogateescape')):08x}"
    return name


def cache_dir(lock_dir: str) -> str:
    """This user's cache directory under the lock dir."""
    return os.path.join(lock_dir, f"probe-cache.{os.geteuid()}")


def _open_own_dir(lock_dir: str, create: bool) -> int | None:
    name = os.path.basename(cache_dir(lock_dir))
    try:
        parent = fsutil.open_shared_dir(lock_dir, create=create)
    except OSError:
        return None
    try:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(name, 0o700, dir_fd=parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError:
        return None
    finally:
        os.close(parent)
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        os.close(fd)  # planted by someone else, or opened up: do not trust it
        return None
    return fd


def recall(lock_dir: str, name: str) -> tuple[float | None, str] | None:
    """(metric or None, note) cached under `name`, or None when there is no usable entry."""
    dir_fd = _open_own_dir(lock_dir, create=False)
    if dir_fd is None:
        return None
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_size > 4096:
            return None
        text = os.read(fd, 4096).decode("utf-8")
        value, _, note = text.partition("\n")
        if value == "none":
            return None, note.strip()
        metric = float(value)
        if metric != metric or metric < 0 or metric == float("inf"):
            return None
        return metric, note.strip()
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def remember_oom(lock_dir: str, path: str, note: str) -> None:
    """Mark the input at `path` (by identity: a rewritten file is a new input) as one that ran out
    of GPU memory."""
    try:
        info = os.stat(path)
    except OSError:
        return
    if stat.S_ISREG(info.st_mode):
        remember(lock_dir, entry_name("oom", info), None, note)


def recall_oom(lock_dir: str, path: str) -> str | None:
    """Why the input at `path` must not go to the GPU again (it ran out of memory there), or None."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    hit = recall(lock_dir, entry_name("oom", info)) if stat.S_ISREG(info.st_mode) else None
    return None if hit is None else hit[1] or "GPU out of memory on this input before"


def remember(lock_dir: str, name: str, metric: float | None, note: str) -> None:
    """Store an entry; every failure is silent (the cache is only an optimisation)."""
    dir_fd = _open_own_dir(lock_dir, create=True)
    if dir_fd is None:
        return
    temporary = f".{name}.{os.getpid()}.tmp"
    try:
        payload = f"{'none' if metric is None else repr(float(metric))}\n{note}\n".encode("utf-8", "replace")
        fd = os.open(
            temporary,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        if os.urandom(1)[0] == 0:  # about one write in 256 looks at the size of the cache
            _prune(dir_fd)
    except OSError:
        try:
            os.unlink(temporary, dir_fd=dir_fd)
        except OSError:
            pass
    finally:
        os.close(dir_fd)


def _prune(dir_fd: int) -> None:
    names = os.listdir(dir_fd)
    if len(names) <= _MAX_ENTRIES:
        return
    aged = []
    for name in names:
        try:
            aged.append((os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime_ns, name))
        except OSError:
            continue
    for _, name in sorted(aged)[: len(aged) // 2]:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass
