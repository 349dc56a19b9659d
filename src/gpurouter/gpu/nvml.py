"""What the GPUs of this box look like right now: NVML, or a JSON device file standing in for it.

This is the only module that imports `pynvml`, and it does so inside functions: the import
costs ~50 ms and `nvmlInit()` talks to the driver, and neither belongs on the path of a job
that never asks about GPUs. NVML is initialised once per process, on the first query, and
`nvmlShutdown` is registered with `atexit` only after that init succeeded (nvitop's
`libnvml._lazy_init`; gpustat's init-at-import is the counter-example).

Two bindings answer the same reader: by default `nvml_lean` (ctypes on libnvidia-ml.so.1, ~2 ms
to import, the fields a decision needs), and with `full=True` nvidia-ml-py (every field,
temperature and power too) for the operator's views and the monitor (issue 16).

"No NVIDIA library" is an answer, not an error: `query_gpus()` never raises for a missing
or broken driver, a lost GPU or an unreadable field. It returns `gpus == []` (the CPU
route) or the devices it could read, with one line in `message` saying what was missing.
Every snapshot field but `index` may be `None`, meaning unknown (gpustat's `safenvml`).

Set `GPUROUTER_NVML_FILE` to a JSON device file (the format is in docs/gpus.md, "The device
file: GPUROUTER_NVML_FILE") to replace NVML, e.g. in tests or rehearsals; it is read afresh at
every query.
"""

from __future__ import annotations

import _thread  # builtin and already loaded: a lock without importing `threading`
import os
import stat

from gpurouter.job.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import ModuleType
    from typing import Any, Final, TypeGuard

NVML_FILE_ENV: Final = "GPUROUTER_NVML_FILE"
_MIB: Final = 1048576
_MAX_FILE_BYTES: Final = 16 * _MIB  # a device file is a few hundred bytes; refuse to slurp a disk image
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY  # a FIFO must not hang open(2)
# Newest first: a driver older than the bindings lacks the newer symbols (NVMLError_FunctionNotFound),
# and older bindings lack the attribute altogether.
_COMPUTE_CALLS: Final = (
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses",
)
_GRAPHICS_CALLS: Final = (
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses_v2",
    "nvmlDeviceGetGraphicsRunningProcesses",
)
_MISSING_CALL_ERRORS: Final = ("NVMLError_FunctionNotFound", "NVMLLibraryMismatchError")
# nvmlDeviceGetTemperature is deprecated (gone in CUDA 14); nvmlDeviceGetTemperatureV needs a recent driver.
_TEMPERATURE_CALLS: Final = ("nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature")
# NVML_VALUE_NOT_AVAILABLE (-1 as unsigned), as older bindings pass it through instead of None.
_NOT_AVAILABLE: Final = (2**64 - 1, 2**32 - 1)

_session_lock = _thread.allocate_lock()
_sessions: list[object] = []  # the bindings modules whose nvmlInit() succeeded in this process


class ProcessUse(Record):
    """One process holding memory on a GPU."""

    __slots__ = ("pid", "used_mib")
    pid: int
    used_mib: int | None  # None: the driver does not say (e.g. WDDM, or no permission)


class GpuSnapshot(Record):
    """One GPU at one moment. Every field but `index` may be None, meaning unknown."""

    __slots__ = (
        "index",
        "uuid",
        "name",
        "memory_total_mib",
        "memory_used_mib",
        "memory_free_mib",
        "utilization_percent",
        "temperature_c",
        "power_w",
        "processes",
        "encoder_sessions",
        "encoder_capacity_percent",
    )
    index: int
    uuid: str | None
    name: str | None
    memory_total_mib: int | None
    memory_used_mib: int | None
    memory_free_mib: int | None
    utilization_percent: int | float | None
    temperature_c: int | float | None
    power_w: float | None
    processes: tuple[ProcessUse, ...] | None  # None: unknown (not the same as no process)
    # NVENC (issue 14): open encode sessions and the H.264 encoder capacity left, in percent. NVML does
    # not tell the driver's cap on concurrent sessions (GeForce): size the pool by it (docs/gpus.md).
    encoder_sessions: int | None
    encoder_capacity_percent: int | None


class GpuQuery(Record):
    """The answer to one query: the devices read, where from, and one line about what went wrong."""

    __slots__ = ("gpus", "source", "message")
    gpus: list[GpuSnapshot]
    source: str  # "nvml" | "file" | "none" (no NVML to ask)
    message: str | None  # one line: why there is no GPU, or which devices/fields were skipped


def query_gpus(environ: Mapping[str, str] | None = None, *, full: bool = False) -> GpuQuery:
    """Read the GPUs: from `GPUROUTER_NVML_FILE` if set (and not empty), else from NVML.

    Args:
        environ: The environment to look the device file up in; `os.environ` by default.
        full: Ask nvidia-ml-py for every field (temperature, power too); by default the lean
            ctypes binding reads what a decision needs, and temperature and power are None.

    Returns:
        The devices that could be read, in index order. `gpus == []` means "route to CPU":
        no driver, no bindings, no device, or a device file that is missing or malformed;
        `message` then says which, in one line.
    """
    env = os.environ if environ is None else environ
    path = env.get(NVML_FILE_ENV, "")
    if path:
        return _query_file(path)
    if not full:
        from gpurouter.gpu import nvml_lean  # deferred: ctypes, and only GPU-aware decisions need it

        return _query_nvml(nvml_lean)
    try:
        # Deferred: ~50 ms of import, and only the operator's views and the monitor need it.
        import pynvml  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return GpuQuery(gpus=[], source="none", message="nvidia-ml-py is not installed")
    return _query_nvml(pynvml)


def describe(query: GpuQuery) -> str:
    """A short human-readable line per device (and a last line for the message, if any)."""
    lines = []
    for gpu in query.gpus:
        used, total, free = map(_show, (gpu.memory_used_mib, gpu.memory_total_mib, gpu.memory_free_mib))
        heat = f"{_show(gpu.temperature_c)}C, {_show(gpu.utilization_percent)} %"
        power = "?" if gpu.power_w is None else f"{gpu.power_w:.0f}"
        if gpu.processes is None:
            users = "processes ?"
        elif not gpu.processes:
            users = "no process"
        else:
            users = " ".join(f"{p.pid}({_show(p.used_mib)}M)" for p in gpu.processes)
        lines.append(
            f"[{gpu.index}] {gpu.name or '?'} | {heat} | {used} / {total} MiB ({free} free) "
            f"| {power} W | {users} | {gpu.uuid or '?'}"
        )
    if query.message:
        lines.append(f"{'note' if query.gpus else 'no GPU'} ({query.source}): {query.message}")
    elif not lines:
        lines.append(f"no GPU ({query.source})")
    return "\n".join(lines)


def _show(value: object) -> str:
    return "?" if value is None else str(value)


# --- the device file ---------------------------------------------------------------------------


class _BadFile(Exception):
    """The device file is unusable; the argument is the one-line reason."""


def _query_file(path: str) -> GpuQuery:
    try:
        gpus = _parse_devices(_read_file(path))
    except _BadFile as bad:
        return GpuQuery(gpus=[], source="file", message=f"{path}: {bad}")
    message = None if gpus else f"{path}: lists no device"
    return GpuQuery(gpus=gpus, source="file", message=message)


def _read_file(path: str) -> Any:
    from gpurouter.gpu.jsonlite import loads  # not `json`: its import (re, enum) costs ~7 ms per job
    from gpurouter.job.fsutil import describe_mode

    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise _BadFile("does not exist") from None
    except OSError as error:
        raise _BadFile(error.strerror or str(error)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _BadFile(f"is {describe_mode(info.st_mode)}, not a regular file")
        chunks, size = [], 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_FILE_BYTES:
                raise _BadFile(f"is larger than {_MAX_FILE_BYTES // _MIB} MiB")
    except OSError as error:
        raise _BadFile(error.strerror or str(error)) from None
    finally:
        os.close(fd)
    try:
        return loads(b"".join(chunks).decode("utf-8"))
    except UnicodeDecodeError:
        raise _BadFile("is not UTF-8 text") from None
    except ValueError as error:  # the scanner's messages are one line
        raise _BadFile(f"is not valid JSON ({error})") from None
    except RecursionError:
        raise _BadFile("is nested too deeply to be a device file") from None


def _parse_devices(document: Any) -> list[GpuSnapshot]:
    if not isinstance(document, dict) or not isinstance(document.get("devices"), list):
        raise _BadFile('expected a JSON object {"devices": [...]}')
    gpus: dict[int, GpuSnapshot] = {}
    for position, device in enumerate(document["devices"]):
        where = f"devices[{position}]"
        if not isinstance(device, dict):
            raise _BadFile(f"{where}: expected an object, got {_json_type(device)}")
        index: Any = device.get("index")
        if not _is_count(index):
            raise _BadFile(f"{where}.index: expected a whole number >= 0, got {_short(index)}")
        if index in gpus:
            raise _BadFile(f"{where}.index: {index} appears twice")
        total = _optional(device, "memory_total_mib", where, _is_count, "a whole number of MiB >= 0")
        used = _optional(device, "memory_used_mib", where, _is_count, "a whole number of MiB >= 0")
        if total is not None and used is not None and used > total:
            raise _BadFile(f"{where}: memory_used_mib {used} exceeds memory_total_mib {total}")
        gpus[index] = GpuSnapshot(
            index=index,
            uuid=_optional(device, "uuid", where, _is_text, "a string"),
            name=_optional(device, "name", where, _is_text, "a string"),
            memory_total_mib=total,
            memory_used_mib=used,
            memory_free_mib=None if total is None or used is None else total - used,
            utilization_percent=_optional(
                device, "utilization_percent", where, _is_percent, "a number 0-100"
            ),
            temperature_c=_optional(device, "temperature_c", where, _is_number, "a number"),
            power_w=_float_or_none(_optional(device, "power_w", where, _is_nonnegative, "a number >= 0")),
            processes=_parse_processes(device.get("processes"), f"{where}.processes"),
            encoder_sessions=_optional(device, "encoder_sessions", where, _is_count, "a whole number >= 0"),
            encoder_capacity_percent=_optional(
                device, "encoder_capacity_percent", where, _is_percent, "a number 0-100"
            ),
        )
    return [gpus[index] for index in sorted(gpus)]


def _parse_processes(value: Any, where: str) -> tuple[ProcessUse, ...] | None:
    if value is None:  # absent: unknown, not "none running"
        return None
    if not isinstance(value, list):
        raise _BadFile(f"{where}: expected a list, got {_json_type(value)}")
    processes = []
    for position, process in enumerate(value):
        at = f"{where}[{position}]"
        if not isinstance(process, dict):
            raise _BadFile(f"{at}: expected an object, got {_json_type(process)}")
        pid = process.get("pid")
        if not _is_count(pid):
            raise _BadFile(f"{at}.pid: expected a whole number >= 0, got {_short(pid)}")
        used = _optional(process, "used_mib", at, _is_count, "a whole number of MiB >= 0")
        processes.append(ProcessUse(pid=pid, used_mib=used))
    return tuple(processes)


def _optional(
    table: dict[str, Any], key: str, where: str, check: Callable[[Any], bool], expected: str
) -> Any:
    value = table.get(key)
    if value is not None and not check(value):
        raise _BadFile(f"{where}.{key}: expected {expected}, got {_short(value)}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_nonnegative(value: Any) -> bool:
    return _is_number(value) and value >= 0


def _is_percent(value: Any) -> bool:
    return _is_number(value) and 0 <= value <= 100


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _json_type(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "true/false",
        int: "a number",
        float: "a number",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(value)  # repr is always one line
    return text if len(text) <= 60 else text[:57] + "..."


# --- NVML ---------------------------------------------------------------------------------------


class _GpuLost(Exception):
    """A device stopped answering mid-query; the argument is the reason."""


def _query_nvml(pynvml: ModuleType) -> GpuQuery:
    """Read the devices through `pynvml`: nvidia-ml-py's module, or `nvml_lean`, shaped like it."""
    try:
        _lazy_init(pynvml)
    except pynvml.NVMLError as error:
        return GpuQuery(gpus=[], source="none", message=_init_failure(pynvml, error))
    try:
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as error:
        return GpuQuery(gpus=[], source="nvml", message=f"NVML could not count the GPUs: {_reason(error)}")
    if not count:
        return GpuQuery(gpus=[], source="nvml", message="NVML sees no GPU")
    gpus, notes = [], []
    for index in range(count):
        try:
            gpus.append(_snapshot(pynvml, index))
        except _GpuLost as lost:
            notes.append(f"GPU {index} skipped: {lost}")
    return GpuQuery(gpus=gpus, source="nvml", message="; ".join(notes) or None)


def _lazy_init(pynvml: ModuleType) -> None:
    """nvmlInit() once per process (per bindings module), double-checked under a lock.

    Raises:
        pynvml.NVMLError: the init failed; nothing is registered and the next query tries again.
    """
    if any(session is pynvml for session in _sessions):
        return
    with _session_lock:
        if any(session is pynvml for session in _sessions):
            return
        pynvml.nvmlInit()
        import atexit

        atexit.register(_shutdown, pynvml)  # only now: shutting down a failed init raises
        _sessions.append(pynvml)  # one session per bindings: alternating lean and full never re-inits


def _shutdown(pynvml: ModuleType) -> None:
    try:
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        pass  # at exit there is nobody left to tell


def _init_failure(pynvml: ModuleType, error: BaseException) -> str:
    if isinstance(error, getattr(pynvml, "NVMLError_LibraryNotFound", ())):
        return "no NVIDIA driver (libnvidia-ml.so not found)"
    if isinstance(error, getattr(pynvml, "NVMLError_DriverNotLoaded", ())):
        return "the NVIDIA driver is not loaded (nvmlInit: Driver Not Loaded)"
    if isinstance(error, getattr(pynvml, "NVMLError_NoPermission", ())):
        return "no permission to use NVML (nvmlInit: Insufficient Permissions)"
    return f"NVML failed to initialise: {_reason(error)}"


def _reason(error: BaseException) -> str:
    try:
        text = str(error)
    except Exception:  # NVMLError.__str__ calls into the library, which may be gone
        text = ""
    text = " ".join(text.split())
    return text or type(error).__name__


def _snapshot(pynvml: ModuleType, index: int) -> GpuSnapshot:
    """Read one device; a field NVML refuses becomes None.

    Raises:
        _GpuLost: no handle for the device, or it reports NVMLError_GpuIsLost.
    """
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError as error:
        raise _GpuLost(_reason(error)) from None

    def field(names: tuple[str, ...], *args: Any) -> Any:
        return _call_first(pynvml, names, handle, *args)

    memory = field(("nvmlDeviceGetMemoryInfo",))
    rates = field(("nvmlDeviceGetUtilizationRates",))
    milliwatts = _known(field(("nvmlDeviceGetPowerUsage",)))
    encoder = field(("nvmlDeviceGetEncoderStats",))  # (sessions, average fps, average latency)
    sessions = _known(encoder[0]) if isinstance(encoder, tuple) and encoder else None
    capacity = _known(field(("nvmlDeviceGetEncoderCapacity",), getattr(pynvml, "NVML_ENCODER_QUERY_H264", 0)))
    return GpuSnapshot(
        index=index,
        uuid=_text(field(("nvmlDeviceGetUUID",))),
        name=_text(field(("nvmlDeviceGetName",))),
        memory_total_mib=_mib(getattr(memory, "total", None)),
        memory_used_mib=_mib(getattr(memory, "used", None)),
        memory_free_mib=_mib(getattr(memory, "free", None)),
        utilization_percent=_known(getattr(rates, "gpu", None)),
        temperature_c=_known(field(_TEMPERATURE_CALLS, getattr(pynvml, "NVML_TEMPERATURE_GPU", 0))),
        power_w=None if milliwatts is None else milliwatts / 1000,
        processes=_processes(field(_COMPUTE_CALLS), field(_GRAPHICS_CALLS)),
        encoder_sessions=None if sessions is None else int(sessions),
        encoder_capacity_percent=None if capacity is None else int(capacity),
    )


def _call_first(pynvml: ModuleType, names: tuple[str, ...], handle: object, *args: Any) -> Any:
    """Call the first of `names` that both the bindings and the driver have; None if NVML refuses.

    Raises:
        _GpuLost: the device reports NVMLError_GpuIsLost (the whole device is gone, not one field).
    """
    lost = getattr(pynvml, "NVMLError_GpuIsLost", ())
    # Recent bindings wrap unversioned calls so that a missing symbol raises NVMLLibraryMismatchError,
    # which is not an NVMLError.
    missing = tuple(getattr(pynvml, kind) for kind in _MISSING_CALL_ERRORS if hasattr(pynvml, kind))
    for name in names:
        call = getattr(pynvml, name, None)
        if call is None:  # bindings older than this call
            continue
        try:
            return call(handle, *args)
        except lost as error:
            raise _GpuLost(_reason(error)) from None
        except missing:
            continue  # a driver older than the bindings: try the next, older call
        except pynvml.NVMLError:
            return None
    return None


def _processes(*lists: Any) -> tuple[ProcessUse, ...] | None:
    """Compute and graphics processes merged by pid; None if no list could be read."""
    readable = [listed for listed in lists if listed is not None]
    if not readable:
        return None
    merged: dict[int, int | None] = {}
    for listed in readable:
        for process in listed:
            pid = getattr(process, "pid", None)
            if not isinstance(pid, int):
                continue
            used, previous = _mib(getattr(process, "usedGpuMemory", None)), merged.get(pid)
            merged[pid] = used if previous is None else previous if used is None else max(previous, used)
    return tuple(ProcessUse(pid=pid, used_mib=merged[pid]) for pid in sorted(merged))


def _known(value: Any) -> Any:
    """`value`, or None if NVML had no figure (None or NVML_VALUE_NOT_AVAILABLE)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value in _NOT_AVAILABLE:
        return None
    return value


def _mib(value: Any) -> int | None:
    known = _known(value)
    return None if known is None else int(known) // _MIB


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):  # bindings before 11.515 return bytes
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None
