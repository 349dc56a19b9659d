"""Judging VRAM claims with a flock probe of the claimed slot (issue 16): real holder processes
(gpurouter jobs asleep on their device slot, a library process, kill -9), the device file, and
strace to show that a device-mode decision no longer reads /proc/locks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import Box, wait_for

# One A4000 with 6000 MiB free: room for one 3700 MiB job (+ the 256 MiB cushion), not two.
DEVICES = {
    "devices": [
        {
            "index": 0,
            "uuid": "GPU-00000000-0000-0000-0000-000000000000",
            "name": "NVIDIA RTX A4000",
            "memory_total_mib": 16376,
            "memory_used_mib": 16376 - 6000,
            "processes": [],
        }
    ]
}

# Profiles, all on the one device pool gpu0 (2 slots):
#   sh         (picked by the basename) vram_mib 3700, busy when it does not fit: placed and judged
#   holder     vram_mib 3700: a job holding a claim
#   small      vram_mib 2000: a new job that re-takes a slot
#   claimless  gpus = 1, no vram_mib: device mode without a claim of its own
CONFIG = """
[profiles.sh.gpu]
vram_mib = 3700
slots = 2
on_low_vram = "busy"
[profiles.holder.gpu]
vram_mib = 3700
slots = 2
[profiles.small.gpu]
vram_mib = 2000
slots = 2
[profiles.claimless.gpu]
gpus = 1
slots = 2
"""


@pytest.fixture
def gpu_box(box: Box) -> Box:
    devices = box.root / "devices.json"
    devices.write_text(json.dumps(DEVICES))
    box.env["GPUROUTER_NVML_FILE"] = str(devices)
    box.write_config(CONFIG)
    return box


def claim_of(box: Box, slot: str) -> list[str]:
    return (box.lock_dir / f"{slot}.claim").read_text().split()


def hold(box: Box, profile: str = "holder") -> subprocess.Popen[str]:
    """`sleep 30` asleep on its device slot (gpurouter exec'd it: the job's pid holds the slot)."""
    job = box.start("run", "--profile", profile, "--", "sleep", "30")

    def started() -> bool:
        return any(r["event"] == "start" and r["pid"] == job.pid for r in box.records())

    assert wait_for(started), job.stderr
    return job


def place_sh(box: Box) -> subprocess.CompletedProcess[str]:
    return box.run("run", "--", "sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES"')


def test_a_live_holders_claim_counts_against_the_device(gpu_box: Box) -> None:
    holder = hold(gpu_box)
    assert claim_of(gpu_box, "gpu0.0")[:2] == [str(holder.pid), "3700"]
    done = place_sh(gpu_box)
    assert done.returncode == 75, done.stderr
    assert "GPU 0 2300 MiB free (3700 promised)" in done.stderr


def test_a_claim_whose_holder_was_killed_with_sigkill_no_longer_counts(gpu_box: Box) -> None:
    holder = hold(gpu_box)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert claim_of(gpu_box, "gpu0.0")[:2] == [str(holder.pid), "3700"]  # the claim stays: no cleanup ran
    done = place_sh(gpu_box)
    assert (done.returncode, done.stdout) == (0, "GPU-00000000-0000-0000-0000-000000000000\n"), done.stderr
    assert gpu_box.records()[-1]["placed"] == "GPU 0 6000 MiB free"  # nothing promised


def test_a_slot_retaken_by_a_new_job_counts_only_the_new_jobs_claim(gpu_box: Box) -> None:
    first = hold(gpu_box)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = hold(gpu_box, "small")  # the freed gpu0.0 again, with 2000 MiB
    assert claim_of(gpu_box, "gpu0.0")[:2] == [str(second.pid), "2000"]
    done = place_sh(gpu_box)
    assert done.returncode == 0, done.stderr
    assert gpu_box.records()[-1]["placed"] == "GPU 0 4000 MiB free (2000 promised)"


def test_a_slot_retaken_by_a_job_without_vram_mib_voids_the_killed_holders_claim(gpu_box: Box) -> None:
    """A device-mode job with no vram_mib of its own still replaces the claim of the slot it takes:
    a probe of the slot only says "held", so a claim left by a killed job must not survive it."""
    first = hold(gpu_box)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = hold(gpu_box, "claimless")
    assert claim_of(gpu_box, "gpu0.0")[:2] == [str(second.pid), "0"]
    done = place_sh(gpu_box)
    assert done.returncode == 0, done.stderr
    assert gpu_box.records()[-1]["placed"] == "GPU 0 6000 MiB free"


def test_gpurouter_gpus_shows_a_live_claim_as_promised_and_a_killed_one_not(gpu_box: Box) -> None:
    holder = hold(gpu_box)

    def promised() -> int:
        done = gpu_box.run("gpus", "--json")
        assert done.returncode == 0, done.stderr
        (device,) = json.loads(done.stdout)["devices"]
        return int(device["promised_mib"])

    assert promised() == 3700
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert promised() == 0


LIBRARY_HOLDER = """
import sys, gpurouter
first = gpurouter.decide("sh", ["sh", "-c", "true"], config_file=sys.argv[1])
with gpurouter.slot(first) as held:
    print("held", held.env.get("CUDA_VISIBLE_DEVICES"), flush=True)
    second = gpurouter.decide("sh", ["sh", "-c", "true"], config_file=sys.argv[1])
    try:
        gpurouter.slot(second).release()
        print("second placed")
    except gpurouter.Busy as busy:
        print("busy:", busy)
"""


def test_a_process_placing_a_second_job_counts_the_claim_of_the_slot_it_holds(gpu_box: Box) -> None:
    """The probe opens a second open file description of our own slot file: flock conflicts
    across descriptions in one process too, so our own live claim counts (no double-spend)."""
    done = subprocess.run(
        [sys.executable, "-c", LIBRARY_HOLDER, str(gpu_box.config)],
        env=gpu_box.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "held GPU-00000000-0000-0000-0000-000000000000"
    assert lines[1].startswith("busy:") and "3700 promised" in lines[1], lines


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (apt-get install strace)")
def test_a_device_mode_decision_judges_a_live_claim_without_opening_proc_locks(gpu_box: Box) -> None:
    holder = hold(gpu_box)
    trace = gpu_box.root / "trace"
    argv = [
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=open,openat,openat2",
        "-o",
        str(trace),
        shutil.which("gpurouter", path=gpu_box.env["PATH"]) or "gpurouter",
        "run",
        "--",
        "sh",
        "-c",
        "true",
    ]
    done = subprocess.run(argv, env=gpu_box.env, capture_output=True, text=True, timeout=60)
    if done.returncode != 75 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()}")
    assert done.returncode == 75 and "3700 promised" in done.stderr, done.stderr  # judged, and alive
    opened = trace.read_text()
    assert "gpu0.0.claim" in opened and "devices.json" in opened  # the trace saw the decision
    assert "/proc/locks" not in opened
    assert holder.poll() is None


def test_a_tool_judges_claims_from_proc_locks_while_a_placement_holds_the_decide_lock(gpu_box: Box) -> None:
    """`gpurouter gpus` never waits for (or races) a placement: with the decide lock busy it
    falls back to /proc/locks, which still names the live holder's pid."""
    holder = hold(gpu_box)
    locker = textwrap.dedent("""
        import fcntl, os, sys, time
        fd = os.open(sys.argv[1], os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(30)
    """)
    decide = subprocess.Popen(
        [sys.executable, "-c", locker, str(gpu_box.lock_dir / "gpu.decide")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert decide.stdout is not None and decide.stdout.readline() == "locked\n"
        done = gpu_box.run("gpus", "--json", timeout=10)
        assert done.returncode == 0, done.stderr
        (device,) = json.loads(done.stdout)["devices"]
        assert device["promised_mib"] == 3700
    finally:
        decide.kill()
        decide.communicate()
    assert holder.poll() is None
    assert os.path.exists(gpu_box.lock_dir / "gpu.decide")
