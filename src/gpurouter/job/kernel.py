"""What the kernel knows about flock'ed files (`/proc/locks`) and processes (`/proc`)."""

from __future__ import annotations

import os


def kernel_flocks() -> dict[tuple[int, int, int], dict[str, list[int]]]:
    """{(major, minor, inode): {"held": [pids], "waiting": [pids]}} from /proc/locks (FLOCK only)."""
    found: dict[tuple[int, int, int], dict[str, list[int]]] = {}
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as stream:
            lines = stream.read().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        waiting = "->" in fields
        if waiting:
            fields.remove("->")
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
        except ValueError:
            continue
        entry = found.setdefault(key, {"held": [], "waiting": []})
        entry["waiting" if waiting else "held"].append(pid)
    return found


def file_key(info: os.stat_result) -> tuple[int, int, int]:
    """The /proc/locks key of a file."""
    return os.major(info.st_dev), os.minor(info.st_dev), info.st_ino


def parent_pid(pid: int) -> int | None:
    """The parent of `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            stat = stream.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def lineage(pid: int) -> set[int]:
    """`pid` and its ancestors (up to 64 generations; just {pid} if it is gone or not ours to see)."""
    found: set[int] = set()
    while pid > 1 and len(found) < 64:
        found.add(pid)
        next_pid = parent_pid(pid)
        if next_pid is None:
            break
        pid = next_pid
    return found


def slot_holders(lock_dir: str) -> set[int]:
    """The pids holding a slot of any pool in `lock_dir` (slot files are named POOL.INDEX): the
    gpurouter jobs running now, or their monitoring parents."""
    keys = set()
    try:
        with os.scandir(lock_dir) as entries:
            for entry in entries:
                pool, dot, index = entry.name.rpartition(".")
                if dot and pool and index.isdigit() and entry.is_file(follow_symlinks=False):
                    keys.add(file_key(entry.stat(follow_symlinks=False)))
    except OSError:
        return set()
    holders: set[int] = set()
    for key, lockers in kernel_flocks().items():
        if key in keys:
            holders.update(lockers["held"])
    return holders


def descends_from(pid: int, ancestor: int) -> bool:
    """Is `pid` the process `ancestor` or one of its descendants?"""
    seen = 0
    while pid and pid > 1 and seen < 64:
        if pid == ancestor:
            return True
        next_pid = parent_pid(pid)
        if next_pid is None:
            return False
        pid, seen = next_pid, seen + 1
    return pid == ancestor
