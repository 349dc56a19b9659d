"""Dispatch one decided job: to Slurm, to a monitored child, or take its slot here and exec it.

The only per-job module that imports the backends, and only the one a job needs.
"""

from __future__ import annotations

import os

from gpurouter.errors import ExecFailed
from gpurouter.job import guard, journal, route
from gpurouter.job.admission import acquire, warn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import NoReturn

    from gpurouter.job.decision import Decision
    from gpurouter.job.settings import Settings


def run(
    settings: Settings, decision: Decision, environ: Mapping[str, str] | None = None, verbose: bool = False
) -> NoReturn:
    """Take the decision's slot, journal the start, and exec the job (which keeps the slot).

    Raises:
        NoFreeSlot: no slot (the caller exits with busy_exit_code); a `busy` record is written.
        LockDirError, CommandNotFound, NotExecutable, GpurouterError: see their exit codes.
    """
    from gpurouter.job import execute

    if decision.action == route.NO_INPUT:  # before Slurm and the monitor: `ffmpeg -version` is no job
        acquire(settings, decision, environ, verbose)  # journals `pass`, takes nothing
        execute.exec_command(
            decision.executable, decision.argv, dict(os.environ if environ is None else environ), None
        )
    if settings.backend.kind == "slurm" and decision.no_slot_because is None:
        from gpurouter.backends import slurm  # deferred: only the Slurm backend pays for it

        slurm.run_slurm(settings, decision, environ, verbose=verbose)  # exits like the job (never returns)
    if decision.rules.monitor:
        from gpurouter.backends import (
            monitor,
        )  # deferred: monitored runs start the job as a child instead of exec

        raise SystemExit(monitor.run_monitored(settings, decision, environ, verbose))
    held = acquire(settings, decision, environ, verbose)
    decision = held.decision
    for note in guard.apply_to_self(held.guard):
        warn(note)
    if settings.residents and decision.route == "gpu":
        from gpurouter.gpu import residents

        residents.note_job(settings, decision.profile, held.record)
    env = dict(os.environ if environ is None else environ)
    env.update(held.env)
    for fd in held.fds:
        os.set_inheritable(fd, True)  # the job keeps every slot (and gate) it was given
    try:
        execute.exec_command(decision.executable, decision.argv, env, held.slots[0] if held.slots else None)
    except ExecFailed as failed:
        held.release()
        # Why (issue 12): the `start` above claims a job that never ran; this record, same pid,
        # tells the readers (stats, report) to take it back.
        journal.append_record(
            settings.journal, "exec_failed", **held.record, errno=failed.errno, error=str(failed)
        )
        raise
