"""The Slurm backend: the cluster's scheduler hands out the GPUs instead of local flock slots.

With `[backend] kind = "slurm"` the runner calls `run_slurm` where it would take a slot:

    caller ── gpurouter (stays, ~10 MB, waits) ── srun (its child, dies with it) ═══ job on a node

- gpurouter forks `srun` with the route's request (`--gres=gpu:N`, `--cpus-per-task`, `--mem`,
  `--time`, partition, account, `srun_args`) and the wait policy: fail fast is `--immediate`
  (start now or not at all), a bounded wait `--immediate=<seconds>` (srun queues the job and
  withdraws it when the time is up), block a plain queued srun. `SLURM_EXIT_IMMEDIATE` set to
  `busy_exit_code` makes a refusal exit 75.
- srun runs our *srun prolog* on this host (never on the node) once the allocation is granted,
  as it launches the step. The prolog is a small sh script kept in a memfd (no file on disk, no
  shared path); it writes "JOBID STEPID NODELIST" into a pipe gpurouter reads. So gpurouter
  knows, here and exactly, that the job started (the `start` record with the Slurm job id and
  node goes into the caller's own journal) or that srun ended before it did (a refusal: the
  `busy` record and 75, whatever exit code the job itself may use).
- The job's exit status is srun's, which is the task's (42 stays 42, a SIGTERM'd job 143);
  gpurouter exits with it, or dies of the same signal if srun itself was killed.
- SIGTERM, SIGINT or SIGHUP to gpurouter cancel the job the Slurm way (`scancel JOBID`: SIGCONT
  and SIGTERM to the job, SIGKILL after the cluster's KillWait, allocation released); while
  the job is still queued srun withdraws it. A second such signal makes srun kill the step at
  once. SIGUSR1, SIGUSR2 and SIGQUIT go to srun (which forwards the first two to the job).

Nothing stays allocated once gpurouter is gone, kill -9 included, in layers:
1. srun runs with PR_SET_PDEATHSIG=SIGTERM: the kernel signals it the instant gpurouter dies,
   and srun withdraws a queued job or cancels the running step (queue empty ~0.1 s later).
2. srun blocks SIGTERM for ~1 ms while it launches the step. The prolog guards that gap: if the
   pipe is already broken it SIGKILLs srun (whose helper then cancels the job) before the job
   starts, and it looks again 0.2 s later, SIGKILLing an srun whose gpurouter died in the gap.
3. Off a terminal srun runs in a process group of its own, so `kill -9 -PGID` (what runners
   do) kills gpurouter but leaves srun to clean up by 1.
4. If gpurouter, srun and srun's helper all die at once (a cgroup kill, the OOM killer),
   slurmctld's InactiveLimit (15 s in our recipe) revokes the job of the silent srun (~40-50 s).

Everything here is stdlib and imported only when the backend is Slurm: `_signal` instead of
`signal` (which imports `enum`, ~15 ms), util-linux `setpriv` for the prctl where it can (ctypes
costs +4 ms a job), `subprocess` only for the status view.
"""

from __future__ import annotations

import os
import sys

from gpurouter.backends.srun import (
    JOB_NAME_PREFIX,
    REPORT_FD,
    SlurmError,
    gpu_count,
    srun_argv,
    srun_environment,
)
from gpurouter.backends.srun import prolog as _prolog
from gpurouter.errors import NoFreeSlot
from gpurouter.job import journal, memo
from gpurouter.job.admission import Admission
from gpurouter.job.decision import routed_value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, NoReturn

    from gpurouter.job.decision import Decision
    from gpurouter.job.settings import Settings

_PR_SET_PDEATHSIG = 1


class _State:
    """What the signal handlers and the main line share."""

    __slots__ = ("srun_pid", "job_id", "report_fd", "signal", "forced", "pending_cancel", "scancel", "env")

    def __init__(self, srun_pid: int, report_fd: int, scancel: str | None, env: dict[str, str]) -> None:
        self.srun_pid, self.report_fd, self.scancel, self.env = srun_pid, report_fd, scancel, env
        self.job_id: str | None = None
        self.signal: int | None = None  # the first termination signal we got
        self.forced = False
        self.pending_cancel = False


def run_slurm(
    settings: Settings, decision: Decision, environ: Mapping[str, str] | None = None, verbose: bool = False
) -> NoReturn:
    """Run the decided job through srun, wait for it, and exit with its status.

    Called by the runner instead of taking a local slot. Returns never: it exits like the job
    (or dies of the signal that killed srun), the way `exec` would have.

    Args:
        settings: `settings.backend.slurm` says what to ask; `busy_exit_code` and `journal` apply.
        decision: the runner's Decision (profile, route, spec, argv, executable, env, wait_s).
        environ: the job's environment (the caller's); `decision.env` is added on top.

    Raises:
        NoFreeSlot: Slurm had no room now (fail) or within the bound; a `busy` record is written.
        SlurmError: srun is missing or failed before the job started (exit 125).
    """
    import _signal  # type: ignore[import-not-found]  # no stubs; `signal` would import enum (~15 ms)
    import time

    from gpurouter.job.execute import find_executable

    env_in = dict(os.environ if environ is None else environ)
    slurm = settings.backend.slurm
    log = Admission(settings, decision, verbose, extra={"backend": "slurm"})
    record = log.record
    wait_s = _policy_prelude(log, decision)
    srun = find_executable(slurm.srun, env_in.get("PATH"))
    if srun is None:
        raise SlurmError(
            f"backend.slurm.srun: {slurm.srun!r} not found on PATH "
            f"({env_in.get('PATH', '')}); install Slurm's client tools or set the path"
        )
    spec = decision.spec
    job_argv = [os.path.abspath(decision.executable), *decision.argv[1:]]
    job_env = dict(env_in)
    job_env["GPUROUTER_HELD"] = ",".join(
        [*(p for p in env_in.get("GPUROUTER_HELD", "").split(",") if p), decision.pool]
    )
    job_env["GPUROUTER_ROUTED"] = routed_value(decision.profile, decision.route, decision.argv[0])
    job_env.update(decision.env)

    gpus = decision.gpu_count or gpu_count(spec, job_argv[1:])
    prolog_fd, prolog_path = _prolog()
    argv, additions = srun_argv(
        slurm,
        spec,
        wait_s,
        settings.busy_exit_code,
        job_argv,
        JOB_NAME_PREFIX + decision.profile,
        prolog=prolog_path,
        comment=f"gpurouter route={decision.route}",
        gpus=gpus,
    )
    argv[0] = srun
    env = srun_environment(job_env, additions)
    read_end, write_end = os.pipe()  # O_CLOEXEC: only srun (and so its prolog) gets the write end
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    setpriv = _setpriv(env_in)
    began = time.monotonic()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: become srun, tied to our life
        _exec_srun(parent, argv, env, write_end, prolog_fd, setpriv)
    os.close(write_end)
    if prolog_fd is not None:
        os.close(prolog_fd)
    scancel = find_executable(os.path.join(os.path.dirname(srun), "scancel"))
    state = _State(pid, read_end, scancel, env)
    _install_handlers(state, _signal)
    report = _read_report(read_end)  # the read end stays open until srun exits: the prolog checks it
    node = None
    if report is not None:
        job_id, step_id, node = ([*report.split(), "?", "?", "?"])[:3]
        state.job_id = job_id
        waited = time.monotonic() - began
        log.start(
            None,
            waited,
            slurm_job_id=_int(job_id),
            slurm_step=step_id,
            node=node,
            gres=f"gpu:{gpus}" if decision.route == "gpu" else None,
            partition=slurm.partition,
        )
        if verbose:
            sys.stderr.write(
                f"gpurouter: {decision.route} ({decision.reason}), Slurm job {job_id} on {node}\n"
            )
        if state.pending_cancel:  # a signal came while the report was in flight
            _cancel(state)
    status = _wait(pid)
    state.srun_pid = -1  # reaped: its pid may be reused, signal nobody from now on
    _restore_handlers(_signal)
    os.close(read_end)
    state.report_fd = -1
    elapsed = time.monotonic() - began
    code = os.waitstatus_to_exitcode(status)
    if report is None:
        _not_started(log, decision, wait_s, code, elapsed, state, _signal)
    journal.append_record(
        settings.journal,
        "end",
        **record,
        slurm_job_id=_int(state.job_id),
        node=node,
        exit_status=code if code >= 0 else 128 - code,
        signal=-code if code < 0 else None,
        cancelled_by=_signal_name(state.signal),
        duration_s=round(elapsed, 3),
    )
    _exit_like(code, _signal)


def _policy_prelude(log: Admission, decision: Decision) -> float:
    """The routing policy's verdicts that come before any slot, as the local backend has them (busy
    or refused outside the GPU hours, or a wait for the window); returns what is left of the wait.

    Raises:
        NoFreeSlot, ProbeRefused: after journalling `busy` / `refused`.
    """
    waited = log.prelude(decision)
    wait_s: float = decision.wait_s
    if waited and 0 < wait_s < float("inf"):
        wait_s = max(1.0, wait_s - waited)
    return wait_s


def _not_started(
    log: Admission, decision: Decision, wait_s: float, code: int, elapsed: float, state: _State, _signal: Any
) -> NoReturn:
    """srun ended before the allocation was granted: refused, withdrawn by a signal, or an error."""
    settings, record = log.settings, log.record
    if state.signal is not None:  # we withdrew the queued job on SIGTERM/SIGINT/SIGHUP: die of it
        journal.append_record(
            settings.journal,
            "cancelled",
            **record,
            waited_s=round(elapsed, 3),
            cancelled_by=_signal_name(state.signal),
        )
        _exit_like(-state.signal, _signal)
    if code == settings.busy_exit_code:
        gpus = decision.gpu_count or gpu_count(decision.spec, decision.argv[1:])
        gres = f"gpu:{gpus}" if decision.route == "gpu" else f"the {decision.route} route"
        partition = settings.backend.slurm.partition or "the default partition"
        when = (
            "now (srun --immediate)"
            if wait_s <= 0
            else f"in time (srun --immediate={max(1, -int(-wait_s // 1))})"
        )
        busy = NoFreeSlot(
            decision.pool,
            decision.slots,
            0.0 if wait_s <= 0 else elapsed,
            why=f"Slurm has no room for {gres} on {partition} {when}",
        )
        raise log.busy(elapsed, busy)
    journal.append_record(settings.journal, "error", **record, waited_s=round(elapsed, 3), srun_exit=code)
    raise SlurmError(f"srun exited {code} before the job started (see srun's message above)")


def _exec_srun(
    parent: int,
    argv: list[str],
    env: dict[str, str],
    write_end: int,
    prolog_fd: int | None,
    setpriv: str | None,
) -> NoReturn:
    """In the forked child: die with gpurouter, hand the report pipe to srun as fd 9, exec srun.

    PR_SET_PDEATHSIG=SIGTERM makes the kernel signal srun the moment gpurouter dies, even by
    kill -9. util-linux `setpriv --pdeathsig` sets it for +0.9 ms; without setpriv, ctypes does
    (+4 ms: its import). setpriv leaves a window of about a millisecond before the prctl; a
    gpurouter killed in it is caught by the prolog, which stops srun when the pipe is broken.
    """
    try:
        import _signal

        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)  # not Python's KeyboardInterrupt here
        # Python ignores SIGPIPE (and SIGXFSZ); an ignored signal stays ignored across exec.
        for name in ("SIGPIPE", "SIGXFSZ"):
            if hasattr(_signal, name):
                _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
        if write_end != REPORT_FD:
            os.dup2(write_end, REPORT_FD)  # inheritable
        else:
            os.set_inheritable(REPORT_FD, True)
        if prolog_fd is not None:
            os.set_inheritable(prolog_fd, True)
        if not os.isatty(0):
            # Out of the caller's process group: a runner's SIGTERM to the group reaches gpurouter only,
            # which cancels the job gracefully (srun would SIGKILL the task at once), and a SIGKILL to
            # the group leaves srun alive to clean up on PDEATHSIG. On a terminal srun stays in the
            # foreground group: it reads the terminal for the job's stdin.
            os.setpgid(0, 0)
        if setpriv is not None:
            os.execve(setpriv, [setpriv, "--pdeathsig", "TERM", "--", *argv], env)
        _set_pdeathsig(_signal.SIGTERM)
        if os.getppid() != parent:  # gpurouter died before the prctl: nobody will wait
            os._exit(1)
        os.execve(argv[0], argv, env)
    except BaseException as error:
        try:
            os.write(2, f"gpurouter: cannot run {argv[0]}: {error}\n".encode(errors="replace"))
        finally:
            os._exit(125)
    os._exit(125)  # pragma: no cover - execve does not return


def _setpriv(environ: Mapping[str, str]) -> str | None:
    """util-linux `setpriv` if it has `--pdeathsig` (2.33 and later), else None (ctypes then).

    The answer is memoised per binary (path, inode, size, mtime): asking costs an exec (~2 ms).
    """
    from gpurouter.job.execute import find_executable

    found = find_executable("setpriv", environ.get("PATH") or os.defpath)
    if found is None:
        return None
    path = os.path.abspath(found)
    try:
        info = os.stat(path)
    except OSError:
        return None
    identity = (path, info.st_ino, info.st_size, info.st_mtime_ns)
    known = memo.recall("setpriv", identity, environ)
    if not isinstance(known, bool):
        known = b"--pdeathsig" in _output_of([path, "--help"])
        memo.remember("setpriv", identity, known, environ)
    return path if known else None


def _output_of(argv: list[str]) -> bytes:
    """stdout of a short command (b"" when it cannot run), without importing subprocess."""
    read_end, write_end = os.pipe()
    try:
        child = os.posix_spawn(
            argv[0],
            argv,
            {"PATH": os.defpath, "LC_ALL": "C"},
            file_actions=[
                (os.POSIX_SPAWN_DUP2, write_end, 1),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return b""
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(child, 0)
    return b"".join(chunks)


def _set_pdeathsig(signum: int) -> None:
    """prctl(PR_SET_PDEATHSIG, signum): the kernel signals us when our parent dies (even by kill -9)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _read_report(fd: int) -> str | None:
    """The prolog's line, or None when srun (and everything holding the pipe) ended without one."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 512)  # a signal runs its handler and the read resumes (PEP 475)
        if not chunk:
            return None
        data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", "replace")


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:  # pragma: no cover - somebody reaped it (SIGCHLD ignored by our caller)
            return 0


def _install_handlers(state: _State, _signal: Any) -> None:
    def on_terminate(signum: int, frame: object) -> None:
        if state.signal is None:
            state.signal = signum
            if state.job_id is not None:
                _cancel(state)
            elif state.report_fd >= 0 and _readable(state.report_fd):
                state.pending_cancel = True  # the start report is in the pipe: cancel right after reading it
            else:
                _kill(state.srun_pid, _signal.SIGTERM)  # still queued: srun withdraws the job
        elif not state.forced:
            state.forced = True
            _kill(state.srun_pid, _signal.SIGTERM)  # insisted: srun kills the step now (SIGKILL)

    def forward(signum: int, frame: object) -> None:
        _kill(state.srun_pid, signum)

    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        _signal.signal(getattr(_signal, name), on_terminate)
    for name in ("SIGUSR1", "SIGUSR2", "SIGQUIT"):
        _signal.signal(getattr(_signal, name), forward)


def _restore_handlers(_signal: Any) -> None:
    for name in ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGQUIT"):
        _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)  # KeyboardInterrupt, as before


def _cancel(state: _State) -> None:
    """`scancel JOBID`: Slurm's own cancel (SIGTERM, then SIGKILL after KillWait); srun if that fails."""
    scancel = state.scancel
    if scancel is not None and state.job_id is not None:
        try:
            child = os.posix_spawn(scancel, [scancel, "--quiet", state.job_id], state.env)
            if os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0:
                return
        except OSError:
            pass
    import _signal

    state.forced = True
    _kill(state.srun_pid, _signal.SIGTERM)


def _readable(fd: int) -> bool:
    import select

    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return False


def _kill(pid: int, signum: int) -> None:
    if pid <= 0:  # never a process group by accident
        return
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _exit_like(code: int, _signal: Any) -> NoReturn:
    """Exit with `code`, or die of signal `-code` (as the job's caller would see a killed job)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code < 0:
        signum = -code
        try:
            _signal.signal(signum, _signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        except (OSError, ValueError):
            pass
        os._exit(128 + signum)
    os._exit(code)


def _signal_name(signum: int | None) -> str | None:
    names = {1: "SIGHUP", 2: "SIGINT", 15: "SIGTERM"}
    return None if signum is None else names.get(signum, str(signum))


def _int(text: str | None) -> int | str | None:
    return int(text) if text is not None and text.isascii() and text.isdigit() else text
