"""Monitored runs: the job runs as gpurouter's child instead of replacing it.

gpurouter then forwards signals, samples NVML every `monitor_interval`, tees the job's
stderr (live) to look for GPU out-of-memory messages, and journals an `end` record: exit
status, duration, the job's peak VRAM (its process tree) and min/max/mean per device of
utilization, memory, temperature and power. With `on_gpu_oom = "cpu"` a GPU run that died
of an OOM runs again, once, on the CPU route under the CPU slot rules; with `on_gpu_error = "cpu"`
so does one that died of another GPU error (driver, no device, NVENC sessions: issue 14). Both
streams are scanned: whisper-ctranslate2 prints its errors to stdout, ffmpeg to stderr.

The child inherits the slot fds, so the slot lives as long as either process: a kill -9
of gpurouter leaves the job running and still holding its slot (status finds it by the
open fd), and the kernel frees the slot when the job ends.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from gpurouter.errors import NoFreeSlot
from gpurouter.gpu import nvml
from gpurouter.job import admission, journal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from gpurouter.job.decision import Decision
    from gpurouter.job.settings import Profile, Settings

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_SI_KERNEL = 0x80  # si_code of a terminal-generated signal: the job, in our process group, got it too
_TAIL_BYTES = 64 * 1024


class Stats:
    """Running min / max / mean of one figure."""

    __slots__ = ("low", "high", "total", "count")

    def __init__(self) -> None:
        self.low: float | None = None
        self.high: float | None = None
        self.total, self.count = 0.0, 0

    def add(self, value: float | None) -> None:
        if value is None:
            return
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)
        self.total += value
        self.count += 1

    def as_dict(self) -> dict[str, float | None]:
        mean = round(self.total / self.count, 2) if self.count else None
        return {"min": self.low, "max": self.high, "mean": mean}


class Sampler:
    """NVML samples for one job: per-device stats, the job's own peak VRAM, and the most that
    the device's other users held beside it.

    `others_vram_mib` (issue 15, "an honest budget") is, on the devices where the job's processes
    were seen, the device's used memory less what gpurouter's jobs (the processes of every slot
    holder in the lock dir, this job's included) used, at its largest over the samples: residents,
    trainers, other users' work and the driver's own share. `tune` and `threshold = "auto"`
    subtract it from the memory a job may plan for. Unknown (None) where the job's processes are
    not seen (a PID namespace, a job that never touched the GPU).
    """

    FIELDS = ("utilization_percent", "memory_used_mib", "temperature_c", "power_w")

    def __init__(self, environ: Mapping[str, str] | None, lock_dir: str | None = None) -> None:
        self.environ = environ
        self.lock_dir = lock_dir
        self.devices: dict[str, dict[str, Stats]] = {}
        self.peak_vram_mib: int | None = None
        self.others_vram_mib: int | None = None
        self.samples = 0

    def sample(self, job_pid: int) -> None:
        from gpurouter.job import kernel

        query = nvml.query_gpus(self.environ, full=True)  # per-device temperature and power stats
        if not query.gpus:
            return
        self.samples += 1
        used_by_job = 0
        known = False
        seen_on = []  # (device, each of its processes with its family: itself and its ancestors)
        for gpu in query.gpus:
            stats = self.devices.setdefault(str(gpu.index), {name: Stats() for name in self.FIELDS})
            for name in self.FIELDS:
                stats[name].add(getattr(gpu, name))
            families = [(p, kernel.lineage(p.pid)) for p in gpu.processes or ()]
            mine = [p.used_mib for p, family in families if p.used_mib is not None and job_pid in family]
            if mine:
                used_by_job += sum(mine)
                known = True
                seen_on.append((gpu, families))
        if known:
            self.peak_vram_mib = max(self.peak_vram_mib or 0, used_by_job)
        if seen_on and self.lock_dir is not None:
            jobs = kernel.slot_holders(self.lock_dir) | {job_pid}
            for gpu, families in seen_on:
                if gpu.memory_used_mib is not None:
                    ours = sum(p.used_mib or 0 for p, family in families if family & jobs)
                    others = max(0, gpu.memory_used_mib - ours)
                    self.others_vram_mib = max(self.others_vram_mib or 0, others)

    def summary(self) -> dict[str, Any]:
        return {
            "peak_vram_mib": self.peak_vram_mib,
            "others_vram_mib": self.others_vram_mib,
            "samples": self.samples,
            "devices": {
                index: {name: s.as_dict() for name, s in stats.items()}
                for index, stats in self.devices.items()
            },
        }


def run_monitored(
    settings: Settings, decision: Decision, environ: Mapping[str, str] | None, verbose: bool = False
) -> int:
    """Take the slot, run the job as a child, and return its exit status (128+N if killed by signal N)."""
    run_id = os.urandom(6).hex()
    held = admission.acquire(
        settings, decision, environ, verbose, extra={"run_id": run_id, "monitored": True}
    )
    status, tail = _supervise(settings, held, environ, run_id)
    decision = held.decision
    if decision.route == "gpu" and decision.rules.threshold_text == "auto":
        from gpurouter.gpu import fit  # the run's `end` record is new evidence: the next decision reads it

        fit.forget(settings, decision.profile, environ)
    failure = gpu_failure(decision.rules, tail) if decision.route == "gpu" and status != 0 else None
    if failure is not None:
        event, pattern, kind = failure
        extra = {"gpu_error_kind": kind} if event == "gpu_error" else {}
        journal.append_record(
            settings.journal, event, **held.record, exit_status=status, pattern=pattern, **extra
        )
        if (
            event == "oom" and decision.input is not None
        ):  # remembered: a retry of this input goes to the CPU route
            from gpurouter.job import probe_cache

            probe_cache.remember_oom(
                settings.lock_dir, decision.input, f"GPU out of memory on this input before ({pattern!r})"
            )
        held.release()  # the GPU slot goes back before the CPU run waits for its own
        what = "GPU out of memory" if event == "oom" else f"GPU error ({kind})"
        cpu = admission.to_cpu(decision, f"{what} ({pattern!r}): cpu", environ)
        retry_id = os.urandom(6).hex()
        try:
            again = admission.acquire(
                settings,
                cpu,
                environ,
                verbose,
                extra={"run_id": retry_id, "retry_of": run_id, "monitored": True},
            )
        except NoFreeSlot as busy:
            failed = "ran out of memory" if event == "oom" else f"failed with a GPU error ({kind})"
            sys.stderr.write(f"gpurouter: GPU run {failed}; CPU re-run refused: {busy}\n")
            return settings.busy_exit_code
        status, _ = _supervise(settings, again, environ, run_id=retry_id)
    held.release()
    return status


def gpu_failure(rules: Profile, output: bytes) -> tuple[str, str, str] | None:
    """Why a failed GPU run may go again on the CPU: ("oom" | "gpu_error", pattern, kind), or None.

    Args:
        rules: the profile (`on_gpu_oom`, `oom_patterns`, `on_gpu_error`, `gpu_error_patterns`).
        output: the tail of the job's stdout and stderr.
    """
    errors = [(p, kind) for p, kind in rules.gpu_error_patterns if p.encode() in output]
    # NVENC's "out of memory (10)" is the encode-session cap, never VRAM: it must not read as an OOM
    # even when an operator's own oom_patterns would match its text.
    if any(kind == "nvenc_sessions" for _, kind in errors):
        errors = [e for e in errors if e[1] == "nvenc_sessions"]
    elif rules.on_gpu_oom == "cpu":
        oom = next((p for p in rules.oom_patterns if p.encode() in output), None)
        if oom is not None:
            return "oom", oom, "oom"
    if rules.on_gpu_error == "cpu" and errors:
        return "gpu_error", errors[0][0], errors[0][1]
    return None


def _supervise(
    settings: Settings, held: admission.Held, environ: Mapping[str, str] | None, run_id: str
) -> tuple[int, bytes]:
    """Start the job, forward signals, sample, relay stdout and stderr; journal `end`.

    Returns:
        (status, the tails of its stdout and stderr).
    """
    from gpurouter.job import guard
    from gpurouter.job.execute import resolve_command

    decision = held.decision
    env = dict(os.environ if environ is None else environ)
    env.update(held.env)
    for fd in held.fds:
        os.set_inheritable(fd, True)  # the job holds the slot too: it outlives a kill -9 of gpurouter
    for note in guard.apply_to_self(held.guard):  # inherited by the child from the start: no race
        admission.warn(note)
    watched = set(FORWARDED) | {signal.SIGCHLD}
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    relay = _Relay((1, 2))  # stdout too: whisper-ctranslate2 prints its errors there (issue 14)
    began = time.monotonic()
    try:
        executable = resolve_command(decision.executable, env.get("PATH"))
        pid = os.posix_spawn(
            executable,
            decision.argv,
            env,
            file_actions=relay.file_actions(),
            setsigmask=previous_mask,
            setsigdef=watched | {signal.SIGPIPE, signal.SIGXFSZ},
        )
    except BaseException as error:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        relay.close()
        if isinstance(error, OSError):  # the kernel refused the job: no phantom start (issue 12)
            from gpurouter.job.execute import exec_error

            failed = exec_error(executable, error, decision.argv, env)
            journal.append_record(
                settings.journal, "exec_failed", **held.record, errno=failed.errno, error=str(failed)
            )
            raise failed from None
        raise
    relay.start()
    sampler = Sampler(environ, settings.lock_dir)
    interval = decision.rules.monitor_interval_s
    next_sample = time.monotonic()
    wait_status = None
    try:
        while wait_status is None:
            if decision.route == "gpu" and time.monotonic() >= next_sample:
                sampler.sample(pid)
                next_sample = time.monotonic() + interval
            timeout = max(0.0, next_sample - time.monotonic()) if decision.route == "gpu" else 3600.0
            info = signal.sigtimedwait(watched, timeout)
            if (
                info is not None
                and info.si_signo != signal.SIGCHLD
                and info.si_code != _SI_KERNEL  # a terminal's Ctrl-C already reached the job
            ):
                try:
                    os.kill(pid, info.si_signo)
                except ProcessLookupError:
                    pass
            done_pid, status = os.waitpid(pid, os.WNOHANG)
            if done_pid == pid:
                wait_status = status
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    relay.finish(held.fds)  # at once: what a daemon the job left behind writes goes on through a `cat`
    code = os.waitstatus_to_exitcode(wait_status)
    exit_status = 128 - code if code < 0 else code
    journal.append_record(
        settings.journal,
        "end",
        **held.record,
        job_pid=pid,
        exit_status=exit_status,
        signal=-code if code < 0 else None,
        duration_s=round(time.monotonic() - began, 3),
        **sampler.summary(),
    )
    return exit_status, bytes(relay.tails[1]) + b"\n" + bytes(relay.tails[2])


class _Relay:
    """The job's streams, each through a pipe, copied to ours as they come (the last 64 KiB of each
    kept to look for OOM messages), live and unchanged.

    Why not just read to EOF (issue 12, item 9): a job that forks a daemon and exits leaves the
    daemon holding the pipe's write end. Waiting for EOF delays the caller by as long as the daemon
    lives; stopping to read and exiting makes the daemon's next write die of SIGPIPE, which it
    would not unmonitored. So once the job has exited, `finish` takes what is already there and
    hands every stream still open to a `cat` of its own (stdin the pipe, stdout our stream), which
    copies until the daemon closes it, as the daemon's direct writes would have gone.
    """

    def __init__(self, targets: tuple[int, ...]) -> None:
        self.tails: dict[int, bytearray] = {target: bytearray() for target in targets}
        self.open: dict[int, int] = {}  # read end -> our stream
        self._writes: list[tuple[int, int]] = []  # (write end, the job's fd)
        try:
            for target in targets:
                read_end, write_end = os.pipe()
                self.open[read_end] = target
                self._writes.append((write_end, target))
            self._stop_read, self._stop_write = os.pipe()
        except OSError:
            self.close()
            raise
        self._thread: threading.Thread | None = None

    def file_actions(self) -> list[tuple[int, int, int]]:
        """posix_spawn actions: the job's streams are the pipes' write ends (every other end is
        close-on-exec)."""
        return [(os.POSIX_SPAWN_DUP2, write_end, target) for write_end, target in self._writes]

    def start(self) -> None:
        """Close our copies of the write ends (the job has its own) and copy in a thread."""
        for write_end, _ in self._writes:
            os.close(write_end)
        self._writes = []
        for read_end in self.open:
            os.set_blocking(read_end, False)
        self._thread = threading.Thread(target=self._copy, daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        import select

        while self.open:
            ready, _, _ = select.select([*self.open, self._stop_read], [], [])
            stopping = self._stop_read in ready
            for read_end in [fd for fd in ready if fd in self.open]:
                self._drain(read_end)
            if stopping:
                for read_end in list(self.open):
                    self._drain(read_end)  # what the job wrote before it exited
                return

    def _drain(self, read_end: int) -> None:
        """Copy what can be read now; at EOF close the pipe."""
        target, tail = self.open[read_end], self.tails[self.open[read_end]]
        while True:
            try:
                chunk = os.read(read_end, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                del self.open[read_end]
                os.close(read_end)
                return
            try:
                _write_all(target, chunk)
            except OSError:
                pass
            tail.extend(chunk)
            del tail[:-_TAIL_BYTES]

    def finish(self, keep_from_helper: list[int]) -> None:
        """Stop copying (the job has exited); hand streams a descendant still holds to a `cat` each.

        Args:
            keep_from_helper: descriptors the helper must not inherit (the slot: a `cat` never holds it).
        """
        if self._thread is not None:
            os.write(self._stop_write, b"x")
            self._thread.join()
        cat = next((path for path in ("/bin/cat", "/usr/bin/cat") if os.access(path, os.X_OK)), None)
        for read_end, target in list(self.open.items()):
            os.set_blocking(read_end, True)  # the open file description is shared with the helper
            if cat is not None:
                actions: list[tuple[int, ...]] = [
                    (os.POSIX_SPAWN_DUP2, read_end, 0),
                    (os.POSIX_SPAWN_DUP2, target, 1),
                ]
                actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in keep_from_helper]
                try:
                    os.posix_spawn(
                        cat,
                        ["cat"],
                        {"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
                        file_actions=actions,
                        setsigdef={signal.SIGPIPE},
                    )
                except OSError:
                    pass  # our stream is gone (closed stderr): nothing could be shown anyway
            del self.open[read_end]
            os.close(read_end)
        self.close()

    def close(self) -> None:
        """Close whatever is left (after a failed spawn, or at the end)."""
        for fd in [
            *self.open,
            *(write_end for write_end, _ in self._writes),
            getattr(self, "_stop_read", -1),
            getattr(self, "_stop_write", -1),
        ]:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.open, self._writes = {}, []
        self._stop_read = self._stop_write = -1


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked to a pipe (stdout carrying media): write it all, in order."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
