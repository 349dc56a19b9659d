"""A real retrying runner (GNU parallel) in front of gpurouter: nothing lost, nothing doubled."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import Box

pytestmark = pytest.mark.skipif(
    shutil.which("parallel") is None, reason="GNU parallel is not installed (the test set-up installs it)"
)


def overlap(lines: list[list[str]]) -> int:
    """Most jobs running at once, from the jobs' own start/end lines."""
    events = sorted((float(time), 1 if kind == "start" else -1) for kind, _pid, time, *_ in lines)
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_fail_fast_under_parallel_retries_runs_every_job_exactly_once(box: Box) -> None:
    attempts = box.root / "attempts"
    attempt = box.root / "attempt.sh"  # records each attempt's exit status (parallel's joblog keeps the last)
    attempt.write_text(f'gpurouter run -- transcribe "$1"; rc=$?; echo "$1 $rc" >> {attempts}; exit $rc\n')
    done = subprocess.run(
        [
            "parallel",
            "-j",
            "4",
            "--retries",
            "200",
            "--delay",
            "0.02",
            "sh",
            str(attempt),
            "{}",
            ":::",
            *[f"job{i}" for i in range(8)],
        ],
        env={**box.env, "JOB_SLEEP": "0.1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = box.job_lines()
    started = sorted(line[3] for line in lines if line[0] == "start")
    assert started == sorted(f"job{i}" for i in range(8))  # each ran, once
    assert overlap(lines) == 1
    exits = [int(line.split()[1]) for line in attempts.read_text().splitlines()]
    events = [r["event"] for r in box.records()]
    assert set(exits) <= {0, 75}
    assert events.count("start") == 8 and events.count("busy") == exits.count(75)


def test_blocking_under_parallel_needs_no_retries(box: Box) -> None:
    box.write_config("[profiles.transcribe]\nwait = 'block'\n[profiles.transcribe.gpu]\nslots = 2\n")
    done = subprocess.run(
        [
            "parallel",
            "-j",
            "6",
            "gpurouter",
            "run",
            "--",
            "transcribe",
            "{}",
            ":::",
            *[f"job{i}" for i in range(6)],
        ],
        env={**box.env, "JOB_SLEEP": "0.2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = box.job_lines()
    assert sorted(line[3] for line in lines if line[0] == "start") == sorted(f"job{i}" for i in range(6))
    assert overlap(lines) == 2
    assert [r["event"] for r in box.records()].count("busy") == 0
