"""Find, read and validate the configuration into frozen records.

The search order is the contract's: `--config FILE`, `$GPUROUTER_CONFIG`,
`$XDG_CONFIG_HOME/gpurouter/config.toml` (or `~/.config/...`), `/etc/gpurouter/config.toml`.
With no file at all the built-in defaults apply and everything still works.

`tomllib` costs ~10-20 ms to import, so the parsed document is memoised per user, keyed by
the file's identity (device, inode, size, mtime, ctime); validation always runs afresh.
"""

from __future__ import annotations

import math
import os

from gpurouter import units
from gpurouter._record import Record
from gpurouter.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

BUILTIN = "built-in"
ROUTES = ("gpu", "cpu")
PROBES = ("duration", "size", "pixels", "command")
FALLBACKS = ("cpu", "gpu", "fail")
ARGS_POSITIONS = ("append", "prepend")

DEFAULT_LOCK_DIR = "/tmp/gpurouter"
DEFAULTS: dict[str, Any] = {
    "lock_dir": DEFAULT_LOCK_DIR,
    "journal": None,  # default: <lock_dir>/journal.jsonl
    "busy_exit_code": 75,
    "ffprobe": "ffprobe",
    "probe_timeout": "20s",
    "probe_cache": True,
}
PROFILE_DEFAULTS: dict[str, Any] = {
    "binary": None,
    "probe": None,
    "probe_command": None,
    "threshold": None,
    "input": "last",
    "fallback": "cpu",
    "wait": "fail",
    # policies (issue: CPU guard, max-wait escape, priority, hours)
    "max_wait": None,
    "priority": None,
    "batch_yields": "waiting",
    "hours": None,
    "outside_hours": "cpu",
    "no_gpu": None,  # None: never ask the driver (a check costs an NVML query per job)
    # monitoring
    "monitor": False,
    "monitor_interval": "1s",
    "on_gpu_oom": None,
    "oom_patterns": None,
}
GUARD_DEFAULTS: dict[str, Any] = {"threads": None, "nice": None, "ionice": None, "cpus": None, "force_env": False}
ROUTE_DEFAULTS: dict[str, Any] = {
    "args": [], "slots": 1, "pool": None, "args_position": "append", "env": {},
    **GUARD_DEFAULTS, "ram_mib": None, "vram_mib": None, "gpus": None, "on_low_vram": "cpu",
}  # fmt: skip
GPU_DEFAULTS: dict[str, Any] = {
    "enabled": True, "devices": None, "select": "score", "cushion_mib": 256,
    # vram_mib = "auto": MiB per device by model size named in the job's arguments (first match wins)
    "vram_estimates": {"70b": 20000, "65b": 20000, "13b": 12000, "7b": 12000}, "vram_default_mib": 8000,
}  # fmt: skip
RESIDENT_DEFAULTS: dict[str, Any] = {"vram_mib": None, "unload": None, "load": None, "coexist": [],
                                     "managed": False, "lazy": None, "device": None, "timeout": "10s"}  # fmt: skip
BACKEND_DEFAULTS: dict[str, Any] = {"kind": "local", "slurm": {}}
SLURM_DEFAULTS: dict[str, Any] = {"partition": None, "account": None, "srun_args": [], "time": None,
                                  "srun": "srun"}  # fmt: skip
PRIORITIES = ("realtime", "batch")
ON_LOW_VRAM = ("cpu", "busy", "wait", "evict")
SELECTS = ("score", "first", "round-robin")
DEFAULT_OOM_PATTERNS = (
    "CUDA out of memory",  # PyTorch: torch.cuda.OutOfMemoryError
    "CUDA failed with error out of memory",  # CTranslate2 / faster-whisper
    "CUDA_ERROR_OUT_OF_MEMORY",  # CUDA driver API (ffmpeg's NVENC/NVDEC, cuvid)
    "OpenEncodeSessionEx failed: out of memory",  # ffmpeg NVENC
    "out of memory (10)",  # ffmpeg NVENC: NV_ENC_ERR_OUT_OF_MEMORY
)


class Guard(Record):
    """CPU guard applied to the exec'd job: thread caps, niceness, I/O priority, CPU affinity."""

    __slots__ = ("threads", "nice", "ionice", "cpus", "force_env")
    threads: int | None
    nice: int | None
    ionice: str | None  # "idle" | "best-effort:N" | "realtime:N"
    cpus: str | None  # "0-3,6"
    force_env: bool  # the profile's thread variables win over the caller's own


class RouteSpec(Record):
    """What one route (gpu or cpu) of a profile adds to the job and which slots it may take."""

    __slots__ = ("name", "args", "slots", "pool", "args_position", "env", "guard", "ram_mib", "vram_mib",
                 "gpus", "on_low_vram")  # fmt: skip
    name: str
    args: tuple[str, ...]
    slots: int
    pool: str
    args_position: str
    env: dict[str, str]
    guard: Guard
    ram_mib: int | None
    vram_mib: int | str | None  # MiB per device, or "auto"
    gpus: int | str | None  # devices per job, or "auto"
    on_low_vram: str


class GpuSettings(Record):
    """The [gpu] table."""

    __slots__ = ("enabled", "devices", "select", "cushion_mib", "vram_estimates", "vram_default_mib")
    enabled: bool
    devices: tuple[int | str, ...] | None
    select: str
    cushion_mib: int
    vram_estimates: dict[str, int]  # model-size marker (e.g. "70b") -> MiB per device
    vram_default_mib: int


class Resident(Record):
    """A [residents.NAME] service that keeps VRAM and may be evicted."""

    __slots__ = ("name", "vram_mib", "unload", "load", "coexist", "managed", "lazy", "device", "timeout_s")
    name: str
    vram_mib: int
    unload: dict[str, Any] | None
    load: dict[str, Any] | None
    coexist: tuple[str, ...]
    managed: bool
    lazy: bool
    device: int | str | None
    timeout_s: float


class Backend(Record):
    """The [backend] table: local flock slots, or Slurm."""

    __slots__ = ("kind", "slurm")
    kind: str
    slurm: dict[str, Any]


class Profile(Record):
    """The rules for one kind of job."""

    __slots__ = ("name", "binary", "probe", "probe_command", "threshold", "threshold_text",
                 "input", "fallback", "wait_s", "gpu", "cpu", "max_wait_s", "escape", "priority",
                 "batch_yields", "hours", "hours_text", "outside_hours", "no_gpu", "monitor",
                 "monitor_interval_s", "on_gpu_oom", "oom_patterns")  # fmt: skip
    name: str
    binary: str | None
    probe: str | None
    probe_command: tuple[str, ...] | None
    threshold: float | None
    threshold_text: str | None
    input: str | int
    fallback: str
    wait_s: float  # 0 = fail fast, math.inf = block, else the bound in seconds
    gpu: RouteSpec
    cpu: RouteSpec
    max_wait_s: float | None  # a blocked job runs anyway (without a slot, under `escape`) after this
    escape: Guard
    priority: str | None  # realtime | batch | None
    batch_yields: str  # waiting | running
    hours: tuple[tuple[int, int], ...] | None  # minute-of-day ranges [start, end) when the GPU route may be used
    hours_text: str | None
    outside_hours: str  # cpu | busy | wait
    no_gpu: str | None  # cpu | busy | fail | None (not checked)
    monitor: bool
    monitor_interval_s: float
    on_gpu_oom: str | None  # cpu | None
    oom_patterns: tuple[str, ...]

    def route(self, name: str) -> RouteSpec:
        """The gpu or cpu route spec."""
        return self.gpu if name == "gpu" else self.cpu


class Settings(Record):
    """The effective, validated configuration."""

    __slots__ = ("path", "lock_dir", "journal", "busy_exit_code", "ffprobe", "probe_timeout_s",
                 "probe_cache", "profiles", "sources", "gpu", "residents", "backend")  # fmt: skip
    path: str | None
    lock_dir: str
    journal: str | None
    busy_exit_code: int
    ffprobe: str
    probe_timeout_s: float
    probe_cache: bool
    profiles: dict[str, Profile]
    sources: dict[str, str]  # dotted key -> file that set it (absent = built-in)
    gpu: GpuSettings
    residents: dict[str, Resident]
    backend: Backend

    def profile(self, name: str) -> Profile:
        """The named profile, or the defaults under that name when it is not configured."""
        found = self.profiles.get(name)
        if found is not None:
            return found
        default = self.profiles.get("default") or _build_profile("default", {}, BUILTIN)
        return default.replace(name=name)


# ---------------------------------------------------------------- finding and reading


def find_config(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The config file to use, or None for the built-in defaults.

    Raises:
        ConfigError: a file named by `--config` or `$GPUROUTER_CONFIG` does not exist.
    """
    env = os.environ if environ is None else environ
    for named, origin in ((explicit, "--config"), (env.get("GPUROUTER_CONFIG"), "GPUROUTER_CONFIG")):
        if named:
            if not os.path.exists(named):
                raise ConfigError(named, "", f"no such file (named by {origin})")
            return named
    from gpurouter._memo import xdg_base

    xdg = xdg_base("XDG_CONFIG_HOME", ".config", env) or "/nonexistent"  # a relative XDG path is ignored
    for candidate in (os.path.join(xdg, "gpurouter", "config.toml"), "/etc/gpurouter/config.toml"):
        if os.path.exists(candidate):
            return candidate
    return None


def load(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Find, read and validate the configuration.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a key is unknown or wrong.
    """
    path = find_config(explicit, environ)
    if path is None:
        return validate({}, BUILTIN, None)
    return validate(_read_toml(path, environ), path, path)


def _read_toml(path: str, environ: Mapping[str, str] | None) -> dict[str, Any]:
    from gpurouter import _memo

    try:
        # O_NONBLOCK: a FIFO planted under the config name must not hang us.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as error:
        raise ConfigError(path, "", f"cannot read: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not _is_regular(info.st_mode):
            raise ConfigError(path, "", "not a regular file")
        identity = (os.path.abspath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
                    info.st_ctime_ns)  # fmt: skip
        cached = _memo.recall("config", identity, environ)
        if isinstance(cached, dict):
            return cached
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError as error:
        raise ConfigError(path, "", f"cannot read: {error.strerror}") from None
    finally:
        os.close(fd)
    import tomllib  # deferred: ~10-20 ms, paid only when the memo misses

    try:
        document = tomllib.loads(b"".join(chunks).decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(path, "", f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, "", f"not valid TOML: {error}") from None
    except ValueError as error:  # an integer of more than 4300 digits (Python's int-to-str limit; issue 12)
        raise ConfigError(path, "", f"not usable TOML: {str(error).split(';')[0]}") from None
    _memo.remember("config", identity, document, environ)
    return document


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


# ---------------------------------------------------------------- validation


def validate(document: Mapping[str, Any], source: str, path: str | None) -> Settings:
    """Turn a parsed TOML document into `Settings`, or raise `ConfigError` naming the key.

    Raises:
        ConfigError: a key is unknown or a value has the wrong type or form.
    """
    tables = ("profiles", "gpu", "residents", "backend")
    _check_keys(document, set(DEFAULTS) | set(tables), "", source)
    merged = {**DEFAULTS, **{k: v for k, v in document.items() if k not in tables}}
    sources = {key: source for key in document if key not in tables}

    lock_dir = _string(merged, "lock_dir", "", source)
    if not os.path.isabs(lock_dir):
        raise ConfigError(source, "lock_dir", f"must be an absolute path (jobs start in many directories), got {lock_dir!r}")
    journal = merged.get("journal")
    if journal is None:
        journal = os.path.join(lock_dir, "journal.jsonl")
    if not isinstance(journal, str):
        raise ConfigError(source, "journal", f"must be a path string (\"\" turns the journal off), got {journal!r}")
    if journal and not os.path.isabs(journal):
        raise ConfigError(source, "journal", f"must be an absolute path, got {journal!r}")
    busy = merged["busy_exit_code"]
    if isinstance(busy, bool) or not isinstance(busy, int) or not 1 <= busy <= 255:
        raise ConfigError(source, "busy_exit_code", f"must be an integer from 1 to 255, got {busy!r}")
    probe_cache = merged["probe_cache"]
    if not isinstance(probe_cache, bool):
        raise ConfigError(source, "probe_cache", f"must be true or false, got {probe_cache!r}")
    timeout_s = _duration(merged, "probe_timeout", "", source)
    if timeout_s <= 0:
        raise ConfigError(source, "probe_timeout", "must be longer than 0s")

    raw_profiles = document.get("profiles", {})
    if not isinstance(raw_profiles, dict):
        raise ConfigError(source, "profiles", "must be a table of [profiles.NAME] tables")
    profiles = {}
    for name, table in raw_profiles.items():
        if not isinstance(table, dict):
            raise ConfigError(source, f"profiles.{name}", "must be a table")
        if not name or "/" in name or "\0" in name:
            raise ConfigError(source, f"profiles.{name}", "a profile name must be a non-empty command name")
        profiles[name] = _build_profile(name, table, source)
        sources.update(_key_sources(table, f"profiles.{name}", source))
    for table_name in ("gpu", "backend"):
        sources.update(_key_sources(document.get(table_name) or {}, table_name, source))
    return Settings(
        path=path,
        lock_dir=lock_dir,
        journal=journal or None,
        busy_exit_code=busy,
        ffprobe=_string(merged, "ffprobe", "", source),
        probe_timeout_s=timeout_s,
        probe_cache=probe_cache,
        profiles=profiles,
        sources=sources,
        gpu=_build_gpu(_table(document, "gpu", source), source),
        residents=_build_residents(_table(document, "residents", source), source),
        backend=_build_backend(_table(document, "backend", source), source),
    )


def _key_sources(table: Mapping[str, Any], prefix: str, source: str) -> dict[str, str]:
    found = {}
    for key, value in table.items():
        if isinstance(value, dict) and key in ROUTES:
            found.update(_key_sources(value, f"{prefix}.{key}", source))
        else:
            found[f"{prefix}.{key}"] = source
    return found


def _build_profile(name: str, table: Mapping[str, Any], source: str) -> Profile:
    where = f"profiles.{name}"
    _check_keys(table, set(PROFILE_DEFAULTS) | set(ROUTES) | {"escape"}, where, source)
    merged = {**PROFILE_DEFAULTS, **table}

    binary = merged["binary"]
    if binary is not None and (not isinstance(binary, str) or not binary):
        raise ConfigError(source, f"{where}.binary", f"must be a path string, got {binary!r}")
    probe = merged["probe"]
    if probe is not None and probe not in PROBES:
        raise ConfigError(source, f"{where}.probe", f"must be one of {', '.join(PROBES)}, got {probe!r}")
    probe_command = merged["probe_command"]
    if probe == "command":
        if not isinstance(probe_command, list) or not probe_command or \
                not all(isinstance(a, str) and a for a in probe_command):
            raise ConfigError(source, f"{where}.probe_command",
                              'probe = "command" needs probe_command = ["program", "arg", ...]')
        probe_command = tuple(probe_command)
    elif probe_command is not None:
        raise ConfigError(source, f"{where}.probe_command", 'only used with probe = "command"')

    threshold_text = merged["threshold"]
    threshold = None
    if probe is None and threshold_text is not None:
        raise ConfigError(source, f"{where}.threshold", "has no effect without a probe; set probe too")
    if probe is not None:
        if threshold_text is None:
            raise ConfigError(source, f"{where}.threshold", f"is required with probe = {probe!r}")
        if threshold_text == "auto":
            threshold = None  # decided per job from the fit of monitored runs and live free VRAM (autotune.py)
        else:
            try:
                threshold = units.parse_threshold(threshold_text, probe)
            except ValueError as error:
                raise ConfigError(source, f"{where}.threshold", str(error)) from None
        threshold_text = str(threshold_text)

    input_rule = merged["input"]
    if isinstance(input_rule, bool) or not isinstance(input_rule, (str, int)) or input_rule == "":
        raise ConfigError(source, f"{where}.input",
                          f'must be "last", "first", an argument index or a flag like "--input", got {input_rule!r}')
    if isinstance(input_rule, str) and input_rule not in ("last", "first") and not input_rule.startswith("-"):
        raise ConfigError(source, f"{where}.input",
                          f'must be "last", "first", an argument index or a flag like "--input", got {input_rule!r}')

    fallback = merged["fallback"]
    if fallback not in FALLBACKS:
        raise ConfigError(source, f"{where}.fallback", f"must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    try:
        wait_s = parse_wait(merged["wait"])
    except ValueError as error:
        raise ConfigError(source, f"{where}.wait", str(error)) from None

    routes = {route: _build_route(route, table.get(route, {}), f"{where}.{route}", source) for route in ROUTES}
    max_wait = merged["max_wait"]
    max_wait_s = None if max_wait is None else _duration(merged, "max_wait", where, source)
    escape = _build_guard(_table(table, "escape", source, where), f"{where}.escape", source)
    hours_text = merged["hours"]
    hours = None
    if hours_text is not None:
        if not isinstance(hours_text, str):
            raise ConfigError(source, f"{where}.hours", f'must be a string like "18:00-09:00", got {hours_text!r}')
        try:
            hours = parse_hours(hours_text)
        except ValueError as error:
            raise ConfigError(source, f"{where}.hours", str(error)) from None
    patterns = merged["oom_patterns"]
    if patterns is None:
        patterns = list(DEFAULT_OOM_PATTERNS)
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise ConfigError(source, f"{where}.oom_patterns", f"must be a list of non-empty strings, got {patterns!r}")
    monitor = merged["monitor"]
    if not isinstance(monitor, bool):
        raise ConfigError(source, f"{where}.monitor", f"must be true or false, got {monitor!r}")
    interval = _duration(merged, "monitor_interval", where, source)
    if not 0.05 <= interval <= 3600:
        raise ConfigError(source, f"{where}.monitor_interval", "must be between 50ms and 1h")
    return Profile(
        name=name, binary=binary, probe=probe, probe_command=probe_command, threshold=threshold,
        threshold_text=threshold_text, input=input_rule, fallback=fallback, wait_s=wait_s,
        gpu=routes["gpu"], cpu=routes["cpu"], max_wait_s=max_wait_s, escape=escape,
        priority=_choice(merged, "priority", PRIORITIES + (None,), where, source),
        batch_yields=_choice(merged, "batch_yields", ("waiting", "running"), where, source),
        hours=hours, hours_text=hours_text,
        outside_hours=_choice(merged, "outside_hours", ("cpu", "busy", "wait"), where, source),
        no_gpu=_choice(merged, "no_gpu", ("cpu", "busy", "fail", None), where, source),
        monitor=monitor, monitor_interval_s=interval,
        on_gpu_oom=_choice(merged, "on_gpu_oom", ("cpu", None), where, source),
        oom_patterns=tuple(patterns),
    )  # fmt: skip


def _build_route(name: str, table: object, where: str, source: str) -> RouteSpec:
    if not isinstance(table, dict):
        raise ConfigError(source, where, "must be a table")
    _check_keys(table, set(ROUTE_DEFAULTS), where, source)
    merged = {**ROUTE_DEFAULTS, **table}
    args = merged["args"]
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ConfigError(source, f"{where}.args", f"must be a list of strings, got {args!r}")
    slots = merged["slots"]
    if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= 1024:
        raise ConfigError(source, f"{where}.slots", f"must be an integer from 1 to 1024, got {slots!r}")
    pool = merged["pool"] if merged["pool"] is not None else name
    if not isinstance(pool, str) or not is_safe_name(pool):
        raise ConfigError(source, f"{where}.pool",
                          f"must be a name of letters, digits, '-' and '_', got {merged['pool']!r}")
    position = merged["args_position"]
    if position not in ARGS_POSITIONS:
        raise ConfigError(source, f"{where}.args_position", f"must be append or prepend, got {position!r}")
    env = merged["env"]
    if not isinstance(env, dict) or not all(isinstance(v, str) and k and "=" not in k for k, v in env.items()):
        raise ConfigError(source, f"{where}.env", f"must be a table of NAME = \"value\" strings, got {env!r}")
    guard = _build_guard({k: v for k, v in table.items() if k in GUARD_DEFAULTS}, where, source)
    vram = merged["vram_mib"]
    if vram is not None and vram != "auto" and (isinstance(vram, bool) or not isinstance(vram, int)
                                                or not 1 <= vram <= 1 << 24):  # fmt: skip  # a 400-digit int (issue 12)
        raise ConfigError(source, f"{where}.vram_mib", f'must be MiB per device (an integer from 1 to 16777216) or "auto", got {vram!r}')
    gpus = merged["gpus"]
    if gpus is not None and gpus != "auto" and (isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= 64):
        raise ConfigError(source, f"{where}.gpus", f'must be a device count from 1 to 64 or "auto", got {gpus!r}')
    return RouteSpec(
        name=name, args=tuple(args), slots=slots, pool=pool, args_position=position, env=dict(env), guard=guard,
        ram_mib=_opt_int(merged, "ram_mib", 1, 1 << 30, where, source), vram_mib=vram, gpus=gpus,
        on_low_vram=_choice(merged, "on_low_vram", ON_LOW_VRAM, where, source),
    )  # fmt: skip


def _build_guard(table: Mapping[str, Any], where: str, source: str) -> Guard:
    _check_keys(table, set(GUARD_DEFAULTS), where, source)
    merged = {**GUARD_DEFAULTS, **table}
    ionice = merged["ionice"]
    if ionice is not None:
        try:
            parse_ionice(ionice)
        except ValueError as error:
            raise ConfigError(source, f"{where}.ionice", str(error)) from None
    cpus = merged["cpus"]
    if cpus is not None:
        try:
            parse_cpus(cpus)
        except ValueError as error:
            raise ConfigError(source, f"{where}.cpus", str(error)) from None
    force_env = merged["force_env"]
    if not isinstance(force_env, bool):
        raise ConfigError(source, f"{where}.force_env", f"must be true or false, got {force_env!r}")
    return Guard(threads=_opt_int(merged, "threads", 1, 4096, where, source),
                 nice=_opt_int(merged, "nice", -20, 19, where, source),
                 ionice=ionice, cpus=cpus, force_env=force_env)  # fmt: skip


def _build_gpu(table: Mapping[str, Any], source: str) -> GpuSettings:
    _check_keys(table, set(GPU_DEFAULTS), "gpu", source)
    merged = {**GPU_DEFAULTS, **table}
    if not isinstance(merged["enabled"], bool):
        raise ConfigError(source, "gpu.enabled", f"must be true or false, got {merged['enabled']!r}")
    devices = merged["devices"]
    if devices is not None:
        if not isinstance(devices, list) or not all(
            (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or (isinstance(d, str) and d) for d in devices
        ):
            raise ConfigError(source, "gpu.devices", f'must be a list of indices or UUIDs like [0, "GPU-..."], got {devices!r}')
        devices = tuple(devices)
    estimates = merged["vram_estimates"]
    if not isinstance(estimates, dict) or not all(
        isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v > 0 for k, v in estimates.items()
    ):
        raise ConfigError(source, "gpu.vram_estimates", f'must be a table like {{"70b" = 20000}}, got {estimates!r}')
    default_mib = _opt_int(merged, "vram_default_mib", 1, 1 << 24, "gpu", source)
    return GpuSettings(enabled=merged["enabled"], devices=devices,
                       select=_choice(merged, "select", SELECTS, "gpu", source),
                       cushion_mib=_opt_int(merged, "cushion_mib", 0, 1 << 20, "gpu", source),
                       vram_estimates={k.lower(): v for k, v in estimates.items()},
                       vram_default_mib=default_mib)  # fmt: skip


def _build_residents(table: Mapping[str, Any], source: str) -> dict[str, Resident]:
    residents = {}
    for name, raw in table.items():
        where = f"residents.{name}"
        if not isinstance(raw, dict):
            raise ConfigError(source, where, "must be a table")
        _check_keys(raw, set(RESIDENT_DEFAULTS), where, source)
        merged = {**RESIDENT_DEFAULTS, **raw}
        vram = _opt_int(merged, "vram_mib", 1, 1 << 24, where, source)
        if vram is None:
            raise ConfigError(source, f"{where}.vram_mib", "is required: the MiB the service keeps resident")
        for action in ("unload", "load"):
            _check_action(merged[action], f"{where}.{action}", source)
        coexist = merged["coexist"]
        if not isinstance(coexist, list) or not all(isinstance(c, str) for c in coexist):
            raise ConfigError(source, f"{where}.coexist", f"must be a list of profile names, got {coexist!r}")
        for flag in ("managed",):
            if not isinstance(merged[flag], bool):
                raise ConfigError(source, f"{where}.{flag}", f"must be true or false, got {merged[flag]!r}")
        lazy = merged["lazy"]
        if lazy is None:  # the heuristic of the eviction scheduler we grew from: unload-only services load lazily
            lazy = merged["unload"] is not None and merged["load"] is None and not merged["managed"]
        if not isinstance(lazy, bool):
            raise ConfigError(source, f"{where}.lazy", f"must be true or false, got {lazy!r}")
        residents[name] = Resident(
            name=name, vram_mib=vram, unload=merged["unload"], load=merged["load"], coexist=tuple(coexist),
            managed=merged["managed"], lazy=lazy, device=merged["device"],
            timeout_s=_duration(merged, "timeout", where, source),
        )  # fmt: skip
    return residents


def _check_action(action: object, where: str, source: str) -> None:
    if action is None:
        return
    shape = '{ http = "METHOD URL", body = "..." } or { command = ["argv", ...] }'
    if not isinstance(action, dict) or not (set(action) <= {"http", "body", "command", "headers"}):
        raise ConfigError(source, where, f"must be {shape}, got {action!r}")
    if ("http" in action) == ("command" in action):
        raise ConfigError(source, where, f"needs exactly one of http or command: {shape}")
    if "http" in action:
        method, _, url = str(action["http"]).partition(" ")
        if not method.isalpha() or not url.startswith(("http://", "https://")):
            raise ConfigError(source, where, f'http must be "METHOD URL" like "POST http://127.0.0.1:11434/api/generate", got {action["http"]!r}')
        if "body" in action and not isinstance(action["body"], str):
            raise ConfigError(source, f"{where}.body", "must be a string (JSON text)")
    else:
        command = action["command"]
        if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
            raise ConfigError(source, f"{where}.command", f'must be a list like ["systemctl", "stop", "x"], got {command!r}')


def _build_backend(table: Mapping[str, Any], source: str) -> Backend:
    _check_keys(table, set(BACKEND_DEFAULTS), "backend", source)
    merged = {**BACKEND_DEFAULTS, **table}
    kind = _choice(merged, "kind", ("local", "slurm"), "backend", source)
    slurm = merged["slurm"]
    if not isinstance(slurm, dict):
        raise ConfigError(source, "backend.slurm", "must be a table")
    _check_keys(slurm, set(SLURM_DEFAULTS), "backend.slurm", source)
    slurm = {**SLURM_DEFAULTS, **slurm}
    for key in ("partition", "account", "time"):
        if slurm[key] is not None and (not isinstance(slurm[key], str) or not slurm[key]):
            raise ConfigError(source, f"backend.slurm.{key}", f"must be a non-empty string, got {slurm[key]!r}")
    if not isinstance(slurm["srun_args"], list) or not all(isinstance(a, str) for a in slurm["srun_args"]):
        raise ConfigError(source, "backend.slurm.srun_args", "must be a list of strings")
    return Backend(kind=kind, slurm=slurm)


def parse_ionice(text: object) -> tuple[int, int]:
    """(class, level) from "idle", "best-effort:N" or "realtime:N" (ioprio classes 3, 2, 1).

    Raises:
        ValueError: anything else.
    """
    if text == "idle":
        return 3, 0
    if isinstance(text, str):
        name, _, level = text.partition(":")
        classes = {"best-effort": 2, "realtime": 1}
        if name in classes and level.isascii() and level.isdigit() and 0 <= int(level) <= 7:
            return classes[name], int(level)
    raise ValueError(f'must be "idle", "best-effort:N" or "realtime:N" with N 0-7, got {text!r}')


def parse_cpus(text: object) -> set[int]:
    """CPU numbers from "0-3,6".

    Raises:
        ValueError: not a CPU list.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f'must be a CPU list like "0-3,6", got {text!r}')
    cpus: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if not (low.isascii() and low.isdigit()) or (dash and not (high.isascii() and high.isdigit())):
            raise ValueError(f'must be a CPU list like "0-3,6", got {text!r}')
        first, last = int(low), int(high) if dash else int(low)
        if last < first or last > 4095:
            raise ValueError(f"bad CPU range {part.strip()!r}")
        cpus.update(range(first, last + 1))
    return cpus


def parse_hours(text: str) -> tuple[tuple[int, int], ...]:
    """Minute-of-day ranges from "18:00-09:00" or "00:00-08:00,20:00-24:00" (a range may wrap midnight).

    Raises:
        ValueError: not a list of HH:MM-HH:MM ranges.
    """
    ranges = []
    for part in text.split(","):
        start, dash, end = part.strip().partition("-")
        if not dash:
            raise ValueError(f'must be ranges like "18:00-09:00", got {text!r}')
        first, last = _minute_of_day(start), _minute_of_day(end)
        if first == last:
            raise ValueError(f"empty range {part.strip()!r}")
        ranges.append((first, last))
    return tuple(ranges)


def _minute_of_day(text: str) -> int:
    hours, colon, minutes = text.strip().partition(":")
    if not (colon and (hours + minutes).isascii() and hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise ValueError(f"{text.strip()!r} is not HH:MM")
    value = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or value > 24 * 60:
        raise ValueError(f"{text.strip()!r} is not a time of day")
    return value


def within_hours(hours: tuple[tuple[int, int], ...], minute_of_day: int) -> bool:
    """Is this minute of the day inside any range (a range may wrap midnight)?"""
    for start, end in hours:
        if start < end and start <= minute_of_day < end:
            return True
        if start > end and (minute_of_day >= start or minute_of_day < end):
            return True
    return False


def _table(document: Mapping[str, Any], key: str, source: str, where: str = "") -> dict[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(source, f"{where}.{key}" if where else key, "must be a table")
    return value


def _choice(table: Mapping[str, Any], key: str, allowed: tuple[Any, ...], where: str, source: str) -> Any:
    value = table[key]
    if value not in allowed:
        names = ", ".join(str(a) for a in allowed if a is not None)
        raise ConfigError(source, f"{where}.{key}", f"must be one of {names}, got {value!r}")
    return value


def _opt_int(table: Mapping[str, Any], key: str, low: int, high: int, where: str, source: str) -> int | None:
    value = table[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(source, f"{where}.{key}", f"must be an integer from {low} to {high}, got {value!r}")
    return value


def is_safe_name(name: str) -> bool:
    """A pool name usable as a file name prefix: letters, digits, '-', '_' (1-64 chars)."""
    return 0 < len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)


def parse_wait(value: object) -> float:
    """`fail` -> 0, `block` -> inf, a duration -> seconds.

    Raises:
        ValueError: anything else.
    """
    if value == "fail":
        return 0.0
    if value == "block":
        return math.inf
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # a bare number is seconds, as for every other duration
    if isinstance(value, str):
        try:
            return units.parse_duration(value)
        except ValueError as error:
            raise ValueError(f'must be "fail", "block" or a duration like "10m": {error}') from None
    raise ValueError(f'must be "fail", "block" or a duration like "10m", got {value!r}')


def format_wait(wait_s: float) -> str:
    """The inverse of `parse_wait`."""
    if wait_s == 0:
        return "fail"
    if math.isinf(wait_s):
        return "block"
    return units.format_duration(wait_s)


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str, source: str) -> None:
    for key in table:
        if key not in allowed:
            dotted = f"{where}.{key}" if where else key
            raise ConfigError(source, dotted, f"unknown key (known here: {', '.join(sorted(allowed))})")


def _string(table: Mapping[str, Any], key: str, where: str, source: str) -> str:
    value = table[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(source, f"{where}.{key}" if where else key, f"must be a non-empty string, got {value!r}")
    return value


def _duration(table: Mapping[str, Any], key: str, where: str, source: str) -> float:
    value = table[key]
    dotted = f"{where}.{key}" if where else key
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(source, dotted, f"must be a duration like \"20s\", got {value!r}")
    try:
        return units.parse_duration(str(value))
    except ValueError as error:
        raise ConfigError(source, dotted, str(error)) from None
