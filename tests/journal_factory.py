"""Synthetic journals written with gpurouter's own encoder, for the stats, report, tune and
prometheus tests: the same bytes the runner and the monitor write."""

from __future__ import annotations

import gzip
import os
import textwrap
from pathlib import Path
from typing import Any

from gpurouter.job import config, journal

T0 = 1_790_000_000.0  # a fixed moment (2026-09-21), so every test is reproducible


def record(
    event: str,
    profile: str,
    route: str = "gpu",
    at: float = T0,
    metric: float | None = 60.0,
    pool: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One record laid out as runner.acquire lays it out (v, ts, event, profile, route, metric...)."""
    base: dict[str, Any] = {
        "v": 1,
        "ts": journal.timestamp(at),
        "event": event,
        "profile": profile,
        "route": route,
        "metric": metric,
        "reason": f"duration {metric}s",
        "pid": 4242,
        "argv": [profile, "--device", "cuda" if route == "gpu" else "cpu", "in.wav"],
        "pool": pool or route,
        "kind": "duration",
        "via": "wav header",
        "input": "in.wav",
        "uid": os.getuid(),
        "priority": None,
    }
    if event == "start":
        base.update(slot=f"{pool or route}.0", waited_s=0.0, escaped=False, no_slot_because=None)
    elif event == "busy":
        base.update(waited_s=0.0)
    base.update(extra)
    return base


def monitored_run(
    profile: str,
    minutes: float,
    peak_mib: int | None,
    at: float = T0,
    route: str = "gpu",
    run_id: str = "00aa11bb22cc",
    exit_status: int = 0,
    **extra: Any,
) -> list[dict[str, Any]]:
    """The start and end records of one monitored run (metric in seconds), laid out as the
    monitor writes them: the start's fields (and `extra`, e.g. retry_of), then the figures."""
    metric = minutes * 60
    start = record("start", profile, route, at, metric, run_id=run_id, monitored=True, **extra)
    end = record(
        "end",
        profile,
        route,
        at + minutes * 6,
        metric,
        run_id=run_id,
        monitored=True,
        **extra,
        slot=f"{route}.0",
        waited_s=0.0,
        escaped=False,
        job_pid=4243,
        exit_status=exit_status,
        signal=None,
        duration_s=round(minutes * 6, 3),
        peak_vram_mib=peak_mib,
        samples=12,
        devices={
            "0": {
                "utilization_percent": {"min": 3, "max": 97, "mean": 61.2},
                "memory_used_mib": {"min": 900, "max": (peak_mib or 0) + 900, "mean": 2000.5},
                "temperature_c": {"min": 40, "max": 71, "mean": 63.0},
                "power_w": {"min": 30.5, "max": 140.0, "mean": 110.25},
            }
        },
    )
    return [start, end]


def write(path: Path, records: list[dict[str, Any]], compress: bool = False) -> Path:
    """Write records as JSON Lines (gzip when `compress`)."""
    text = "".join(journal.encode(r) + "\n" for r in records)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as stream:
            stream.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def settings_for(tmp_path: Path, body: str = "", journal_path: Path | None = None) -> config.Settings:
    """Settings from a config file in tmp_path (lock dir and journal there too)."""
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(
        f'lock_dir = "{lock_dir}"\njournal = "{journal_path or lock_dir / "journal.jsonl"}"\n'
        + textwrap.dedent(body)
    )
    return config.load(str(path), environ={"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")})


def touch(path: Path, at: float) -> None:
    """Set a file's mtime (rotated files keep the time of their last write)."""
    os.utime(path, (at, at))
