"""`threshold = "auto"`: each decision takes its threshold from the fit and the live free VRAM."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Box
from journal_factory import monitored_run, write

AUTO = """
[profiles.transcribe]
probe = "duration"
threshold = "auto"
[profiles.transcribe.gpu]
args = ["--device", "cuda"]
[profiles.transcribe.cpu]
args = ["--device", "cpu"]
"""


def devices(path: Path, free_mib: int) -> None:
    path.write_text(
        json.dumps(
            {
                "devices": [
                    {
                        "index": 0,
                        "uuid": "GPU-0",
                        "name": "T",
                        "memory_total_mib": 16000,
                        "memory_used_mib": 16000 - free_mib,
                        "processes": [],
                    }
                ]
            }
        )
    )


def learn(box: Box) -> None:
    """Monitored runs following peak = 500 + 40 MiB per minute (so 2 s ≈ 501 MiB, 8 s ≈ 505 MiB)."""
    box.lock_dir.mkdir(mode=0o1777, exist_ok=True)
    runs = [
        r
        for i, minutes in enumerate((10, 20, 30, 40))
        for r in monitored_run("transcribe", minutes, 500 + 40 * minutes, run_id=f"{i:012x}")
    ]
    write(box.journal, runs)


def test_the_gpu_is_used_while_the_predicted_peak_fits_the_free_vram(
    box: Box, media: dict[str, Path]
) -> None:
    box.write_config(AUTO)
    learn(box)
    gpus = box.root / "gpus.json"
    devices(gpus, free_mib=756)  # budget 756 - 256 = 500 MiB... 2 s needs ~501: just too much
    env = {"GPUROUTER_NVML_FILE": str(gpus)}
    assert (
        box.run("run", "--", "transcribe", str(media["wav2"]), env=env)
        .stdout.strip()
        .endswith("--device cpu")
    )
    devices(gpus, free_mib=4000)
    done = box.run("run", "--", "transcribe", str(media["wav8"]), env=env)
    assert done.stdout.strip().endswith("--device cuda"), done.stderr
    assert "threshold" in box.records()[-1]["reason"]


def test_without_enough_monitored_runs_the_fallback_route_is_taken(box: Box, media: dict[str, Path]) -> None:
    box.write_config(AUTO)
    box.lock_dir.mkdir(mode=0o1777, exist_ok=True)
    write(box.journal, monitored_run("transcribe", 10, 900))
    done = box.run("run", "--", "transcribe", str(media["wav2"]))
    assert done.stdout.strip().endswith("--device cpu")
    assert "needs 3 monitored GPU runs" in box.records()[-1]["reason"]
