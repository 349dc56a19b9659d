"""scripts/gpu-check and its benchmark where there is no GPU: one line and a non-zero exit; the plumbing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpurouter.gpu.nvml import query_gpus

ROOT = Path(__file__).resolve().parent.parent
NO_GPU = not query_gpus({}).gpus


@pytest.mark.skipif(not NO_GPU, reason="this box has an NVIDIA GPU: scripts/gpu-check would run the suite")
def test_gpu_check_without_a_gpu_exits_3_with_one_line_saying_so() -> None:
    done = subprocess.run([str(ROOT / "scripts" / "gpu-check")], capture_output=True, text=True, timeout=120)

    assert (done.returncode, done.stdout, done.stderr.count("\n")) == (3, "", 1)
    assert done.stderr.startswith("gpu-check: no NVIDIA GPU here (NVML says ")
    assert done.stderr.endswith("): nothing to check\n")


def test_gpu_check_prints_one_table_of_the_suite_and_the_benchmark_rows(tmp_path: Path) -> None:
    env = {**os.environ, "GPU_CHECK_ANYWAY": "1", "GPU_CHECK_RUNS": "2", "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [str(ROOT / "scripts" / "gpu-check")], capture_output=True, text=True, timeout=300, env=env
    )

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("gpu-check on ") and lines[1].split()[:3] == ["check", "outcome", "time"]
    tests = [
        line.split()[0]
        for line in lines
        if line.startswith(("gpurouter_gpus", "a_", "the_", "six_", "real_", "nvml_"))
    ]
    assert len(tests) >= 8
    for row in (
        "bench: run plain",
        "bench: run vram (lean)",
        "bench: run vram (pynvml)",
        "bench: query lean",
        "bench: monitor: one sample",
    ):
        assert any(line.startswith(row) for line in lines), row
    assert list(tmp_path.iterdir()) == []  # its work dir is gone


def test_the_gpu_benchmark_writes_every_row_with_a_ratio_against_its_peer(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_real.py"),
            "--runs",
            "2",
            "--pause-s",
            "0.05",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    rows = {row["row"]: row for row in data["rows"]}
    assert rows["run plain"]["ratio"] == 1.0
    assert rows["run vram (lean)"]["vs"] == rows["run vram (pynvml)"]["vs"] == "run plain"
    assert rows["query pynvml: import + init + query"]["vs"] == "query lean"
    assert all(row["median_ms"] > 0 for row in data["rows"])
    assert data["source"] in ("none", "nvml")
