"""The Slurm request: srun's argv and environment for a decided job, and the srun prolog that
reports the start (see backends/slurm.py for the whole protocol).
"""

from __future__ import annotations

import os

from gpurouter.errors import GpurouterError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from gpurouter.job.settings import RouteSpec, SlurmSettings

JOB_NAME_PREFIX = "gpurouter:"
REPORT_FD = 9  # the prolog writes its line to this fd (dash takes single-digit fds only)
PROLOG = """#!/bin/sh
# gpurouter's srun prolog, run by srun on the submit host once Slurm granted the allocation:
# report "JOBID STEPID NODELIST" to the gpurouter that waits on fd 9, and make sure a gpurouter
# that is gone (the pipe is broken) takes its job with it.
trap '' PIPE
[ -e /dev/fd/9 ] && [ "${SLURM_SCRIPT_CONTEXT:-}" = prolog_srun ] || exit 0
srun=$PPID
if ! printf '%s %s %s\n' "${SLURM_JOB_ID:-?}" "${SLURM_STEP_ID:-?}" "${SLURM_NODELIST:-?}" \\
        2>/dev/null >&9; then
    kill -KILL "$srun" 2>/dev/null  # gpurouter died before the job started: srun's helper cancels it
    exit 0
fi
# srun blocks SIGTERM until the step is launched (about 1 ms after this script): a gpurouter killed
# in that gap has its PDEATHSIG lost. Look again once it has passed; SIGKILL is never lost.
read -r stat < "/proc/$srun/stat" && set -- $stat && born=${22}
(
    exec </dev/null >/dev/null 2>&1 3>&- 4>&- 5>&- 6>&- 7>&- 8>&-
    sleep 0.2
    printf . 2>/dev/null >&9 && exit 0
    read -r stat < "/proc/$srun/stat" && set -- $stat && [ "${22}" = "$born" ] && kill -KILL "$srun"
) &
exit 0
"""
# srun reads these as its own options: inherited from an enclosing Slurm job (gpurouter called
# from an sbatch script, a CI job running under Slurm) they would turn our new job into a step
# of that allocation or change what it asks for. Only SLURM_CONF (which cluster) passes.
KEEP_SLURM_VARS = ("SLURM_CONF",)
_MFD_CLOEXEC, _MFD_EXEC = 0x0001, 0x0010
# The options gpurouter sets itself; srun_args must not replace the prolog (the start report).
_RESERVED = ("--prolog",)


class SlurmError(GpurouterError):
    """srun/squeue missing, or srun failed before the job started (exit 125)."""


def gpu_count(spec: RouteSpec, job_args: Sequence[str] | None = None) -> int:
    """GPUs per job for the GPU route: `gpus = N`; `"auto"` is the world size of the job's parallelism
    flags (`--tensor-parallel-size 2` ...) when `job_args` are given; else 1."""
    if isinstance(spec.gpus, int):
        return spec.gpus
    if spec.gpus == "auto" and job_args is not None:
        try:
            from gpurouter.gpu.parallelism import world_size
        except ImportError:  # pragma: no cover - an install without the parallelism module
            return 1
        return max(1, world_size(job_args)[0])
    return 1


def srun_argv(
    slurm: SlurmSettings,
    route_spec: RouteSpec,
    wait_s: float,
    busy_exit_code: int,
    job_argv: Sequence[str],
    job_name: str,
    prolog: str | None = None,
    comment: str | None = None,
    gpus: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The srun command line for one job, and the variables srun needs on top of the job's.

    Args:
        slurm: the `[backend.slurm]` table (partition, account, srun_args, time, srun).
        route_spec: the route taken; `name` "gpu" asks `--gres=gpu:N`; `threads` and `ram_mib`
            ask CPUs and memory on either route.
        wait_s: 0 = start now or not at all, inf = wait in Slurm's queue, else the bound.
        job_argv: the job, its first element an absolute path (the node runs exactly this).
        prolog: the srun prolog path (see `run_slurm`); None leaves it out.
        gpus: GPUs to ask on the GPU route (default: `gpu_count(route_spec, job_argv[1:])`).

    Raises:
        SlurmError: `srun_args` tries to replace an option gpurouter relies on.
    """
    extra = list(slurm.srun_args)
    for arg in extra:
        if arg.split("=", 1)[0] in _RESERVED:
            raise SlurmError(
                f"backend.slurm.srun_args: {arg!r} would replace gpurouter's own srun prolog "
                "(it reports the job's start); remove it"
            )
    argv = [slurm.srun, f"--job-name={job_name}", "--quiet", "--ntasks=1", "--nodes=1"]
    for key, value in (("partition", slurm.partition), ("account", slurm.account), ("time", slurm.time)):
        if value:
            argv.append(f"--{key}={value}")
    if route_spec.name == "gpu":
        argv.append(f"--gres=gpu:{gpus if gpus is not None else gpu_count(route_spec, job_argv[1:])}")
    if route_spec.guard is not None and route_spec.guard.threads:
        argv.append(f"--cpus-per-task={route_spec.guard.threads}")
    if route_spec.ram_mib:
        argv.append(f"--mem={route_spec.ram_mib}M")
    if wait_s <= 0:
        argv.append("--immediate")  # = 1 s: the controller answers at once when nothing is free
    elif wait_s != float("inf"):
        argv.append(f"--immediate={max(1, -int(-wait_s // 1))}")  # ceil, whole seconds
    if comment:
        argv.append(f"--comment={comment}")
    if prolog:
        argv.append(f"--prolog={prolog}")
    argv.extend(extra)
    argv.append("--")
    argv.extend(job_argv)
    return argv, {"SLURM_EXIT_IMMEDIATE": str(busy_exit_code)}


def srun_environment(environ: Mapping[str, str], additions: Mapping[str, str]) -> dict[str, str]:
    """srun's environment (which it exports to the job): the caller's, less inherited SLURM_* options."""
    env = {k: v for k, v in environ.items() if not k.startswith("SLURM_") or k in KEEP_SLURM_VARS}
    env.update(additions)
    return env


# ---------------------------------------------------------------- one job


def prolog() -> tuple[int | None, str]:
    """(fd to keep open until fork, path srun can exec): the prolog in a memfd, else a private file."""
    if hasattr(os, "memfd_create") and _memfd_exec_allowed():
        try:
            try:
                fd = os.memfd_create("gpurouter-slurm-prolog", _MFD_CLOEXEC | _MFD_EXEC)
            except OSError:  # kernels before 6.3 do not know MFD_EXEC (and exec memfds anyway)
                fd = os.memfd_create("gpurouter-slurm-prolog", _MFD_CLOEXEC)
            os.write(fd, PROLOG.encode())
        except OSError:
            pass
        else:
            if fd == REPORT_FD:  # fd 9 is the report pipe in srun
                moved = os.dup(fd)
                os.close(fd)
                fd = moved
            return fd, f"/proc/self/fd/{fd}"  # resolved in srun's child, which inherits the fd
    return None, _prolog_file()


def _memfd_exec_allowed() -> bool:
    try:
        with open("/proc/sys/vm/memfd_noexec", "rb") as stream:
            return stream.read().strip() in (b"0", b"1")
    except OSError:
        return True  # older kernels: no such knob, memfds are executable


def _prolog_file() -> str:
    """The prolog as a file in a private cache dir (kernels that refuse to exec memfds)."""
    import pwd

    from gpurouter.job.memo import xdg_base

    base = xdg_base("XDG_CACHE_HOME", ".cache") or os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".cache")
    folder = os.path.join(base, "gpurouter")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, "slurm-prolog-v1")
    try:
        with open(path, encoding="utf-8") as stream:
            if stream.read() == PROLOG and os.access(path, os.X_OK):
                return path
    except OSError:
        pass
    temporary = f"{path}.{os.getpid()}"
    with open(
        os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o700), "w"
    ) as stream:
        stream.write(PROLOG)
    os.replace(temporary, path)
    return path
