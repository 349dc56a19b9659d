"""End to end through the installed launcher: probe → route → slot → exec, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import WHISPER_PROFILE, Box, wait_for


def test_a_short_wav_goes_to_the_gpu_with_the_gpu_args(box: Box, media: dict[str, Path]) -> None:
    box.write_config(WHISPER_PROFILE)
    done = box.run("run", "--", "transcribe", str(media["wav2"]))
    assert done.returncode == 0, done.stderr
    assert f"args: {media['wav2']} --device cuda" in done.stdout
    (start,) = box.records()
    assert (start["event"], start["route"], start["profile"], start["metric"]) == (
        "start",
        "gpu",
        "transcribe",
        2.0,
    )
    assert start["reason"] == "duration 2s < threshold 5s"
    assert start["via"] == "native:wav"


def test_a_long_wav_goes_to_the_cpu_with_the_cpu_args(box: Box, media: dict[str, Path]) -> None:
    box.write_config(WHISPER_PROFILE)
    done = box.run("run", "--", "transcribe", str(media["wav8"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("--device cpu")
    assert box.records()[0]["route"] == "cpu"
    assert box.records()[0]["reason"] == "duration 8s >= threshold 5s"


def test_the_journal_start_record_carries_the_contract_fields(box: Box, media: dict[str, Path]) -> None:
    box.write_config(WHISPER_PROFILE)
    box.run("run", "--", "transcribe", str(media["wav2"]))
    (record,) = box.records()
    for field in ("ts", "event", "profile", "route", "metric", "reason", "pid", "argv"):
        assert field in record
    assert record["ts"][-6] in "+-" and record["ts"][-3] == ":"  # ISO 8601 with zone
    assert record["argv"] == ["transcribe", str(media["wav2"]), "--device", "cuda"]


def test_the_job_keeps_gpurouters_pid_and_holds_the_slot_after_exec(box: Box) -> None:
    job = box.start("run", "--", "sh", "-c", "echo $$; exec sleep 30")
    try:
        assert job.stdout is not None
        pid_seen_by_job = int(job.stdout.readline())
        assert pid_seen_by_job == job.pid  # exec: same process, gpurouter is gone
        busy = box.run("run", "--", "true")
        assert busy.returncode == 75
        assert "no free slot" in busy.stderr
    finally:
        job.kill()
        job.wait()
    again = box.run("run", "--", "true")
    assert again.returncode == 0, again.stderr  # kill -9 released the slot at once


def test_the_jobs_exit_status_is_the_callers(box: Box) -> None:
    assert box.run("run", "--", "sh", "-c", "exit 42").returncode == 42


def test_a_signal_goes_straight_to_the_job(box: Box) -> None:
    job = box.start("run", "--", "sleep", "30")
    assert wait_for(lambda: "sleep" in Path(f"/proc/{job.pid}/cmdline").read_text(errors="replace"))
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=10) == -signal.SIGTERM


def test_a_busy_refusal_exits_75_and_is_journalled(box: Box) -> None:
    holder = box.start("run", "--", "sleep", "30")
    try:
        assert wait_for(lambda: len(box.records()) == 1)
        refused = box.run("run", "--", "true")
        assert refused.returncode == 75
        assert [r["event"] for r in box.records()] == ["start", "busy"]
        assert box.records()[1]["pool"] == "gpu"
    finally:
        holder.kill()
        holder.wait()


def test_busy_exit_code_is_configurable(box: Box) -> None:
    box.write_config("busy_exit_code = 99\n")
    holder = box.start("run", "--", "sleep", "30")
    try:
        assert wait_for(lambda: len(box.records()) == 1)
        assert box.run("run", "--", "true").returncode == 99
    finally:
        holder.kill()
        holder.wait()


def test_a_blocking_waiter_starts_as_soon_as_the_holder_exits(box: Box) -> None:
    holder = box.start("run", "--", "sleep", "1")
    assert wait_for(lambda: len(box.records()) == 1)
    waiter = box.run("run", "--wait", "block", "--", "sh", "-c", "echo ran")
    assert waiter.returncode == 0 and waiter.stdout == "ran\n"
    holder.wait()
    events = [r["event"] for r in box.records()]
    assert events == ["start", "wait", "start"]
    assert box.records()[-1]["waited_s"] > 0.3


def test_a_bounded_wait_gives_up_with_75_after_the_limit(box: Box) -> None:
    holder = box.start("run", "--", "sleep", "30")
    try:
        assert wait_for(lambda: len(box.records()) == 1)
        began = time.monotonic()
        refused = box.run("run", "--wait", "1s", "--", "true")
        assert refused.returncode == 75
        assert time.monotonic() - began >= 1.0
        assert box.records()[-1]["event"] == "busy" and box.records()[-1]["waited_s"] >= 1.0
    finally:
        holder.kill()
        holder.wait()


def test_a_profile_with_two_slots_runs_two_jobs_and_refuses_the_third(box: Box) -> None:
    box.write_config("[profiles.sleep.gpu]\nslots = 2\n")
    first, second = box.start("run", "--", "sleep", "30"), box.start("run", "--", "sleep", "30")
    try:
        assert wait_for(lambda: len(box.records()) == 2)
        assert {r["slot"] for r in box.records()} == {"gpu.0", "gpu.1"}
        assert box.run("run", "--", "sleep", "0").returncode == 75
    finally:
        for job in (first, second):
            job.kill()
            job.wait()


def test_a_missing_binary_exits_127_before_taking_a_slot(box: Box) -> None:
    done = box.run("run", "--", "no-such-binary-xyz", "a")
    assert done.returncode == 127
    assert "no-such-binary-xyz: command not found" in done.stderr
    assert box.records() == []


def test_a_non_executable_binary_exits_126(box: Box) -> None:
    script = box.root / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    done = box.run("run", "--", str(script))
    assert done.returncode == 126
    assert str(script) in done.stderr and "not executable" in done.stderr


def test_a_nested_call_on_the_held_pool_takes_no_slot_and_never_deadlocks(box: Box) -> None:
    done = box.run("run", "--", "gpurouter", "run", "--", "sh", "-c", "echo inner $GPUROUTER_HELD")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "inner gpu\n"
    outer, inner = box.records()
    assert outer["slot"] == "gpu.0"
    assert inner["slot"] is None and "by a parent gpurouter" in inner["no_slot_because"]


def test_skip_lock_takes_no_slot_at_all(box: Box) -> None:
    holder = box.start("run", "--", "sleep", "30")
    try:
        assert wait_for(lambda: len(box.records()) == 1)
        done = box.run("run", "--", "true", env={"GPUROUTER_SKIP_LOCK": "1"})
        assert done.returncode == 0
        assert box.records()[-1]["no_slot_because"] == "GPUROUTER_SKIP_LOCK=1"
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("how", ["option", "environment"])
def test_the_route_can_be_forced(box: Box, media: dict[str, Path], how: str) -> None:
    box.write_config(WHISPER_PROFILE)
    args, env = (["--route", "cpu"], {}) if how == "option" else ([], {"GPUROUTER_ROUTE": "cpu"})
    done = box.run("run", *args, "--", "transcribe", str(media["wav2"]), env=env)
    assert done.stdout.strip().endswith("--device cpu")
    assert box.records()[0]["reason"].startswith("forced by")


def test_a_bad_forced_route_is_a_usage_error(box: Box) -> None:
    done = box.run("run", "--", "true", env={"GPUROUTER_ROUTE": "tpu"})
    assert done.returncode == 2
    assert "GPUROUTER_ROUTE must be gpu or cpu" in done.stderr


def test_run_options_override_the_profile(box: Box, media: dict[str, Path]) -> None:
    box.write_config(WHISPER_PROFILE)
    done = box.run(
        "run", "--threshold", "10s", "--gpu-args", "--device 'cuda:1'", "--", "transcribe", str(media["wav8"])
    )
    assert done.stdout.strip().endswith("--device cuda:1")


def test_the_wrapped_commands_own_options_are_left_alone(box: Box) -> None:
    done = box.run("run", "--wait", "5s", "sh", "-c", 'echo "$@"', "sh", "--wait", "9")
    assert done.stdout == "--wait 9\n"


def test_nothing_but_the_job_writes_to_stdout(box: Box, media: dict[str, Path]) -> None:
    box.write_config(WHISPER_PROFILE)
    done = box.run("run", "--verbose", "--", "sh", "-c", "printf x", "sh", str(media["wav2"]))
    assert done.stdout == "x"
    assert done.stderr.startswith("gpurouter: ")


def test_an_unwritable_journal_warns_and_the_job_still_runs(box: Box) -> None:
    (box.root / "a-file").write_text("")
    box.config.write_text(f'lock_dir = "{box.lock_dir}"\njournal = "{box.root}/a-file/j.jsonl"\n')
    done = box.run("run", "--", "sh", "-c", "echo ran")
    assert done.returncode == 0 and done.stdout == "ran\n"
    assert "gpurouter: warning: journal" in done.stderr


def test_a_probe_failure_under_fallback_fail_refuses_with_125(box: Box, media: dict[str, Path]) -> None:
    box.write_config(WHISPER_PROFILE.replace('threshold = "5s"', 'threshold = "5s"\nfallback = "fail"'))
    done = box.run("run", "--", "transcribe", str(media["text"]))
    assert done.returncode == 125
    assert 'fallback = "fail"' in done.stderr


def test_route_is_a_dry_run_that_executes_nothing(box: Box, media: dict[str, Path]) -> None:
    box.write_config(WHISPER_PROFILE)
    marker = box.root / "marker"
    done = box.run("route", "--json", "--", "transcribe", str(media["wav8"]), str(marker))
    assert done.returncode == 0, done.stderr
    import json

    decision = json.loads(done.stdout)
    assert (decision["route"], decision["profile"], decision["metric"]) == ("cpu", "transcribe", 8.0)
    assert not marker.exists() and box.records() == []
    text = box.run("route", "--", "transcribe", str(media["wav2"])).stdout
    assert "route:           gpu" in text


def test_a_job_killed_by_a_signal_reports_it_like_a_shell_would(box: Box) -> None:
    done = subprocess.run(
        ["sh", "-c", 'gpurouter run -- sh -c "kill -9 \\$\\$"; echo $?'],
        env=box.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout.strip() == "137"
    assert os.path.exists(box.journal)


def test_the_job_gets_default_sigpipe_like_from_a_shell(box: Box) -> None:
    done = box.run("run", "--", "sh", "-c", "yes | head -1")
    assert done.returncode == 0 and done.stdout == "y\n"
    assert "Broken pipe" not in done.stderr
