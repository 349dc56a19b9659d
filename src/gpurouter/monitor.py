"""Monitored runs: the job runs as gpurouter's child instead of replacing it.

gpurouter then forwards signals, samples NVML every `monitor_interval`, tees the job's
stderr (live) to look for GPU out-of-memory messages, and journals an `end` record: exit
status, duration, the job's peak VRAM (its process tree) and min/max/mean per device of
utilization, memory, temperature and power. With `on_gpu_oom = "cpu"` a GPU run that died
of an OOM runs again, once, on the CPU route under the CPU slot rules.

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

from gpurouter import journal, nvml, runner
from gpurouter.errors import NoFreeSlot

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

    from gpurouter.config import Settings

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
    """NVML samples for one job: per-device stats and the job's own peak VRAM."""

    FIELDS = ("utilization_percent", "memory_used_mib", "temperature_c", "power_w")

    def __init__(self, environ: Mapping[str, str] | None) -> None:
        self.environ = environ
        self.devices: dict[str, dict[str, Stats]] = {}
        self.peak_vram_mib: int | None = None
        self.samples = 0

    def sample(self, job_pid: int) -> None:
        from gpurouter.kernel import descends_from

        query = nvml.query_gpus(self.environ)
        if not query.gpus:
            return
        self.samples += 1
        used_by_job = 0
        known = False
        for gpu in query.gpus:
            stats = self.devices.setdefault(str(gpu.index), {name: Stats() for name in self.FIELDS})
            for name in self.FIELDS:
                stats[name].add(getattr(gpu, name))
            for process in gpu.processes or ():
                if process.used_mib is not None and descends_from(process.pid, job_pid):
                    used_by_job += process.used_mib
                    known = True
        if known:
            self.peak_vram_mib = max(self.peak_vram_mib or 0, used_by_job)

    def summary(self) -> dict[str, Any]:
        return {"peak_vram_mib": self.peak_vram_mib, "samples": self.samples,
                "devices": {index: {name: s.as_dict() for name, s in stats.items()}
                            for index, stats in self.devices.items()}}  # fmt: skip


def run_monitored(settings: Settings, decision: runner.Decision, environ: Mapping[str, str] | None,
                  verbose: bool = False) -> int:  # fmt: skip
    """Take the slot, run the job as a child, and return its exit status (128+N if killed by signal N)."""
    run_id = os.urandom(6).hex()
    held = runner.acquire(settings, decision, environ, verbose, extra={"run_id": run_id, "monitored": True})
    status, tail = _supervise(settings, held, environ, run_id)
    decision = held.decision
    rules = decision.rules
    if decision.route == "gpu" and rules.on_gpu_oom == "cpu" and status != 0:
        pattern = next((p for p in rules.oom_patterns if p.encode() in tail), None)
        if pattern is not None:
            journal.append_record(settings.journal, "oom", **held.record, exit_status=status, pattern=pattern)
            held.release()  # the GPU slot goes back before the CPU run waits for its own
            cpu = runner._to_cpu(decision, f"GPU out of memory ({pattern!r}): cpu")
            retry_id = os.urandom(6).hex()
            try:
                again = runner.acquire(settings, cpu, environ, verbose,
                                       extra={"run_id": retry_id, "retry_of": run_id, "monitored": True})  # fmt: skip
            except NoFreeSlot as busy:
                sys.stderr.write(f"gpurouter: GPU run ran out of memory; CPU re-run refused: {busy}\n")
                return settings.busy_exit_code
            status, _ = _supervise(settings, again, environ, retry_id)
    held.release()
    return status


def _supervise(settings: Settings, held: runner.Held, environ: Mapping[str, str] | None, run_id: str) -> tuple[int, bytes]:
    """Start the job, forward signals, sample, tee stderr; journal `end`. Returns (status, stderr tail)."""
    from gpurouter import guard
    from gpurouter.execute import resolve_command

    decision = held.decision
    env = dict(os.environ if environ is None else environ)
    env.update(held.env)
    for fd in held.fds:
        os.set_inheritable(fd, True)  # the job holds the slot too: it outlives a kill -9 of gpurouter
    for note in guard.apply_to_self(held.guard):  # inherited by the child from the start: no race
        runner.journal_warn(note)
    watched = set(FORWARDED) | {signal.SIGCHLD}
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    read_end, write_end = os.pipe()
    began = time.monotonic()
    try:
        executable = resolve_command(decision.executable, env.get("PATH"))
        pid = os.posix_spawn(executable, decision.argv, env,
                             file_actions=[(os.POSIX_SPAWN_DUP2, write_end, 2), (os.POSIX_SPAWN_CLOSE, read_end)],
                             setsigmask=previous_mask,
                             setsigdef=watched | {signal.SIGPIPE, signal.SIGXFSZ})  # fmt: skip
    except BaseException as error:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        os.close(read_end)
        os.close(write_end)
        if isinstance(error, OSError):  # the kernel refused the job: no phantom start (issue 12)
            from gpurouter.execute import exec_error

            failed = exec_error(executable, error, decision.argv, env)
            journal.append_record(settings.journal, "exec_failed", **held.record, errno=failed.errno, error=str(failed))
            raise failed from None
        raise
    os.close(write_end)
    tail = bytearray()
    tee = threading.Thread(target=_tee, args=(read_end, tail), daemon=True)
    tee.start()
    sampler = Sampler(environ)
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
            if info is not None and info.si_signo != signal.SIGCHLD:
                if info.si_code != _SI_KERNEL:  # a terminal's Ctrl-C already reached the job
                    try:
                        os.kill(pid, info.si_signo)
                    except ProcessLookupError:
                        pass
            done_pid, status = os.waitpid(pid, os.WNOHANG)
            if done_pid == pid:
                wait_status = status
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    tee.join(timeout=5)
    code = os.waitstatus_to_exitcode(wait_status)
    exit_status = 128 - code if code < 0 else code
    journal.append_record(settings.journal, "end", **held.record, job_pid=pid,
                          exit_status=exit_status, signal=-code if code < 0 else None,
                          duration_s=round(time.monotonic() - began, 3), **sampler.summary())  # fmt: skip
    return exit_status, bytes(tail)


def _tee(fd: int, tail: bytearray) -> None:
    """Copy the job's stderr to ours as it comes, keeping the last 64 KiB to look for OOM messages."""
    try:
        while chunk := os.read(fd, 65536):
            try:
                os.write(2, chunk)
            except OSError:
                pass
            tail.extend(chunk)
            del tail[:-_TAIL_BYTES]
    finally:
        os.close(fd)
