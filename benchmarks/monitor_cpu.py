"""CPU use of monitor mode: what the gpurouter process that supervises a job burns per second.

    monitor_cpu.py --work DIR --gpurouter PATH --lock-dir DIR --devices FILE --out FILE
                   [--seconds 10] [--interval 1] [--profile bench-monitor]

Runs `gpurouter run --profile bench-monitor -- sleep SECONDS` (run.sh's profile: `monitor = true`,
`monitor_interval = "1s"`, a GPU route with `vram_mib`) with GPUROUTER_NVML_FILE pointing at a
copy of the device file. Monitor mode keeps gpurouter as the job's parent: it samples the
device file every interval (per-device stats, and the VRAM of the job's process tree, found by
walking /proc from each listed pid), waits for signals with sigtimedwait, and tees the job's
stderr in a thread. Once the job (`sleep`) is up, the copy of the device file is rewritten
with the job's pid using 3000 MiB on device 1, so the samples exercise the process walk (the
end record must then report peak_vram_mib = 3000).

Figure: on-CPU time of the gpurouter process (all its threads, /proc/PID/task/TID/schedstat,
ns; the job itself is not counted) from 0.5 s after the job started to 0.5 s before it ends
(start-up and the end record are left out: the figure is the steady cost per job-second), as
% of one core. Cross-checks: utime+stime ticks over the same window, and the whole run's
rusage (wait4: start-up, placement, samples, end record; it includes the reaped `sleep`).

The peer runs alongside over the same window: a bare Python loop (`python -I -S`) that opens and
json-parses the same device file every interval and sleeps in between, i.e. the least a Python
sampler at that rate can cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from _bench import Children, cpu_ns, cpu_ticks, exit_on_signals, say, thread_states, tree, wait_until

PEER = """
import json, sys, time
path, seconds, interval = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + seconds
while time.monotonic() < end:
    with open(path) as handle:
        json.load(handle)
    time.sleep(interval)
"""
JOB_MIB = 3000


def rewrite_with_job(path: str, job_pid: int) -> None:
    """Atomically rewrite the device file: device 1 also lists the job using JOB_MIB."""
    with open(path) as handle:
        data = json.load(handle)
    for device in data["devices"]:
        if device.get("index") == 1:
            device["processes"] = [*(device.get("processes") or []), {"pid": job_pid, "used_mib": JOB_MIB}]
            device["memory_used_mib"] = int(device.get("memory_used_mib") or 0) + JOB_MIB
    temporary = path + ".new"
    with open(temporary, "w") as handle:
        json.dump(data, handle)
    os.replace(temporary, path)


def end_record(journal: str, job_pid: int) -> dict | None:
    try:
        with open(journal) as handle:
            for line in handle:
                if f'"job_pid":{job_pid}' in line.replace(" ", ""):
                    record = json.loads(line)
                    if record.get("event") == "end" and record.get("job_pid") == job_pid:
                        return record
    except OSError:
        pass
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True)
    parser.add_argument("--gpurouter", required=True)
    parser.add_argument("--lock-dir", required=True)
    parser.add_argument("--devices", required=True, help="the device file to copy")
    parser.add_argument("--journal", required=True, help="gpurouter's journal (for the end record)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=1.0, help="the profile's monitor_interval")
    parser.add_argument("--profile", default="bench-monitor")
    args = parser.parse_args()
    exit_on_signals()

    scratch = os.path.join(args.work, "monitor")
    os.makedirs(scratch, exist_ok=True)
    devices = os.path.join(scratch, "devices.json")
    shutil.copyfile(args.devices, devices)
    env = dict(os.environ, GPUROUTER_NVML_FILE=devices)
    sleep = shutil.which("sleep") or "/bin/sleep"
    seconds = f"{args.seconds:g}"
    kids = Children()
    try:
        peer = kids.spawn(
            [sys.executable, "-I", "-S", "-c", PEER, devices, f"{args.seconds + 2:g}", f"{args.interval:g}"]
        )
        with open(os.path.join(scratch, "stderr"), "wb") as stderr:
            monitor = kids.spawn(
                [args.gpurouter, "run", "--profile", args.profile, "--", sleep, seconds],
                env=env,
                stderr=stderr,
            )
        job: list[int] = []

        def job_started() -> bool:
            if monitor.poll() is not None:
                raise RuntimeError(f"gpurouter exited with {monitor.returncode} before its job started")
            job[:] = [pid for pid in tree(monitor.pid) if pid != monitor.pid]
            return bool(job)

        wait_until(job_started, 20, "the monitored job (sleep) has started", poll=0.001)
        started = time.monotonic()
        job_pid = job[0]
        rewrite_with_job(devices, job_pid)
        time.sleep(max(0.0, started + 0.5 - time.monotonic()))
        t_a = time.monotonic()
        before = {
            "monitor": (cpu_ns([monitor.pid]), cpu_ticks([monitor.pid])),
            "peer": (cpu_ns([peer.pid]), cpu_ticks([peer.pid])),
        }
        say(f"monitored job: gpurouter pid {monitor.pid}, job pid {job_pid}; sampling {args.seconds - 1:g} s")
        time.sleep(max(0.0, started + args.seconds - 0.5 - time.monotonic()))
        if monitor.poll() is not None or peer.poll() is not None:
            raise RuntimeError("gpurouter or the peer sampler ended before the measurement window closed")
        after = {
            "monitor": (cpu_ns([monitor.pid]), cpu_ticks([monitor.pid])),
            "peer": (cpu_ns([peer.pid]), cpu_ticks([peer.pid])),
        }
        t_b = time.monotonic()
        threads = thread_states(monitor.pid)
        _, status, usage = os.wait4(monitor.pid, 0)
        monitor.returncode = os.waitstatus_to_exitcode(status)
        if monitor.returncode != 0:
            raise RuntimeError(f"the monitored run exited with {monitor.returncode}")
    finally:
        kids.kill_all()
    window = t_b - t_a
    hz = os.sysconf("SC_CLK_TCK")
    result: dict[str, object] = {
        "window_s": window,
        "seconds": args.seconds,
        "interval_s": args.interval,
        "job_pid": job_pid,
        "monitor_threads": threads,
        "monitor_rusage_total_ms": (usage.ru_utime + usage.ru_stime) * 1000.0,
    }
    for name in ("monitor", "peer"):
        cpu_ms = (after[name][0] - before[name][0]) / 1e6
        result[name] = {
            "cpu_ms": cpu_ms,
            "cpu_ticks_ms": (after[name][1] - before[name][1]) * 1000.0 / hz,
            "percent_of_core": cpu_ms / (window * 1000.0) * 100.0,
        }
    record = end_record(args.journal, job_pid)
    if record is None:
        raise SystemExit(f"monitor_cpu.py: no end record for job pid {job_pid} in {args.journal}")
    kept = ("monitored", "samples", "peak_vram_mib", "duration_s", "gpus", "exit_status")
    result["end_record"] = {key: record.get(key) for key in kept}
    if record.get("peak_vram_mib") != JOB_MIB:
        say(f"note: the end record says peak_vram_mib {record.get('peak_vram_mib')}, not {JOB_MIB}")
    say(f"monitor: {result['monitor']}; peer: {result['peer']}; end record: {result['end_record']}")
    with open(args.out, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
