"""The replay of a busy GPU box (benchmarks/replay_busy_box.py, issue 15) in its --quick form: the
same workload through the runbook's bash router, gpurouter threshold-only and gpurouter's full
set-up, with GPU memory played through the device file; and the replay cleans up after itself."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "replay_busy_box.py"
SETUPS = ["bash router", "gpurouter threshold-only", "gpurouter full"]

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("parallel", "ffmpeg", "ffprobe")),
    reason="needs GNU parallel, ffmpeg and ffprobe (the test set-up installs them: scripts/setup test)",
)


def _working_dir(stderr: str) -> Path:
    line = next(line for line in stderr.splitlines() if line.startswith("replay: working in "))
    return Path(line.removeprefix("replay: working in "))


def _processes_of(root: Path) -> list[int]:
    """Live processes whose environment carries the replay's marker."""
    needle = f"REPLAY_ROOT={root}".encode() + b"\0"
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if needle in Path(f"/proc/{name}/environ").read_bytes():
                    found.append(int(name))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def quick() -> tuple[str, dict[str, dict[str, Any]], Path]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"], capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stderr
    table, rows = done.stdout.rstrip("\n").rsplit("\n", 1)
    return table, {row["setup"]: row for row in json.loads(rows)}, _working_dir(done.stderr)


def test_the_table_has_one_row_per_setup_and_the_parameters(quick: tuple[str, Any, Path]) -> None:
    table, rows, _ = quick
    lines = table.splitlines()
    assert lines[0].startswith("| set-up | files lost | GPU OOMs | small on CPU, GPU had room | p95 wait |")
    assert [line.split(" | ")[0].removeprefix("| ") for line in lines[2:5]] == SETUPS
    assert lines[5] == "" and lines[6].startswith("Parameters: 16 jobs")
    assert list(rows) == SETUPS


def test_every_setup_ran_the_whole_workload(quick: tuple[str, Any, Path]) -> None:
    _, rows, _ = quick
    for row in rows.values():
        # each input ran at least once; the large ones (2 of 16) only on the CPU in every set-up
        assert row["gpu_runs"] + row["cpu_runs"] >= 16, row
        assert row["cpu_runs"] >= 2, row


def test_the_full_setup_loses_no_file_and_reruns_each_gpu_oom_on_the_cpu(
    quick: tuple[str, Any, Path],
) -> None:
    _, rows, _ = quick
    full = rows["gpurouter full"]
    assert full["files_lost"] == 0
    assert full["exit_statuses"].get("0") == 16  # every job ended well: no 1 (OOM), no runner giving up
    assert full["cpu_runs"] >= 2 + full["gpu_ooms"]
    # the resident was seen and evicted at least once when the trainer and two jobs crowded the card
    assert full["evictions"] >= 1 and full["evict_outcomes"].get("failed", 0) == 0
    # one unload per load: a victim still letting go is never asked again (it was, up to 3 times)
    assert full["resident"]["unload_requests"] <= full["resident"]["loads"]
    assert full["evictions"] == full["resident"]["unload_requests"]


def test_threshold_only_gpurouter_loses_exactly_the_files_whose_gpu_run_ran_out_of_memory(
    quick: tuple[str, Any, Path],
) -> None:
    _, rows, _ = quick
    plain = rows["gpurouter threshold-only"]
    assert plain["files_lost"] == plain["gpu_ooms"]  # exit 1 is final for the runner; nothing else lost
    assert plain["small_cpu_room"] == 0 and plain["evictions"] is None


def test_the_bash_router_never_runs_two_gpu_jobs_so_never_runs_out_of_memory(
    quick: tuple[str, Any, Path],
) -> None:
    _, rows, _ = quick
    bash = rows["bash router"]
    assert bash["gpu_ooms"] == 0 and bash["files_lost"] == 0  # 1 GPU flock slot: 4000 + 6144 + 4500 fit


def test_the_replay_removes_its_directory_and_leaves_no_process(quick: tuple[str, Any, Path]) -> None:
    _, _, root = quick
    assert not root.exists()
    assert _processes_of(root) == []


def test_sigterm_mid_replay_kills_every_process_and_removes_the_directory() -> None:
    replay = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert replay.stderr is not None
    root = _working_dir(replay.stderr.readline())
    assert replay.stderr.readline().startswith("replay: replaying 16 jobs through bash router")
    deadline = time.monotonic() + 10
    while not list(root.glob("bash-router/events.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.05)  # jobs are running under parallel
    assert _processes_of(root)
    replay.send_signal(signal.SIGTERM)
    assert replay.wait(timeout=20) == 128 + signal.SIGTERM
    replay.stderr.close()
    assert not root.exists()
    assert _processes_of(root) == []
