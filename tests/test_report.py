"""`gpurouter report`: a self-contained HTML page whose charts a real browser draws, and the
same charts as PNG files."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from journal_factory import T0, monitored_run, record, settings_for, write

from gpurouter.cli import cli
from gpurouter.observe import report

Image = pytest.importorskip("PIL.Image", reason="Pillow is in the test extra (it draws --png)")
CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)),
    None,
)
PROFILE = """
[profiles.whisper]
probe = "duration"
threshold = "1h"
monitor = true
[profiles.whisper.gpu]
slots = 2
vram_mib = 6000
"""
TITLES = (
    "Routing per hour: GPU, CPU, busy",
    "Peak VRAM vs metric: whisper",
    "Wait for a slot",
    "GPU utilization per device (mean per run)",
    "GPU memory used per device (max per run)",
)


def _journal(tmp_path: Path) -> Path:
    """Six hours of jobs: GPU and CPU starts, refusals, waits, monitored runs on two GPUs, an OOM."""
    rng = random.Random(3)
    records = []
    for i in range(120):
        at = T0 + i * 180
        route = "gpu" if i % 3 else "cpu"
        records.append(record("start", "whisper", route, at, waited_s=round(rng.expovariate(0.3), 3)))
        if i % 7 == 0:
            records.append(record("busy", "whisper", "gpu", at + 5))
    for i in range(12):
        minutes = 5 + 4 * i
        run = monitored_run("whisper", minutes, 500 + 40 * minutes, T0 + i * 1500, run_id=f"r{i}")
        run[1]["devices"]["1"] = {
            "utilization_percent": {"min": 0, "max": 50, "mean": 20.0 + i},
            "memory_used_mib": {"min": 100, "max": 2000 + 10 * i, "mean": 900.0},
        }
        records += run
    records.append(
        record("oom", "whisper", "gpu", T0 + 20000, 150 * 60.0, run_id="x", pattern="CUDA out of memory")
    )
    return write(tmp_path / "journal.jsonl", records)


def _non_white_fraction(path: Path) -> float:
    with Image.open(path) as image:
        grey = image.convert("L")
        histogram = grey.histogram()
    return 1 - sum(histogram[246:]) / sum(histogram)


def test_the_page_is_self_contained_and_holds_every_chart(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, PROFILE, _journal(tmp_path))
    page = tmp_path / "report.html"
    written = report.write(settings, str(page), now=T0 + 30000)
    text = page.read_text()
    assert written["charts"] == list(TITLES)
    for title in TITLES:
        assert f"<title>{title}</title>" in text
    assert "<script" not in text and " src=" not in text and " href=" not in text
    assert "default-src 'none'" in text  # the browser may fetch nothing
    assert "threshold 1h" in text and "budget per job 6000 MiB" in text  # drawn on the VRAM chart
    assert "x = GPU out of memory (1)" in text


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/setup installs it with apt-get)"
)
def test_headless_chromium_draws_the_page(tmp_path: Path) -> None:
    settings_for(tmp_path, PROFILE, _journal(tmp_path))
    page, shot = tmp_path / "report.html", tmp_path / "shot.png"
    result = CliRunner().invoke(
        cli, ["report", "--config", str(tmp_path / "config.toml"), "--html", str(page)]
    )
    assert result.exit_code == 0, result.output
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert shot.exists(), done.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1200, 1600)
    assert _non_white_fraction(shot) > 0.05  # bars, points, lines and text: not a blank page
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><title>x</title>")
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'p2'}",
            f"--screenshot={tmp_path / 'blank.png'}",
            "--window-size=1200,1600",
            blank.as_uri(),
        ],
        capture_output=True,
        timeout=90,
    )
    assert _non_white_fraction(tmp_path / "blank.png") < 0.01  # the measure does tell a blank page


def test_png_charts_are_written_one_file_each_and_drawn(tmp_path: Path) -> None:
    settings_for(tmp_path, PROFILE, _journal(tmp_path))
    result = CliRunner().invoke(
        cli, ["report", "--config", str(tmp_path / "config.toml"), "--png", str(tmp_path / "charts")]
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "charts").iterdir())
    assert names == ["gpu-memory.png", "gpu-utilization.png", "routing.png", "vram-whisper.png", "waits.png"]
    assert result.output.split() == [
        str(tmp_path / "charts" / name)
        for name in ("routing.png", "vram-whisper.png", "waits.png", "gpu-utilization.png", "gpu-memory.png")
    ]
    for name in names:
        with Image.open(tmp_path / "charts" / name) as image:
            assert image.size == (1920, 720 if name in ("routing.png", "vram-whisper.png") else 600)
        assert _non_white_fraction(tmp_path / "charts" / name) > 0.01


def test_routing_counts_land_in_their_hour(tmp_path: Path) -> None:
    records = [
        record("start", "a", "gpu", T0 + 10),
        record("start", "a", "cpu", T0 + 20),
        record("busy", "a", "gpu", T0 + 3700),
        record("start", "a", "gpu", T0 + 3 * 3600),
    ]
    settings = settings_for(tmp_path, "", write(tmp_path / "j.jsonl", records))
    hours = report.gather(settings)["hours"]
    hour = T0 - T0 % 3600
    assert hours == {hour: [1, 1, 0], hour + 3600: [0, 0, 1], hour + 3 * 3600: [1, 0, 0]}


def test_an_empty_journal_still_gives_a_page_that_says_so(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, "", tmp_path / "none.jsonl")
    page = tmp_path / "r.html"
    report.write(settings, str(page))
    text = page.read_text()
    assert "no start or busy record in the journal" in text and "no jobs" in text


def test_report_needs_somewhere_to_write(tmp_path: Path) -> None:
    settings_for(tmp_path)
    result = CliRunner().invoke(cli, ["report", "--config", str(tmp_path / "config.toml")])
    assert result.exit_code == 2 and "--html" in result.output


def test_a_long_span_is_drawn_per_day(tmp_path: Path) -> None:
    records = [record("start", "a", "gpu", T0 + day * 86400) for day in range(40)]
    settings = settings_for(tmp_path, "", write(tmp_path / "j.jsonl", records))
    made = report.charts(settings, report.gather(settings))
    assert made[0].title == "Routing per day: GPU, CPU, busy"
    assert (
        json.dumps([item for item in made[0].items if item[0] == "rect"]).count('"rect"') == 40 + 3
    )  # bars + legend
