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

from gpurouter.job import fsutil, journal
from gpurouter.gpu import nvml

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

    from gpurouter.job.config import Resident, Settings

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
        if isinstance(entry, dict) and isinstance(entry.get("loaded"), bool) and \
                isinstance(entry.get("last_used"), (int, float)):
            state[name] = {"loaded": entry["loaded"], "last_used": float(entry["last_used"])}
        else:
            state[name] = _initial(resident)
    return state


def _write_state(dir_fd: int, state: dict[str, dict[str, Any]]) -> None:
    import json

    temporary = f".{STATE}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
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
    if "command" in action:
        import subprocess

        try:
            done = subprocess.run(list(action["command"]), stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout_s, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"command timed out after {timeout_s:g}s"
        except OSError as error:
            return f"command could not run: {error.strerror}"
        return None if done.returncode == 0 else f"command exited {done.returncode}"
    import urllib.error
    import urllib.request

    method, _, url = str(action["http"]).partition(" ")
    body = action.get("body")
    request = urllib.request.Request(url.strip(), method=method.upper(), data=body.encode() if body else None,
                                     headers={"Content-Type": "application/json", **action.get("headers", {})})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - configured by the operator
            response.read(1 << 16)
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code} from {url.strip()}"
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        return f"{url.strip()} unreachable: {getattr(error, 'reason', None) or error}"
    return None


def _victims(settings: Settings, state: dict[str, dict[str, Any]], profile: str, device: int | None) -> list[Resident]:
    candidates = [
        r for r in settings.residents.values()
        if state[r.name]["loaded"] and not r.managed and profile not in r.coexist and r.unload is not None
        and (device is None or r.device is None or str(r.device) == str(device))
    ]  # fmt: skip
    return sorted(candidates, key=lambda r: (state[r.name]["last_used"], r.name))  # least recently used first


def make_room(settings: Settings, decision: Any, why: str, record: dict[str, Any],
              environ: Mapping[str, str] | None) -> bool:  # fmt: skip
    """Evict one resident for a job that does not fit; True if the job should try again.

    Never raises for a failed unload: it is journalled and the job falls back.
    """
    if not settings.residents:
        return False
    need = decision.need_mib or 0
    with _Locked(settings) as locked:
        state = read_state(settings)
        victims = _victims(settings, state, decision.profile, None)
        if not victims:
            journal.append_record(settings.journal, "evict", **record, victim=None, ok=False,
                                  problem="no resident may be evicted (all managed, coexisting or unloaded)")  # fmt: skip
            return False
        evicted = None
        for victim in victims:  # least recently used first; a broken one must not block the rest
            device = _device_of(victim, environ)
            before = _free_mib(device, environ)
            problem = run_action(victim.unload or {}, victim.timeout_s)
            if problem is None:
                state[victim.name]["loaded"] = False
                evicted = (victim, device, before)
                break
            # Journal it and send it to the back of the line, so the next job does not wait on it first.
            state[victim.name]["last_used"] = time.time()
            journal.append_record(settings.journal, "evict", **record, victim=victim.name, ok=False, problem=problem,
                                  device=device, free_mib_before=before, free_mib_after=before,
                                  asked_by=decision.profile, wanted=why)  # fmt: skip
        _write_state(locked.dir_fd, state)
    if evicted is None:
        return False
    victim, device, before = evicted
    freed_after = before
    deadline = time.monotonic() + victim.timeout_s
    while time.monotonic() < deadline:  # bounded: the unload call returned before the VRAM was freed
        freed_after = _free_mib(device, environ)
        if freed_after is not None and before is not None and \
                freed_after - before >= min(victim.vram_mib, need + settings.gpu.cushion_mib) * 0.9:
            break
        time.sleep(POLL_S)
    journal.append_record(settings.journal, "evict", **record, victim=victim.name, ok=True, problem=None,
                          device=device, free_mib_before=before, free_mib_after=freed_after,
                          asked_by=decision.profile, wanted=why)  # fmt: skip
    return True


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
                journal.append_record(settings.journal, "load", **record, resident=resident.name, ok=problem is None,
                                      problem=problem)  # fmt: skip
                if problem is not None:
                    continue
            state[resident.name] = {"loaded": True, "last_used": time.time()}
        _write_state(locked.dir_fd, state)
