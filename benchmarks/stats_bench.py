"""How fast `gpurouter stats` reads a big journal: generate one, time `stats.summarise`.

    .venv/bin/python benchmarks/stats_bench.py [--lines 1000000] [--repeat 3] [--keep DIR]

Writes a synthetic journal with gpurouter's own encoder (the same bytes the runner writes):
a realistic mix of `start` / `busy` / `wait` records, monitored `end` records with per-device
stats, some escapes, evictions and OOMs, over 30 days. Then it times, on the same file:

- `summarise` (the fast path: flat records cut from the bytes, others decoded), best of N;
- `summarise --since 24h` (a time filter on every line);
- the naive reader: `json.loads` on every line (what the fast path avoids), once.

Prints one line per figure: seconds and lines/s. Everything is in a temp dir removed on exit
unless --keep names a directory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from gpurouter.job import config, journal
from gpurouter.observe import stats

PROFILES = ("whisper-ctranslate2", "ffmpeg-hevc", "comfyui", "llama-server")
START = 1_790_000_000.0  # a fixed epoch (late 2026) so runs are comparable


def write_journal(path: Path, lines: int, seed: int = 7, start: float = START, days: float = 30) -> None:
    """Write `lines` records spread over `days` days, in time order, with the real encoder."""
    rng = random.Random(seed)
    step = days * 86400 / lines
    chunk: list[str] = []
    with open(path, "w", encoding="utf-8") as out:
        for n in range(lines):
            now = start + n * step
            profile = PROFILES[n % len(PROFILES)]
            minutes = rng.uniform(1, 120)
            route = "gpu" if minutes < 60 else "cpu"
            base = {
                "v": 1,
                "ts": journal.timestamp(now),
                "event": "start",
                "profile": profile,
                "route": route,
                "metric": round(minutes * 60, 3),
                "reason": f"duration {minutes:.0f}m < threshold 1h",
                "pid": 100000 + n % 50000,
                "argv": [profile, "--model", "large-v3", f"/srv/media/in-{n}.wav"],
                "pool": route,
                "kind": "duration",
                "via": "wav header",
                "input": f"/srv/media/in-{n}.wav",
                "uid": 1000,
                "priority": None,
            }
            roll = rng.random()
            if roll < 0.55:
                base.update(
                    slot=f"{route}.0",
                    waited_s=round(rng.expovariate(0.2), 3),
                    escaped=False,
                    no_slot_because=None,
                )
            elif roll < 0.80:
                base.update(event="busy", waited_s=0.0)
            elif roll < 0.88:
                base.update(event="wait", wait="30m")
            elif roll < 0.97:
                peak = int(500 + 40 * minutes + rng.gauss(0, 50)) if route == "gpu" else None
                base.update(
                    event="end",
                    run_id=f"{n:012x}",
                    exit_status=0,
                    signal=None,
                    duration_s=round(minutes * 6, 3),
                    peak_vram_mib=peak,
                    samples=12,
                    devices={
                        "0": {
                            "utilization_percent": {"min": 0, "max": 97, "mean": 61.2},
                            "memory_used_mib": {"min": 900, "max": 4000, "mean": 3000.5},
                            "temperature_c": {"min": 40, "max": 71, "mean": 63.0},
                            "power_w": {"min": 30.5, "max": 140.0, "mean": 110.25},
                        }
                    },
                )
            elif roll < 0.985:
                base.update(event="escape", waited_s=600.0)
            elif roll < 0.995:
                base.update(
                    event="evict",
                    victim="ollama",
                    ok=rng.random() < 0.9,
                    problem=None,
                    device=0,
                    free_mib_before=1200,
                    free_mib_after=9800,
                    asked_by=profile,
                )
            else:
                base.update(event="oom", run_id=f"{n:012x}", pattern="CUDA out of memory", exit_status=1)
            chunk.append(journal.encode(base))
            if len(chunk) >= 10000:
                out.write("\n".join(chunk) + "\n")
                chunk = []
        if chunk:
            out.write("\n".join(chunk) + "\n")


def _naive(path: Path) -> int:
    count = 0
    with open(path, "rb") as stream:
        for line in stream:
            record = json.loads(line)
            count += record.get("event") == "start"
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", metavar="DIR", help="write the journal here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpurouter-stats-bench-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        path = root / "journal.jsonl"
        began = time.perf_counter()
        write_journal(path, args.lines)
        size_mib = path.stat().st_size / 2**20
        print(
            f"journal: {args.lines} lines, {size_mib:.0f} MiB, written in {time.perf_counter() - began:.1f}s"
        )
        settings = config.validate({"journal": str(path), "lock_dir": str(root / "locks")}, "bench", None)
        now = START + 30 * 86400
        best = float("inf")
        summary: dict[str, object] = {}
        for _ in range(args.repeat):
            began = time.perf_counter()
            summary = stats.summarise(settings, journals=[str(path)])
            best = min(best, time.perf_counter() - began)
        assert summary["lines"] == args.lines, summary["lines"]
        print(
            f"summarise (all records): {best:.2f} s, {args.lines / best:,.0f} lines/s "
            f"(best of {args.repeat}; {summary['records']} records)"
        )
        began = time.perf_counter()
        recent = stats.summarise(settings, since_s=86400, now=now, journals=[str(path)])
        took = time.perf_counter() - began
        print(
            f"summarise --since 24h:   {took:.2f} s, {args.lines / took:,.0f} lines/s "
            f"({recent['records']} records)"
        )
        began = time.perf_counter()
        _naive(path)
        took = time.perf_counter() - began
        print(f"naive json.loads per line: {took:.2f} s, {args.lines / took:,.0f} lines/s (for comparison)")
        if args.keep:
            os.sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
