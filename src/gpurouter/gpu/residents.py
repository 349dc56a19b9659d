"""Resident GPU services (an ollama server, ComfyUI, a whisper server) and their eviction.

Before a GPU job that does not fit, the least recently used resident that is loaded, not
`managed` (it runs its own VRAM policy) and not allowed to `coexist` with the job's
profile is unloaded (an HTTP call or a command, with a timeout), and gpurouter waits,
bounded, until NVML shows the memory free: nearly every unload API returns before the
VRAM is released (ollama's `keep_alive: 0` only marks the model to expire, ComfyUI's
`/free` acts after the current prompt). The LRU and loaded state live in
`lock_dir/residents.state`, replaced atomically under `lock_dir/residents.lock`.
"""

from __future__ import annotations

import fcntl
import os
import time

from gpurouter.gpu import nvml
from gpurouter.job import fsutil, journal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from gpurouter.job.settings import Resident, Settings

STATE = "residents.state"
LOCK = "residents.lock"
POLL_S = 0.25  # NVML has no "memory freed" event: re-read it at this pace while an unload completes


def _initial(resident: Resident) -> dict[str, Any]:
    # Lazy services (unload but no load: ComfyUI loads FLUX on the first prompt) are not
    # resident until used; billing their VRAM from the start made the eviction never fire.
    return {"loaded": not resident.lazy, "last_used": 0.0}


def read_state(settings: Settings) -> dict[str, dict[str, Any]]:
    """The residents' loaded flags and last use, with defaults for any not yet recorded."""
    import json

    stored: dict[str, Any] = {}
    try:
        fd = fsutil.open_regular_for_reading(os.path.join(settings.lock_dir, STATE))
        try:
            stored = json.loads(os.read(fd, 1 << 20) or b"{}")
        finally:
            os.close(fd)
    except (OSError, ValueError):
        stored = {}  # missing or torn: start from the defaults, never trust garbage
    state = {}
    for name, resident in settings.residents.items():
        entry = stored.get(name) if isinstance(stored, dict) else None
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("loaded"), bool)
            and isinstance(entry.get("last_used"), (int, float))
        ):
            state[name] = {"loaded": entry["loaded"], "last_used": float(entry["last_used"])}
            unloading = _valid_unloading(entry.get("unloading"))
            if unloading is not None:
                state[name]["unloading"] = unloading
        else:
            state[name] = _initial(resident)
    return state


def _valid_unloading(entry: object) -> dict[str, Any] | None:
    """An eviction in flight as recorded: device, MiB being freed, MiB its evictor reserved, pid, deadline."""
    if not isinstance(entry, dict):
        return None
    try:
        unloading = {
            "device": int(entry["device"]),
            "mib": int(entry["mib"]),
            "reserved": int(entry["reserved"]),
            "by": int(entry["by"]),
            "deadline": float(entry["deadline"]),
        }
    except (KeyError, TypeError, ValueError):
        return None
    return unloading if unloading["deadline"] > time.time() else None  # past its deadline: evidence decides


def _write_state(dir_fd: int, state: dict[str, dict[str, Any]]) -> None:
    import json

    temporary = f".{STATE}.{os.getpid()}.tmp"
    fd = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd
    )
    try:
        os.write(fd, json.dumps(state, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, STATE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # atomic: readers see old or new


class _Locked:
    """The residents lock held for a read-modify-write of the state file."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir_fd = fsutil.open_shared_dir(settings.lock_dir)
        self.fd = fsutil.open_shared_file(LOCK, os.O_RDONLY, dir_fd=self.dir_fd)

    def __enter__(self) -> _Locked:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
        os.close(self.dir_fd)


def run_action(action: Mapping[str, Any], timeout_s: float) -> str | None:
    """Do an unload/load action; None on success, else why it failed."""
    from gpurouter.gpu.actions import perform

    return perform(action, timeout_s)[0]


def _evictable(resident: Resident, profile: str) -> bool:
    return not resident.managed and profile not in resident.coexist and resident.unload is not None


def _plan(
    candidates: list[tuple[Resident, int, float]], room: int, need: int
) -> list[tuple[Resident, int, float]] | None:
    """The fewest (resident, MiB, last use) whose unloading makes `room` reach `need`, least
    recently used first."""
    import itertools

    for size in range(1, len(candidates) + 1):
        fitting = [
            combo
            for combo in itertools.combinations(candidates, size)
            if room + sum(c[1] for c in combo) >= need
        ]
        if fitting:
            best = min(fitting, key=lambda combo: sorted((c[2], c[0].name) for c in combo))
            return sorted(best, key=lambda c: (c[2], c[0].name))
    return None


def in_flight(state: Mapping[str, Mapping[str, Any]], lock_dir: str, pool: str) -> dict[int, tuple[int, int]]:
    """By device: (MiB being freed by evictions in flight, MiB their evictors have not yet claimed)."""
    from gpurouter.gpu import placement

    flying: dict[int, tuple[int, int]] = {}
    for entry in state.values():
        unloading = entry.get("unloading")
        if not unloading:
            continue
        reserved = unloading["reserved"]
        if not os.path.exists(f"/proc/{unloading['by']}") or unloading["by"] in placement.claimants(
            lock_dir, pool, unloading["device"]
        ):
            reserved = 0  # the evictor is gone or placed: its claim (if any) counts as promised instead
        mib, owed = flying.get(unloading["device"], (0, 0))
        flying[unloading["device"]] = (mib + unloading["mib"], owed + reserved)
    return flying


def make_room(
    settings: Settings, decision: Any, why: str, record: dict[str, Any], environ: Mapping[str, str] | None
) -> bool:
    """Make room for a job that does not fit; True if the job should try to place again.

    Room comes first from evictions already in flight (their memory counts for this job too:
    it waits for it), else from unloading the fewest residents, least recently used first, on
    a device with a free slot where that makes room. Residency and size come from evidence
    (see evidence.py). Never raises for a failed unload: it is journalled and the job falls back.
    """
    if not settings.residents:
        return False
    from gpurouter.gpu import evidence, placement, selection

    spec = decision.spec
    need = (decision.need_mib or 0) + settings.gpu.cushion_mib
    done: list[tuple[Resident, int]] | None = None  # evicted by this call (None: waiting for one in flight)
    with _Locked(settings) as locked:
        state = read_state(settings)
        query = nvml.query_gpus(environ)
        gpus = selection.eligible(query.gpus, settings.gpu.devices)
        promised = placement.read_claims(settings.lock_dir, gpus, spec.pool)
        open_gpus = [g for g in gpus if placement.has_free_slot(settings, spec, g)]
        free = {g.index: max(0, (g.memory_free_mib or 0) - promised.get(g.index, 0)) for g in gpus}
        flying = in_flight(state, settings.lock_dir, spec.pool)
        for gpu in open_gpus:
            mib, owed = flying.get(gpu.index, (0, 0))
            if mib and free[gpu.index] < need <= free[gpu.index] + mib - owed:
                journal.append_record(
                    settings.journal,
                    "evict",
                    **record,
                    victim=None,
                    ok=True,
                    outcome="in_flight",
                    problem=None,
                    device=gpu.index,
                    free_mib_before=free[gpu.index],
                    in_flight_mib=mib,
                    asked_by=decision.profile,
                    wanted=why,
                )
                deadline = max(e["unloading"]["deadline"] for e in state.values() if e.get("unloading"))
                break
        else:
            deadline = None
        if deadline is None:
            seen = evidence.observe(settings.residents, query, state, evidence.foreign_pids(query))
            plan, device = None, None
            for gpu in open_gpus:  # in index order; the fewest victims, then the least recently used, win
                mib, owed = flying.get(gpu.index, (0, 0))
                candidates = [
                    (r, seen[r.name].mib, state[r.name]["last_used"])
                    for r in settings.residents.values()
                    if _evictable(r, decision.profile)
                    and seen[r.name].loaded
                    and not state[r.name].get("unloading")
                    and _on_device(r, seen[r.name], gpu.index, query)
                ]
                option = _plan(candidates, free[gpu.index] + mib - owed, need)
                if option is not None and (
                    plan is None
                    or (len(option), sorted(c[2] for c in option)) < (len(plan), sorted(c[2] for c in plan))
                ):
                    plan, device = option, gpu.index
            if plan is None or device is None:
                sources = ", ".join(
                    f"{n} {'loaded' if v.loaded else 'unloaded'} {v.mib} MiB ({v.source}"
                    + ("; being unloaded" if state.get(n, {}).get("unloading") else "")
                    + ")"
                    for n, v in seen.items()
                )  # "being unloaded": why a loaded resident was no victim (the busy-box replay)
                journal.append_record(
                    settings.journal,
                    "evict",
                    **record,
                    victim=None,
                    ok=False,
                    outcome="no_victim",
                    problem=f"no eviction makes room on a GPU with a free slot ({sources})",
                    asked_by=decision.profile,
                    wanted=why,
                )
                return False
            before = free[device]
            done = []
            for victim, mib, _ in plan:
                problem = run_action(victim.unload or {}, victim.timeout_s)
                if problem is not None:
                    # Journal it and send it to the back of the line, so the next job does not wait
                    # on it first.
                    state[victim.name]["last_used"] = time.time()
                    journal.append_record(
                        settings.journal,
                        "evict",
                        **record,
                        victim=victim.name,
                        ok=False,
                        outcome="failed",
                        problem=problem,
                        device=device,
                        free_mib_before=before,
                        free_mib_after=before,
                        source=seen[victim.name].source,
                        asked_by=decision.profile,
                        wanted=why,
                    )
                    break
                state[victim.name]["loaded"] = False
                state[victim.name]["unloading"] = {
                    "device": device,
                    "mib": mib,
                    "reserved": need if not done else 0,
                    "by": os.getpid(),
                    "deadline": time.time() + victim.timeout_s,
                }
                done.append((victim, mib))
            _write_state(locked.dir_fd, state)
            if len(done) < len(plan):
                return False
            deadline = max(state[v.name]["unloading"]["deadline"] for v, _ in done)
    if done is None:
        _wait_for_free(settings, spec, need, None, deadline, environ)
        return True
    freed_after = _wait_for_free(settings, spec, need, device, deadline, environ)
    with _Locked(settings) as locked:  # freed (or timed out): the memory is NVML's to show now, not in flight
        state = read_state(settings)
        query = nvml.query_gpus(environ)
        now = evidence.observe(settings.residents, query, state, evidence.foreign_pids(query))
        for victim, _ in done:
            # The wait ends once the job's need is free, which other work ending can bring about
            # before the victim lets go (the busy-box replay: one unload asked for three times,
            # three `evicted` records). While the evidence still shows it loaded, its eviction
            # stays in flight until its deadline: never a victim again, its MiB counted for others.
            if not now[victim.name].loaded:
                state[victim.name].pop("unloading", None)
        _write_state(locked.dir_fd, state)
    for victim, mib in done:
        journal.append_record(
            settings.journal,
            "evict",
            **record,
            victim=victim.name,
            ok=True,
            outcome="evicted",
            problem=None,
            device=device,
            victim_mib=mib,
            source=seen[victim.name].source,
            free_mib_before=before,
            free_mib_after=freed_after,
            asked_by=decision.profile,
            wanted=why,
        )
    return True


def _on_device(resident: Resident, seen: Any, index: int, query: Any) -> bool:
    if seen.device is not None:
        return bool(seen.device == index)
    if resident.device is None:
        return bool(query.gpus and query.gpus[0].index == index)
    return str(resident.device) in (str(index), next((g.uuid for g in query.gpus if g.index == index), None))


def _wait_for_free(
    settings: Settings,
    spec: Any,
    need: int,
    device: int | None,
    deadline: float,
    environ: Mapping[str, str] | None,
) -> int | None:
    """Wait (bounded by `deadline`) until a device with a free slot shows `need` MiB free for this job;
    the free MiB seen last. The unload call returned before the memory was freed."""
    from gpurouter.gpu import placement, selection

    seen = None
    while True:
        gpus = selection.eligible(nvml.query_gpus(environ).gpus, settings.gpu.devices)
        promised = placement.read_claims(settings.lock_dir, gpus, spec.pool, exclude_pid=None)
        flying = in_flight(read_state(settings), settings.lock_dir, spec.pool)
        for gpu in gpus:
            if device is not None and gpu.index != device:
                continue
            owed = (
                0 if device is not None else flying.get(gpu.index, (0, 0))[1]
            )  # an evictor's own reservation is for itself
            free = max(0, (gpu.memory_free_mib or 0) - promised.get(gpu.index, 0))
            seen = free if device is not None or seen is None else max(seen, free)
            if free - owed >= need:
                return free
        if time.time() >= deadline:
            return seen
        time.sleep(POLL_S)


def _device_of(resident: Resident, environ: Mapping[str, str] | None) -> int | None:
    if isinstance(resident.device, int):
        return resident.device
    query = nvml.query_gpus(environ)
    for gpu in query.gpus:
        if resident.device is not None and gpu.uuid == resident.device:
            return gpu.index
    return query.gpus[0].index if query.gpus else None


def _free_mib(device: int | None, environ: Mapping[str, str] | None) -> int | None:
    for gpu in nvml.query_gpus(environ).gpus:
        if device is None or gpu.index == device:
            return gpu.memory_free_mib
    return None


def note_job(settings: Settings, profile: str, record: dict[str, Any]) -> None:
    """A job of `profile` starts: residents it coexists with count as used (and are loaded again)."""
    users = [r for r in settings.residents.values() if profile in r.coexist]
    if not users:
        return
    with _Locked(settings) as locked:
        state = read_state(settings)
        for resident in users:
            if not state[resident.name]["loaded"] and resident.load is not None:
                problem = run_action(resident.load, resident.timeout_s)
                journal.append_record(
                    settings.journal,
                    "load",
                    **record,
                    resident=resident.name,
                    ok=problem is None,
                    problem=problem,
                )
                if problem is not None:
                    continue
            state[resident.name] = {"loaded": True, "last_used": time.time()}
        _write_state(locked.dir_fd, state)
