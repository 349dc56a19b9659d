"""Figures from the journal: jobs by profile and route, refusals, wait times, and advice."""

from __future__ import annotations

import time

from gpurouter import journal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from gpurouter.config import Settings


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def summarise(settings: Settings, since_s: float | None = None, profile: str | None = None,
              now: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Counts per profile (gpu, cpu, busy), busy rate, wait p50/p95, and advice in words."""
    from datetime import datetime

    cutoff = None if since_s is None else (time.time() if now is None else now) - since_s
    profiles: dict[str, dict[str, Any]] = {}
    waits: dict[str, list[float]] = {}
    records = 0
    for record in journal.read_records(settings.journal) if settings.journal else ():
        name = record.get("profile")
        if not isinstance(name, str) or (profile and name != profile):
            continue
        if cutoff is not None:
            try:
                if datetime.fromisoformat(str(record.get("ts"))).timestamp() < cutoff:
                    continue
            except ValueError:
                continue
        records += 1
        row = profiles.setdefault(name, {"gpu": 0, "cpu": 0, "busy": 0})
        event = record.get("event")
        if event == "start":
            route = record.get("route")
            if route in ("gpu", "cpu"):
                row[route] += 1
            waited = record.get("waited_s")
            if isinstance(waited, (int, float)):
                waits.setdefault(name, []).append(float(waited))
        elif event == "busy":
            row["busy"] += 1
    advice = []
    for name, row in profiles.items():
        attempts = row["gpu"] + row["cpu"] + row["busy"]
        row["busy_rate"] = row["busy"] / attempts if attempts else 0.0
        row["wait_p50_s"] = _percentile(waits.get(name, []), 0.5)
        row["wait_p95_s"] = _percentile(waits.get(name, []), 0.95)
        if row["busy"] and row["busy"] > row["cpu"] and row["busy_rate"] > 0.2:
            advice.append(f"{name}: {row['busy']} refusals against {row['cpu']} CPU runs: raise the threshold "
                          "or the CPU slots if RAM allows, or use wait = \"block\" under an instant-retry runner")  # fmt: skip
    return {"journal": settings.journal, "since": None if since_s is None else f"{since_s:g}s", "records": records,
            "profiles": profiles, "advice": advice}  # fmt: skip
