"""The configuration as frozen records, its closed sets and its built-in defaults.

A new key touches two places: its record field and default here, its rule in validate.py.
"""

from __future__ import annotations

from gpurouter.job.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal

    # The closed sets, for the type checker; validate.py checks the same sets at run time.
    RouteName = Literal["gpu", "cpu"]
    ProbeName = Literal["duration", "size", "pixels", "command"]
    Fallback = Literal["cpu", "gpu", "fail"]
    ArgsPosition = Literal["append", "prepend", "before-last"]
    NoInput = Literal["fallback", "pass"]
    GpuWhen = Literal["below", "above"]
    Priority = Literal["realtime", "batch"]
    BatchYields = Literal["waiting", "running"]
    OutsideHours = Literal["cpu", "busy", "wait"]
    NoGpu = Literal["cpu", "busy", "fail"]
    OnLowVram = Literal["cpu", "busy", "wait", "evict"]
    Select = Literal["score", "first", "round-robin"]
    BackendKind = Literal["local", "slurm"]

BUILTIN = "built-in"
ROUTES: tuple[RouteName, RouteName] = ("gpu", "cpu")
PROBES = ("duration", "size", "pixels", "command")
FALLBACKS = ("cpu", "gpu", "fail")
ARGS_POSITIONS = ("append", "prepend", "before-last")
NO_INPUT = ("fallback", "pass")
GPU_WHEN = ("below", "above")

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
    "threshold_start": None,  # threshold = "auto": the threshold until the fit has its runs (issue 15)
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
    # real workloads (issue 14)
    "no_input": "fallback",
    "gpu_when": "below",
    "on_gpu_error": None,
    "gpu_error_patterns": None,
}
GUARD_DEFAULTS: dict[str, Any] = {
    "threads": None,
    "nice": None,
    "ionice": None,
    "cpus": None,
    "force_env": False,
}
ROUTE_DEFAULTS: dict[str, Any] = {
    "args": [],
    "slots": 1,
    "pool": None,
    "args_position": "append",
    "input_args": [],
    "env": {},
    **GUARD_DEFAULTS,
    "ram_mib": None,
    "vram_mib": None,
    "gpus": None,
    "on_low_vram": "cpu",
}
GPU_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "devices": None,
    "select": "score",
    "cushion_mib": 256,
    # vram_mib = "auto": MiB per device by model size named in the job's arguments (first match wins)
    "vram_estimates": {"70b": 20000, "65b": 20000, "13b": 12000, "7b": 12000},
    "vram_default_mib": 8000,
}
RESIDENT_DEFAULTS: dict[str, Any] = {
    "vram_mib": None,
    "unload": None,
    "load": None,
    "coexist": [],
    "managed": False,
    "lazy": None,
    "device": None,
    "timeout": "10s",
    "process": None,
    "status": None,
}
BACKEND_DEFAULTS: dict[str, Any] = {"kind": "local", "slurm": {}}
SLURM_DEFAULTS: dict[str, Any] = {
    "partition": None,
    "account": None,
    "srun_args": [],
    "time": None,
    "srun": "srun",
}
PRIORITIES = ("realtime", "batch")
ON_LOW_VRAM = ("cpu", "busy", "wait", "evict")
SELECTS = ("score", "first", "round-robin")
DEFAULT_OOM_PATTERNS = (
    "CUDA out of memory",  # PyTorch: torch.cuda.OutOfMemoryError
    "CUDA failed with error out of memory",  # CTranslate2 / faster-whisper
    "CUDA_ERROR_OUT_OF_MEMORY",  # CUDA driver API (ffmpeg's NVDEC, cuvid)
)
# Not OOMs (issue 14): the GPU or its driver cannot run the job at all. Each pattern has a kind for
# the journal. NVENC's "OpenEncodeSessionEx failed: out of memory (10)" is NV_ENC_ERR_OUT_OF_MEMORY
# from nvEncOpenEncodeSessionEx: on GeForce cards it is the cap on concurrent encode sessions, not VRAM.
DEFAULT_GPU_ERROR_PATTERNS: dict[str, str] = {
    "OpenEncodeSessionEx failed: out of memory": "nvenc_sessions",  # ffmpeg NVENC, session cap reached
    "CUDA driver version is insufficient": "driver",  # CUDA runtime newer than the driver (or no driver)
    "Found no NVIDIA driver": "driver",  # PyTorch
    "NVIDIA driver on your system is too old": "driver",  # PyTorch
    "Cannot load libcuda.so.1": "driver",  # ffmpeg's NVENC/NVDEC/CUDA filters without the driver library
    "Cannot load libnvidia-encode.so.1": "driver",  # ffmpeg NVENC without the encode library
    "no CUDA-capable device is detected": "device",  # cudaErrorNoDevice
    "CUDA_ERROR_NO_DEVICE": "device",  # driver API
    "No capable devices found": "device",  # ffmpeg NVENC
    "no kernel image is available for execution on the device": "device",  # build lacks this GPU's arch
}


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

    __slots__ = (
        "name",
        "args",
        "slots",
        "pool",
        "args_position",
        "env",
        "guard",
        "ram_mib",
        "vram_mib",
        "gpus",
        "on_low_vram",
        "input_args",
    )
    name: RouteName
    args: tuple[str, ...]
    slots: int
    pool: str
    args_position: ArgsPosition
    env: dict[str, str]
    guard: Guard
    ram_mib: int | None
    vram_mib: int | str | None  # MiB per device, or "auto"
    gpus: int | str | None  # devices per job, or "auto"
    on_low_vram: OnLowVram
    input_args: tuple[str, ...]  # inserted right before the job's input (or the flag that introduces it)


class GpuSettings(Record):
    """The [gpu] table."""

    __slots__ = ("enabled", "devices", "select", "cushion_mib", "vram_estimates", "vram_default_mib")
    enabled: bool
    devices: tuple[int | str, ...] | None
    select: Select
    cushion_mib: int
    vram_estimates: dict[str, int]  # model-size marker (e.g. "70b") -> MiB per device
    vram_default_mib: int


class Resident(Record):
    """A [residents.NAME] service that keeps VRAM and may be evicted."""

    __slots__ = (
        "name",
        "vram_mib",
        "unload",
        "load",
        "coexist",
        "managed",
        "lazy",
        "device",
        "timeout_s",
        "process",
        "status",
    )
    name: str
    vram_mib: int
    unload: dict[str, Any] | None
    load: dict[str, Any] | None
    coexist: tuple[str, ...]
    managed: bool
    lazy: bool
    device: int | str | None
    timeout_s: float
    process: str | None  # a process name or pattern that identifies it in NVML's process list
    status: dict[str, Any] | None  # an action whose answer says what is loaded


class SlurmSettings(Record):
    """The [backend.slurm] table: what srun is asked for, besides the route's own request."""

    __slots__ = ("partition", "account", "srun_args", "time", "srun")
    partition: str | None
    account: str | None
    srun_args: tuple[str, ...]
    time: str | None  # srun --time
    srun: str  # the srun to run (a name on PATH or a path)


class Backend(Record):
    """The [backend] table: local flock slots, or Slurm."""

    __slots__ = ("kind", "slurm")
    kind: BackendKind
    slurm: SlurmSettings


class Profile(Record):
    """The rules for one kind of job."""

    __slots__ = (
        "name",
        "binary",
        "probe",
        "probe_command",
        "threshold",
        "threshold_text",
        "threshold_start",
        "input",
        "fallback",
        "wait_s",
        "gpu",
        "cpu",
        "max_wait_s",
        "escape",
        "priority",
        "batch_yields",
        "hours",
        "hours_text",
        "outside_hours",
        "no_gpu",
        "monitor",
        "monitor_interval_s",
        "on_gpu_oom",
        "oom_patterns",
        "no_input",
        "gpu_when",
        "on_gpu_error",
        "gpu_error_patterns",
    )
    name: str
    binary: str | None
    probe: ProbeName | None
    probe_command: tuple[str, ...] | None
    threshold: float | None
    threshold_text: str | None
    threshold_start: float | None  # threshold = "auto" routes by this until the fit has its runs
    input: str | int
    fallback: Fallback
    wait_s: float  # 0 = fail fast, math.inf = block, else the bound in seconds
    gpu: RouteSpec
    cpu: RouteSpec
    max_wait_s: float | None  # a blocked job runs anyway (without a slot, under `escape`) after this
    escape: Guard
    priority: Priority | None
    batch_yields: BatchYields
    hours: (
        tuple[tuple[int, int], ...] | None
    )  # minute-of-day ranges [start, end) when the GPU route may be used
    hours_text: str | None
    outside_hours: OutsideHours
    no_gpu: NoGpu | None  # None: not checked
    monitor: bool
    monitor_interval_s: float
    on_gpu_oom: Literal["cpu"] | None
    oom_patterns: tuple[str, ...]
    no_input: NoInput  # pass: a job with no input argument at all execs untouched
    gpu_when: GpuWhen  # the side of the threshold that goes to the GPU
    on_gpu_error: Literal["cpu"] | None
    gpu_error_patterns: tuple[tuple[str, str], ...]  # (pattern, kind)

    def route(self, name: str) -> RouteSpec:
        """The gpu or cpu route spec."""
        return self.gpu if name == "gpu" else self.cpu


class Settings(Record):
    """The effective, validated configuration."""

    __slots__ = (
        "path",
        "lock_dir",
        "journal",
        "busy_exit_code",
        "ffprobe",
        "probe_timeout_s",
        "probe_cache",
        "profiles",
        "default_profile",
        "sources",
        "gpu",
        "residents",
        "backend",
    )
    path: str | None
    lock_dir: str
    journal: str | None
    busy_exit_code: int
    ffprobe: str
    probe_timeout_s: float
    probe_cache: bool
    profiles: dict[str, Profile]
    default_profile: Profile  # [profiles.default], else the built-in defaults: for any other name
    sources: dict[str, str]  # dotted key -> file that set it (absent = built-in)
    gpu: GpuSettings
    residents: dict[str, Resident]
    backend: Backend

    def profile(self, name: str) -> Profile:
        """The named profile, or the defaults under that name when it is not configured."""
        found = self.profiles.get(name)
        return found if found is not None else self.default_profile.replace(name=name)
