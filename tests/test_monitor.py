"""Monitored runs on real processes: signals, exit status, kill -9 of the monitor, OOM fallback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Box, wait_for

MONITORED = '[profiles.sh]\nmonitor = true\nmonitor_interval = "100ms"\n'
TRAPS = (
    'for s in TERM INT HUP QUIT USR1 USR2; do trap "echo got $s >> {log}" $s; done; echo ready >> {log}; '
    "while [ ! -e {log}.stop ]; do sleep 0.05; done"
)


def device_file(path: Path, used: int = 1000) -> None:
    path.write_text(
        json.dumps(
            {
                "devices": [
                    {
                        "index": 0,
                        "uuid": "GPU-0",
                        "name": "T",
                        "memory_total_mib": 16000,
                        "memory_used_mib": used,
                        "utilization_percent": 30,
                        "temperature_c": 50,
                        "power_w": 70.5,
                        "processes": [],
                    }
                ]
            }
        )
    )


def test_every_forwardable_signal_reaches_the_job(box: Box) -> None:
    box.write_config(MONITORED)
    log = box.root / "signals.log"
    job = box.start("run", "--", "sh", "-c", TRAPS.format(log=log))
    assert wait_for(lambda: log.exists() and "ready" in log.read_text())
    names = ["TERM", "INT", "HUP", "QUIT", "USR1", "USR2"]
    for name in names:
        job.send_signal(getattr(signal, f"SIG{name}"))
        assert wait_for(lambda name=name: f"got {name}" in log.read_text()), name
    Path(f"{log}.stop").touch()
    assert job.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("script", "status"), [("exit 0", 0), ("exit 42", 42), ("kill -TERM $$", 143), ("kill -9 $$", 137)]
)
def test_the_exit_status_is_the_jobs_and_128_plus_n_for_a_signal(box: Box, script: str, status: int) -> None:
    box.write_config(MONITORED)
    done = box.run("run", "--", "sh", "-c", script)
    assert done.returncode == status
    end = box.records()[-1]
    assert end["event"] == "end" and end["exit_status"] == status


def test_stderr_reaches_the_caller_live_and_stdout_is_untouched(box: Box) -> None:
    box.write_config(MONITORED)
    done = box.run("run", "--", "sh", "-c", "echo out; echo err >&2")
    assert (done.stdout, done.stderr) == ("out\n", "err\n")


def test_the_end_record_carries_the_device_stats(box: Box) -> None:
    devices = box.root / "gpus.json"
    device_file(devices)
    box.write_config(MONITORED)
    done = box.run("run", "--", "sh", "-c", "sleep 0.5", env={"GPUROUTER_NVML_FILE": str(devices)})
    assert done.returncode == 0
    start, end = box.records()
    assert start["run_id"] == end["run_id"] and end["samples"] >= 3
    assert end["devices"]["0"]["temperature_c"] == {"min": 50, "max": 50, "mean": 50.0}
    assert end["duration_s"] >= 0.5


def test_kill_9_of_the_monitor_leaves_the_slot_held_only_while_the_job_lives(box: Box) -> None:
    box.write_config(MONITORED)
    marker = box.root / "job-running"
    job = box.start("run", "--", "sh", "-c", f"touch {marker}; sleep 1.5")
    assert wait_for(marker.exists)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert box.run("run", "--", "sh", "-c", "true").returncode == 75  # the job still holds it
    rows = [json.loads(line) for line in box.run("status", "--json").stdout.splitlines()]
    gpu0 = next(row for row in rows if (row["pool"], row["index"]) == ("gpu", 0))
    assert gpu0["holder"]["command"][:2] == ["sh", "-c"]  # shown: the job, not the dead monitor
    time.sleep(1.6)
    assert box.run("run", "--", "sh", "-c", "true").returncode == 0  # freed when the job ended


OOM_JOB = """
case "$*" in
  *--device\\ cuda*)
    echo "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" >&2; exit 1;;
  *) echo "ran on $*";;
esac
"""


def test_a_gpu_oom_runs_again_on_the_cpu_route_and_the_journal_links_the_runs(box: Box) -> None:
    script = box.bin / "model"
    script.write_text("#!/bin/sh\n" + OOM_JOB)
    script.chmod(0o755)
    box.write_config("""
        [profiles.model]
        monitor = true
        on_gpu_oom = "cpu"
        [profiles.model.gpu]
        args = ["--device", "cuda"]
        [profiles.model.cpu]
        args = ["--device", "cpu"]
    """)
    done = box.run("run", "--", "model", "input")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ran on input --device cpu\n"
    assert "CUDA out of memory" in done.stderr  # the GPU run's stderr reached the caller live
    events = [(r["event"], r["route"]) for r in box.records()]
    assert events == [("start", "gpu"), ("end", "gpu"), ("oom", "gpu"), ("start", "cpu"), ("end", "cpu")]
    gpu_run, cpu_start = box.records()[0]["run_id"], box.records()[3]
    assert cpu_start["retry_of"] == gpu_run and cpu_start["slot"] == "cpu.0"


def test_without_monitor_the_exec_path_is_unchanged(box: Box) -> None:
    job = box.start("run", "--", "sh", "-c", "echo $$; exec sleep 5")
    assert job.stdout is not None and int(job.stdout.readline()) == job.pid


def test_the_end_record_says_what_the_devices_other_users_held_beside_the_job(box: Box) -> None:
    # issue 15: tune and threshold = "auto" subtract it. On the card: this job (3000 MiB), another
    # gpurouter job in the other slot (2000 MiB: ours, not "others"), a resident service that is
    # no gpurouter job (4600 MiB) and 300 MiB that no process accounts for (the driver).
    box.write_config(MONITORED + "[profiles.sh.gpu]\nslots = 2\n")
    devices = box.root / "gpus.json"
    device_file(devices)
    env = {"GPUROUTER_NVML_FILE": str(devices), "GPUROUTER_ROUTE": "gpu"}
    neighbour = box.start("run", "--", "sh", "-c", f"echo $$ > {box.root}/neighbour; exec sleep 30", env=env)
    resident = subprocess.Popen(["sleep", "30"])
    try:
        assert wait_for(lambda: (box.root / "neighbour").exists() and (box.root / "neighbour").read_text())
        script = f"echo $$ > {box.root}/job; while [ ! -e {box.root}/listed ]; do sleep 0.05; done; sleep 0.5"
        job = box.start("run", "--", "sh", "-c", script, env=env)
        assert wait_for(lambda: (box.root / "job").exists() and (box.root / "job").read_text())
        listed = [
            (int((box.root / "job").read_text()), 3000),
            (int((box.root / "neighbour").read_text()), 2000),
            (resident.pid, 4600),
        ]
        document = json.loads(devices.read_text())
        document["devices"][0]["processes"] = [{"pid": pid, "used_mib": mib} for pid, mib in listed]
        document["devices"][0]["memory_used_mib"] = 3000 + 2000 + 4600 + 300
        devices.write_text(json.dumps(document))
        (box.root / "listed").touch()
        assert job.wait(timeout=20) == 0
    finally:
        resident.kill()
        resident.wait()
        if (box.root / "neighbour").exists():
            os.kill(int((box.root / "neighbour").read_text()), signal.SIGKILL)
        neighbour.wait(timeout=10)
    job_pid = int((box.root / "job").read_text())
    end = next(r for r in box.records() if r["event"] == "end" and r["job_pid"] == job_pid)
    assert (end["peak_vram_mib"], end["others_vram_mib"]) == (3000, 4900)
