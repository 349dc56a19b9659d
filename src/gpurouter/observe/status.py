"""Who holds and who waits for each slot, read from the kernel (`/proc/locks`), never from
files that can go stale: a crashed holder holds nothing and is never shown.

The journal only adds colour (profile, route, since when) to pids the kernel reports.
"""

from __future__ import annotations

import os

from gpurouter.job import journal
from gpurouter.job.kernel import kernel_flocks
from gpurouter.job.records import Record
from gpurouter.job.units import is_safe_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from gpurouter.job.settings import Settings


class SlotRow(Record):
    """One slot: free, or held by a pid; with the pids waiting on it."""

    __slots__ = ("pool", "index", "path", "holder", "waiters")
    pool: str
    index: int
    path: str
    holder: dict[str, Any] | None
    waiters: list[dict[str, Any]]


def process_info(pid: int) -> dict[str, Any]:
    """User, command line and start time of a live pid (empty if it vanished: that is normal)."""
    info: dict[str, Any] = {"pid": pid}
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            info["command"] = [a.decode("utf-8", "replace") for a in stream.read().split(b"\0") if a]
        uid = os.stat(f"/proc/{pid}").st_uid
        info["uid"] = uid
        try:
            import pwd

            info["user"] = pwd.getpwuid(uid).pw_name
        except (KeyError, ImportError):
            info["user"] = str(uid)
    except OSError:  # gone while we looked: not an error
        pass
    return info


def _processes_with_open(info: os.stat_result) -> list[int]:
    """Pids with an fd open on the file `info` describes (what lsof would say)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                try:
                    target = os.stat(f"/proc/{entry}/fd/{fd}")
                except OSError:
                    continue
                if (target.st_dev, target.st_ino) == (info.st_dev, info.st_ino):
                    found.append(int(entry))
                    break
        except OSError:
            continue  # gone, or not ours to look at
    return found


def lock_dir_problem(lock_dir: str) -> tuple[str, bool] | None:
    """(what is wrong with the lock dir, whether no slot can be taken at all), or None when it is usable.

    Why: with the lock dir missing or not a directory, `status` showed every slot "free" (issue 12).
    """
    import stat

    try:
        info = os.stat(lock_dir, follow_symlinks=False)
    except FileNotFoundError:
        return "does not exist yet: every slot is free (the first job creates it)", False
    except OSError as error:
        return f"lock dir unusable: {error.strerror or error}: no slot can be taken", True
    if stat.S_ISLNK(info.st_mode):
        return "lock dir unusable: a symlink (refused): no slot can be taken", True
    if not stat.S_ISDIR(info.st_mode):
        return "lock dir unusable: not a directory: no slot can be taken", True
    return None


def configured_pools(settings: Settings) -> dict[str, int]:
    """{pool: largest slot count any profile may use}, including the built-in gpu and cpu pools."""
    pools = {"gpu": 1, "cpu": 1}
    for profile in settings.profiles.values():
        for spec in (profile.gpu, profile.cpu):
            pools[spec.pool] = max(pools.get(spec.pool, 0), spec.slots)
    return pools


def slot_rows(settings: Settings, skipped: dict[str, int] | None = None) -> list[SlotRow]:
    """Every configured slot (and any extra slot file found) with its holder and waiters.

    Args:
        settings: the configuration.
        skipped: if given, `skipped["malformed"]` counts the journal lines skipped as malformed.
    """
    pools = configured_pools(settings)
    try:  # slot files only: not the probe cache directory, claims, gates or the journal
        names = [e.name for e in os.scandir(settings.lock_dir) if e.is_file(follow_symlinks=False)]
    except OSError:
        names = []
    for name in names:  # slot files beyond today's config: per-device pools (gpu0, gpu1...), older configs
        pool, _, suffix = name.rpartition(".")
        if suffix.isascii() and suffix.isdigit() and is_safe_name(pool):
            pools[pool] = max(pools.get(pool, 0), int(suffix) + 1)
    locks = kernel_flocks()
    starts = _latest_starts(settings, skipped)
    rows = []
    for pool, count in sorted(pools.items()):
        seen: set[int] = set()  # a waiter blocks on every slot it may take: show it once per pool (issue 12)
        for index in range(count):
            slot_file = os.path.join(settings.lock_dir, f"{pool}.{index}")
            holder, waiters = None, []
            try:
                info = os.stat(slot_file, follow_symlinks=False)
                entry = locks.get((os.major(info.st_dev), os.minor(info.st_dev), info.st_ino), {})
            except OSError:
                entry = {}
            for pid in entry.get("held", [])[:1]:
                holder = {**process_info(pid), **starts.get((pid, f"{pool}.{index}"), {})}
                if "command" not in holder:
                    # The locking pid is gone but the lock lives on in a process that inherited the
                    # fd (a monitored job whose gpurouter was killed -9): show that process.
                    for owner in _processes_with_open(info):
                        holder = {
                            **process_info(owner),
                            "locked_by": pid,
                            **starts.get((pid, f"{pool}.{index}"), {}),
                        }
                        break
            waiting = [pid for pid in dict.fromkeys(entry.get("waiting", [])) if pid not in seen]
            seen.update(waiting)
            waiters = [{**process_info(pid), **starts.get((pid, None), {})} for pid in waiting]
            rows.append(SlotRow(pool=pool, index=index, path=slot_file, holder=holder, waiters=waiters))
        rows.extend(_gate_rows(settings, pool, locks, starts))
    return rows


def _gate_rows(
    settings: Settings,
    pool: str,
    locks: dict[tuple[int, int, int], dict[str, list[int]]],
    starts: dict[tuple[int, str | None], dict[str, Any]],
) -> list[SlotRow]:
    """Realtime jobs announced at a pool's gates (holders) and batch jobs sleeping there (waiters)."""
    from gpurouter.job.priority import RUNNING, WAITING

    rows = []
    for gate in (WAITING, RUNNING):
        path = os.path.join(settings.lock_dir, f"{pool}.{gate}")
        try:
            info = os.stat(path, follow_symlinks=False)
        except OSError:
            continue
        entry = locks.get((os.major(info.st_dev), os.minor(info.st_dev), info.st_ino), {})
        if not entry.get("held") and not entry.get("waiting"):
            continue
        holders = [{**process_info(pid), **starts.get((pid, None), {})} for pid in entry.get("held", [])]
        waiters = [{**process_info(pid), **starts.get((pid, None), {})} for pid in entry.get("waiting", [])]
        rows.append(
            SlotRow(
                pool=pool, index=-1, path=path, holder={"gate": gate, "realtime": holders}, waiters=waiters
            )
        )
    return rows


def _latest_starts(
    settings: Settings, skipped: dict[str, int] | None = None
) -> dict[tuple[int, str | None], dict[str, Any]]:
    """Journal details of recent start/wait records by (pid, slot)."""
    found: dict[tuple[int, str | None], dict[str, Any]] = {}
    if not settings.journal:
        return found
    for record in journal.read_records(settings.journal, tail_bytes=4 << 20, skipped=skipped):
        if record.get("event") in ("start", "wait") and isinstance(record.get("pid"), int):
            slot = record.get("slot") if record["event"] == "start" else None
            found[(record["pid"], slot)] = {
                k: record.get(k) for k in ("profile", "route", "ts", "reason", "priority")
            }
    return found
