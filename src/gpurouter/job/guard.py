"""The CPU guard: thread caps, niceness, I/O priority and CPU affinity for the job.

Applied to gpurouter's own process just before exec, so the job inherits them with no
wrapper process left behind (the seeds' gpu-cpu-mutex ran `nice -n 15 ionice -c3 cmd`).
"""

from __future__ import annotations

import os

from gpurouter.job.units import parse_cpus, parse_ionice

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from gpurouter.job.settings import Guard

# Thread-pool sizes read from the environment by the libraries heavy jobs are built on:
# OpenMP (PyTorch, onnxruntime, CTranslate2/faster-whisper default intra_threads), the BLAS
# family, numexpr, TensorFlow, Rust's rayon and Go's runtime.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "RAYON_NUM_THREADS",
    "GOMAXPROCS",
)

# ioprio_set(2) has no wrapper in Python's os module; syscall numbers per architecture.
_IOPRIO_SET = {
    "x86_64": 251,
    "aarch64": 30,
    "i686": 289,
    "armv7l": 314,
    "ppc64le": 273,
    "s390x": 282,
    "riscv64": 30,
}
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_SHIFT = 13


def thread_env(guard: Guard, environ: Mapping[str, str]) -> dict[str, str]:
    """Thread variables to set: the job's own explicit setting wins unless `force_env`."""
    if guard.threads is None:
        return {}
    return {name: str(guard.threads) for name in THREAD_VARIABLES if guard.force_env or name not in environ}


def apply_to_self(guard: Guard) -> list[str]:
    """Set niceness, I/O priority and affinity on this process (inherited across exec).

    Returns:
        Warnings for what could not be applied (never fatal: a job must not be lost for it).
    """
    notes = []
    if guard.nice is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, guard.nice)
        except OSError as error:
            notes.append(f"nice {guard.nice} not applied: {error.strerror}")
    if guard.ionice is not None:
        problem = _set_ioprio(*parse_ionice(guard.ionice))
        if problem:
            notes.append(f"ionice {guard.ionice} not applied: {problem}")
    if guard.cpus is not None:
        wanted = parse_cpus(guard.cpus) & set(range(os.cpu_count() or 1))
        if not wanted:
            notes.append(f"cpus {guard.cpus} not applied: no such CPU on this box")
        else:
            try:
                os.sched_setaffinity(0, wanted)
            except OSError as error:
                notes.append(f"cpus {guard.cpus} not applied: {error.strerror}")
    return notes


def _set_ioprio(klass: int, level: int) -> str | None:
    number = _IOPRIO_SET.get(os.uname().machine)
    if number is None:
        return f"unknown syscall number on {os.uname().machine}"
    import ctypes  # deferred: only a profile with ionice pays for it

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, _IOPRIO_WHO_PROCESS, 0, (klass << _IOPRIO_CLASS_SHIFT) | level) != 0:
        return os.strerror(ctypes.get_errno())
    return None


def merged(base: Guard, override: Guard) -> Guard:
    """`base` with every field `override` sets (an escape keeps the route's caps it does not change)."""
    changes = {
        name: getattr(override, name)
        for name in ("threads", "nice", "ionice", "cpus")
        if getattr(override, name) is not None
    }
    if override.force_env:
        changes["force_env"] = True
    return base.replace(**changes)
