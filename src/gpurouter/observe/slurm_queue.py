"""`gpurouter status` under the Slurm backend: gpurouter's jobs in Slurm's queue, from squeue."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from gpurouter.backends.srun import JOB_NAME_PREFIX, SlurmError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from gpurouter.job.settings import Settings

SQUEUE_FIELDS = (
    ("job_id", "%i"),
    ("state", "%T"),
    ("name", "%j"),
    ("user", "%u"),
    ("partition", "%P"),
    ("nodes", "%N"),
    ("reason", "%r"),
    ("gres", "%b"),
    ("cpus", "%C"),
    ("memory", "%m"),
    ("elapsed", "%M"),
    ("time_limit", "%l"),
    ("submitted", "%V"),
    ("started", "%S"),
    ("comment", "%k"),
)
_SEPARATOR = "\x1f"


def slurm_jobs(settings: Settings, environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """gpurouter's jobs in Slurm's queue (running and pending, every user's), oldest first.

    Raises:
        SlurmError: squeue is missing or fails (its message is in the error).
    """
    import subprocess

    from gpurouter.job.execute import find_executable

    env = dict(os.environ if environ is None else environ)
    slurm = settings.backend.slurm
    srun = slurm.srun
    squeue_name = os.path.join(os.path.dirname(srun), "squeue") if "/" in srun else "squeue"
    squeue = find_executable(squeue_name, env.get("PATH"))
    if squeue is None:
        raise SlurmError(
            f"squeue not found (PATH={env.get('PATH', '')}): the Slurm view needs Slurm's client tools"
        )
    argv = [
        squeue,
        "--noheader",
        "--all",
        "--sort=V,i",
        "--format=" + _SEPARATOR.join(code for _, code in SQUEUE_FIELDS),
    ]
    if slurm.partition:
        argv.append(f"--partition={slurm.partition}")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SlurmError(f"squeue failed: {error}") from None
    if done.returncode != 0:
        raise SlurmError(f"squeue failed (exit {done.returncode}): {done.stderr.strip()[:300]}")
    jobs = []
    for line in done.stdout.splitlines():
        values = line.split(_SEPARATOR)
        if len(values) != len(SQUEUE_FIELDS):
            continue
        job: dict[str, Any] = dict(zip((name for name, _ in SQUEUE_FIELDS), values, strict=True))
        if not job["name"].startswith(JOB_NAME_PREFIX):
            continue
        job["profile"] = job["name"][len(JOB_NAME_PREFIX) :]
        comment = job.pop("comment")
        job["route"] = comment.split("route=", 1)[1].split()[0] if "route=" in comment else None
        job["job_id"] = _int(job["job_id"])
        for key in ("nodes", "reason", "gres", "started"):
            if job[key] in ("", "(null)", "N/A", "None"):
                job[key] = None
        if job["gres"]:
            job["gres"] = job["gres"].replace("gres:", "")  # squeue's "gres:gpu:1" -> "gpu:1"
        jobs.append(job)
    return jobs


def jobs_text(jobs: Sequence[Mapping[str, Any]], settings: Settings | None = None) -> str:
    """A table of gpurouter's Slurm jobs for `gpurouter status`."""
    where = ""
    if settings is not None:
        where = f" (partition {settings.backend.slurm.partition or 'of the cluster default'})"
    lines = [
        f"backend: slurm{where}: {len(jobs)} gpurouter job(s) running or pending",
        f"{'JOBID':>8}  {'STATE':<11}{'USER':<10}{'PROFILE':<20}{'ROUTE':<6}{'GRES':<14}{'ELAPSED':>10}  "
        "NODE / REASON",
    ]
    for job in jobs:
        where_or_why = job.get("nodes") if job.get("state") != "PENDING" else f"({job.get('reason')})"
        lines.append(
            f"{job.get('job_id')!s:>8}  {job.get('state')!s:<11}{job.get('user')!s:<10}"
            f"{job.get('profile')!s:<20}{job.get('route') or '?'!s:<6}"
            f"{job.get('gres') or '-'!s:<14}{job.get('elapsed')!s:>10}  {where_or_why or '-'}"
        )
    return "\n".join(lines)


def _int(text: str | None) -> int | str | None:
    return int(text) if text is not None and text.isascii() and text.isdigit() else text
