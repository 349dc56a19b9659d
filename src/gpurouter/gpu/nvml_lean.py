"""The few NVML calls a routing decision needs, bound with ctypes: pynvml's shape, not its cost.

Importing nvidia-ml-py's `pynvml` costs ~50 ms (issue 16 measured it with `python -X importtime`),
paid by every job whose profile asks about VRAM; `ctypes` costs ~2 ms. This module binds
`libnvidia-ml.so.1` directly for the calls `nvml._snapshot` makes on the per-job path, and
mirrors pynvml's names, return values and error classes, so that `nvml.py` reads both
bindings with the same code (and says the same thing when the library is missing). What it
does not bind (temperature, power) is simply absent: `nvml._call_first` skips a call the
bindings lack, and the field is unknown. The operator's views (`gpurouter gpus`, the monitor,
Prometheus) still ask nvidia-ml-py for every field.

The structure layouts follow nvml.h and are checked against pynvml's classes by
tests/test_nvml_lean.py (names, offsets, sizes), so a wrong layout fails without a GPU:
`nvmlProcessInfo_v1_t` {pid, usedGpuMemory} for the unversioned process calls,
`nvmlProcessInfo_v2_t` {pid, usedGpuMemory, gpuInstanceId, computeInstanceId} for both the
`_v2` and the `_v3` calls (nvml.h's `nvmlProcessInfo_t`, which `_v3` takes, has the v2 layout).
"""

from __future__ import annotations

import _thread
import ctypes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final

LIBRARY: Final = "libnvidia-ml.so.1"  # pynvml loads the same soname (no find_library: it runs ldconfig)

NVML_SUCCESS: Final = 0
NVML_ERROR_UNINITIALIZED: Final = 1
NVML_ERROR_NOT_SUPPORTED: Final = 3
NVML_ERROR_NO_PERMISSION: Final = 4
NVML_ERROR_NOT_FOUND: Final = 6
NVML_ERROR_INSUFFICIENT_SIZE: Final = 7
NVML_ERROR_DRIVER_NOT_LOADED: Final = 9
NVML_ERROR_LIBRARY_NOT_FOUND: Final = 12
NVML_ERROR_FUNCTION_NOT_FOUND: Final = 13
NVML_ERROR_GPU_IS_LOST: Final = 15
NVML_DEVICE_UUID_V2_BUFFER_SIZE: Final = 96
NVML_DEVICE_NAME_V2_BUFFER_SIZE: Final = 96
# The process list can grow between the sizing call and the reading call; pynvml retries never.
_PROCESS_TRIES: Final = 3

_load_lock = _thread.allocate_lock()
_library: ctypes.CDLL | None = None


class c_nvmlMemory_t(ctypes.Structure):
    """nvmlMemory_t: bytes of device memory."""

    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class c_nvmlUtilization_t(ctypes.Structure):
    """nvmlUtilization_t: percent of the last sample period."""

    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class c_nvmlProcessInfo_v1_t(ctypes.Structure):
    """nvmlProcessInfo_v1_t, filled by the unversioned nvmlDevice*RunningProcesses."""

    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


class c_nvmlProcessInfo_v2_t(ctypes.Structure):
    """nvmlProcessInfo_v2_t (= nvmlProcessInfo_t), filled by the _v2 and _v3 process calls."""

    _fields_ = [
        ("pid", ctypes.c_uint),
        ("usedGpuMemory", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
    ]


c_nvmlProcessInfo_v3_t = c_nvmlProcessInfo_v2_t  # as in pynvml: the _v3 calls take the v2 layout


class NVMLError(Exception):
    """An NVML return code other than success; `str()` is nvmlErrorString's text."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _error_string(self.value)


class NVMLError_LibraryNotFound(NVMLError):
    """libnvidia-ml.so.1 could not be loaded."""


class NVMLError_DriverNotLoaded(NVMLError):
    """The kernel driver is not loaded."""


class NVMLError_NoPermission(NVMLError):
    """Not allowed to talk to the driver."""


class NVMLError_FunctionNotFound(NVMLError):
    """The driver's library lacks this (newer) call."""


class NVMLError_GpuIsLost(NVMLError):
    """The device fell off the bus or stopped answering."""


_ERROR_CLASSES: Final[dict[int, type[NVMLError]]] = {
    NVML_ERROR_LIBRARY_NOT_FOUND: NVMLError_LibraryNotFound,
    NVML_ERROR_DRIVER_NOT_LOADED: NVMLError_DriverNotLoaded,
    NVML_ERROR_NO_PERMISSION: NVMLError_NoPermission,
    NVML_ERROR_FUNCTION_NOT_FOUND: NVMLError_FunctionNotFound,
    NVML_ERROR_GPU_IS_LOST: NVMLError_GpuIsLost,
}
# What pynvml says where the library cannot (it is not loaded, or nvmlErrorString fails).
_FALLBACK_TEXT: Final = {
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
}


def _error(code: int) -> NVMLError:
    return _ERROR_CLASSES.get(code, NVMLError)(code)


def _check(code: int) -> None:
    if code != NVML_SUCCESS:
        raise _error(code)


def _error_string(code: int) -> str:
    library = _library
    if library is not None and code != NVML_ERROR_LIBRARY_NOT_FOUND:
        try:
            text = library.nvmlErrorString(code)
        except Exception:  # a broken library must not turn a message into a traceback
            text = None
        if isinstance(text, bytes) and text:
            return text.decode("utf-8", "replace")
    return _FALLBACK_TEXT.get(code, f"NVML error {code}")


def _load() -> ctypes.CDLL:
    """The library, loaded once per process.

    Raises:
        NVMLError_LibraryNotFound: no libnvidia-ml.so.1 (a box without the NVIDIA driver).
    """
    global _library
    with _load_lock:
        if _library is None:
            try:
                library = ctypes.CDLL(LIBRARY)
            except OSError:
                raise NVMLError_LibraryNotFound(NVML_ERROR_LIBRARY_NOT_FOUND) from None
            library.nvmlErrorString.restype = ctypes.c_char_p
            library.nvmlErrorString.argtypes = [ctypes.c_int]
            _library = library
        return _library


def _function(name: str) -> Callable[..., int]:
    """A symbol of the loaded library.

    Raises:
        NVMLError: called before nvmlInit (NVML_ERROR_UNINITIALIZED).
        NVMLError_FunctionNotFound: the library is older than this call.
    """
    library = _library
    if library is None:
        raise _error(NVML_ERROR_UNINITIALIZED)
    try:
        function: Callable[..., int] = getattr(library, name)
    except AttributeError:
        raise _error(NVML_ERROR_FUNCTION_NOT_FOUND) from None
    return function


def nvmlInit() -> None:
    """nvmlInit_v2 (or nvmlInit on a driver from before it). NVML counts inits and shutdowns."""
    _load()
    try:
        init = _function("nvmlInit_v2")
    except NVMLError_FunctionNotFound:
        init = _function("nvmlInit")
    _check(init())


def nvmlShutdown() -> None:
    """Pair of one nvmlInit."""
    _check(_function("nvmlShutdown")())


def nvmlDeviceGetCount() -> int:
    """How many devices NVML sees (all of them: NVML ignores CUDA_VISIBLE_DEVICES)."""
    count = ctypes.c_uint(0)
    _check(_function("nvmlDeviceGetCount_v2")(ctypes.byref(count)))
    return count.value


def nvmlDeviceGetHandleByIndex(index: int) -> ctypes.c_void_p:
    """An opaque handle (nvmlDevice_t is a pointer)."""
    handle = ctypes.c_void_p()
    _check(_function("nvmlDeviceGetHandleByIndex_v2")(ctypes.c_uint(index), ctypes.byref(handle)))
    return handle


def _text(name: str, handle: ctypes.c_void_p, size: int) -> str:
    buffer = ctypes.create_string_buffer(size)
    _check(_function(name)(handle, buffer, ctypes.c_uint(size)))
    return buffer.value.decode("utf-8", "replace")


def nvmlDeviceGetUUID(handle: ctypes.c_void_p) -> str:
    """'GPU-xxxxxxxx-...', the name CUDA_VISIBLE_DEVICES accepts."""
    return _text("nvmlDeviceGetUUID", handle, NVML_DEVICE_UUID_V2_BUFFER_SIZE)


def nvmlDeviceGetName(handle: ctypes.c_void_p) -> str:
    """The product name, e.g. 'NVIDIA H100 80GB HBM3'."""
    return _text("nvmlDeviceGetName", handle, NVML_DEVICE_NAME_V2_BUFFER_SIZE)


def nvmlDeviceGetMemoryInfo(handle: ctypes.c_void_p) -> c_nvmlMemory_t:
    """total / free / used bytes (v1, as pynvml's default: `used` includes the driver's reserve)."""
    memory = c_nvmlMemory_t()
    _check(_function("nvmlDeviceGetMemoryInfo")(handle, ctypes.byref(memory)))
    return memory


def nvmlDeviceGetUtilizationRates(handle: ctypes.c_void_p) -> c_nvmlUtilization_t:
    """Percent busy over the driver's last sample period."""
    rates = c_nvmlUtilization_t()
    _check(_function("nvmlDeviceGetUtilizationRates")(handle, ctypes.byref(rates)))
    return rates


def _processes(name: str, layout: type[ctypes.Structure], handle: ctypes.c_void_p) -> list[Any]:
    """The size-then-fill protocol of the process calls; each entry has .pid and .usedGpuMemory.

    Raises:
        NVMLError_FunctionNotFound: the driver lacks `name` (the caller tries an older call).
        NVMLError: any other failure.
    """
    call = _function(name)
    count = ctypes.c_uint(0)
    code = call(handle, ctypes.byref(count), None)
    for _ in range(_PROCESS_TRIES):
        if code == NVML_SUCCESS:
            return []  # no process at all
        if code != NVML_ERROR_INSUFFICIENT_SIZE:
            raise _error(code)
        count.value = count.value * 2 + 5  # room for processes started since the sizing call
        entries = (layout * count.value)()
        code = call(handle, ctypes.byref(count), entries)
        if code == NVML_SUCCESS:
            return list(entries[: count.value])
    raise _error(code)


def nvmlDeviceGetComputeRunningProcesses_v3(handle: ctypes.c_void_p) -> list[Any]:
    """CUDA processes with memory on the device (driver >= 510)."""
    return _processes("nvmlDeviceGetComputeRunningProcesses_v3", c_nvmlProcessInfo_v3_t, handle)


def nvmlDeviceGetComputeRunningProcesses_v2(handle: ctypes.c_void_p) -> list[Any]:
    """CUDA processes, for drivers 450-510."""
    return _processes("nvmlDeviceGetComputeRunningProcesses_v2", c_nvmlProcessInfo_v2_t, handle)


def nvmlDeviceGetComputeRunningProcesses(handle: ctypes.c_void_p) -> list[Any]:
    """CUDA processes, for drivers before 450 (the v1 layout)."""
    return _processes("nvmlDeviceGetComputeRunningProcesses", c_nvmlProcessInfo_v1_t, handle)


def nvmlDeviceGetGraphicsRunningProcesses_v3(handle: ctypes.c_void_p) -> list[Any]:
    """Graphics processes with memory on the device (driver >= 510)."""
    return _processes("nvmlDeviceGetGraphicsRunningProcesses_v3", c_nvmlProcessInfo_v3_t, handle)


def nvmlDeviceGetGraphicsRunningProcesses_v2(handle: ctypes.c_void_p) -> list[Any]:
    """Graphics processes, for drivers 450-510."""
    return _processes("nvmlDeviceGetGraphicsRunningProcesses_v2", c_nvmlProcessInfo_v2_t, handle)


def nvmlDeviceGetGraphicsRunningProcesses(handle: ctypes.c_void_p) -> list[Any]:
    """Graphics processes, for drivers before 450 (the v1 layout)."""
    return _processes("nvmlDeviceGetGraphicsRunningProcesses", c_nvmlProcessInfo_v1_t, handle)
