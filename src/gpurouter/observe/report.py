"""`gpurouter report --html FILE [--png DIR]`: a self-contained page of charts from the journal.

Charts: routing over time (GPU / CPU / busy per hour, or per day over long spans), peak
VRAM against the probe's metric per profile with the threshold, the VRAM budget and the fit
drawn on it (monitored runs), the distribution of waits for a slot, and per-device
utilization and memory from the monitored runs' `end` records.

Each chart is laid out once as a small display list (rects, lines, circles, text) and drawn
twice: as inline SVG for the page (no script, no CDN, no network: a Content-Security-Policy
forbids fetching anything) and, with `--png`, as PNG through Pillow. Pillow, not matplotlib:
one ~4.5 MB wheel that imports in ~25 ms against matplotlib's ~50 MB of dependencies (numpy,
fonttools, kiwisolver...) and ~0.5 s; and the PNGs are the very charts of the page, not a
second drawing of them. Pillow is imported only for `--png` (extra `gpurouter[report]`).
"""

from __future__ import annotations

import math
import os
import time

from gpurouter.gpu.fit import EVIDENCE_MAX_PEAK_MIB
from gpurouter.observe.charts import MAX_HOURLY_BARS, device_chart, routing_chart, vram_chart, wait_chart
from gpurouter.observe.drawing import html, png

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any, TypeGuard

    from gpurouter.job.settings import Settings
    from gpurouter.observe.charts import Chart

# --------------------------------------------------------------------------- data


def gather(
    settings: Settings,
    since_s: float | None = None,
    journals: Iterable[str] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """One pass over the journal for the charts: hourly routing, waits, monitored runs, OOMs."""
    from gpurouter.job import journal_reader

    cutoff = None if since_s is None else (time.time() if now is None else now) - since_s
    scanner = journal_reader.Scanner(
        events=("start", "busy", "end", "oom", "exec_failed"), since_epoch=cutoff
    )
    hours: dict[float, list[int]] = {}
    waits: list[float] = []
    runs: dict[str, list[tuple[float, float]]] = {}
    others: dict[str, list[float]] = {}  # others_vram_mib of the monitored GPU runs, for the budget
    kinds: dict[str, str] = {}
    ooms: dict[str, list[float]] = {}
    utilization: dict[str, list[tuple[float, float]]] = {}
    memory: dict[str, list[tuple[float, float]]] = {}

    def count(epoch: float | None, event: str, route: str | None) -> None:
        if epoch is None:
            return
        column = 2 if event == "busy" else 0 if route == "gpu" else 1 if route == "cpu" else None
        if column is not None:
            # exec_failed takes back its own `start` (same pid): that job never ran (issue 12)
            hours.setdefault(epoch - epoch % 3600, [0, 0, 0])[column] += -1 if event == "exec_failed" else 1

    for line in scanner.lines_of(journal_reader.default_files(settings, journals)):
        head = scanner.head(line)
        if head is not None and (not scanner.wanted(head) or not scanner.recent(line)):
            continue
        if (
            head is not None
            and head[0] in ("start", "busy", "exec_failed")
            and line.count(b"{") == 1
            and line[-2:] == b"}\n"
        ):
            at = line.rfind(b',"waited_s":') if head[0] == "start" else -1
            if at > 0:
                end = line.find(b",", at + 12)
                try:
                    waited: float | None = float(line[at + 12 : end if end > 0 else -2])
                except ValueError:
                    waited = None
                if waited is None or not journal_reader.in_bounds("waited_s", waited):
                    scanner.malformed += 1
                    continue
                waits.append(waited)
            count(scanner.epoch(line[13 : line.find(b'"', 13)].decode("ascii", "replace")), head[0], head[2])
            continue
        record = scanner.decode(line)
        if record is None:
            continue
        event, route, profile = record["event"], record.get("route"), record.get("profile")
        epoch = scanner.epoch(record.get("ts"))
        if event in ("start", "busy", "exec_failed"):
            count(epoch, event, route)
            if event == "start" and _number(record.get("waited_s")):
                waits.append(float(record["waited_s"]))
            continue
        if not isinstance(profile, str):
            continue
        metric = record.get("metric")
        if isinstance(record.get("kind"), str):
            kinds[profile] = record["kind"]
        if event == "oom" and _number(metric):
            ooms.setdefault(profile, []).append(float(metric))
        elif event == "end" and route == "gpu":
            single = not (isinstance(record.get("gpus"), list) and len(record["gpus"]) > 1)  # as fit.runs
            if (
                record.get("exit_status", 0) == 0
                and single
                and _number(metric)
                and _number(record.get("peak_vram_mib"))
            ):
                runs.setdefault(profile, []).append((float(metric), float(record["peak_vram_mib"])))
            beside = record.get("others_vram_mib")
            if _number(beside) and 0 <= beside <= EVIDENCE_MAX_PEAK_MIB:  # the bound fit.runs applies
                others.setdefault(profile, []).append(float(beside))
            devices = record.get("devices")
            if isinstance(devices, dict) and epoch is not None:
                for index, figures in devices.items():
                    if not isinstance(figures, dict):
                        continue
                    used = (figures.get("utilization_percent") or {}).get("mean")
                    peak = (figures.get("memory_used_mib") or {}).get("max")
                    if _number(used):
                        utilization.setdefault(str(index), []).append((epoch, float(used)))
                    if _number(peak):
                        memory.setdefault(str(index), []).append((epoch, float(peak)))
    return {
        "hours": hours,
        "waits": waits,
        "runs": runs,
        "others": others,
        "kinds": kinds,
        "ooms": ooms,
        "utilization": dict(sorted(utilization.items())),
        "memory": dict(sorted(memory.items())),
        "lines": scanner.lines,
        "files": scanner.files,
        "malformed": scanner.malformed,
    }


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def charts(
    settings: Settings, data: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> list[Chart]:
    """Every chart of the report, in page order."""
    from gpurouter.gpu.fit import fit
    from gpurouter.observe import tune

    hours: dict[float, list[int]] = data["hours"]
    span = 3600.0
    if hours and (max(hours) - min(hours)) / 3600 > MAX_HOURLY_BARS:
        span = 86400.0
        days: dict[float, list[int]] = {}
        for start, counts in hours.items():
            day = start - (start + time.localtime(start).tm_gmtoff) % 86400  # local midnight
            row = days.setdefault(day, [0, 0, 0])
            for i, count in enumerate(counts):
                row[i] += count
        hours = days
    made = [routing_chart(hours, span)]
    names = sorted(set(data["runs"]) | set(data["ooms"])) or sorted(
        p for p in settings.profiles if settings.profiles[p].monitor
    )
    for name in names:
        rules = settings.profile(name)
        kind = (
            rules.probe
            if rules.probe in ("duration", "size", "pixels")
            else data["kinds"].get(name, "number")
        )
        points = data["runs"].get(name, [])
        model = None
        if len(points) >= 2:
            try:
                model = fit(points)
            except ValueError:
                model = None
        try:
            budget = tune.budget(settings, name, environ, others_mib=data["others"].get(name, ()))["mib"]
        except tune.TuneRefused:
            budget = None
        made.append(
            vram_chart(name, kind, points, sorted(data["ooms"].get(name, [])), rules.threshold, budget, model)
        )
    if not names:
        made.append(vram_chart("(no monitored profile)", "number", [], [], None, None, None))
    made.append(wait_chart(data["waits"]))
    made.append(
        device_chart(
            "gpu-utilization",
            "GPU utilization per device (mean per run)",
            data["utilization"],
            "percent",
            100,
        )
    )
    made.append(device_chart("gpu-memory", "GPU memory used per device (max per run)", data["memory"], "MiB"))
    return made


def write(
    settings: Settings,
    html_path: str | None,
    png_dir: str | None = None,
    since_s: float | None = None,
    journals: Iterable[str] | None = None,
    environ: Mapping[str, str] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Build the charts and write the page (and the PNGs); returns what was written.

    Raises:
        OSError: a file could not be written.
        ImportError: --png without Pillow.
    """
    from gpurouter.observe import prometheus, stats

    generated = time.time() if now is None else now
    summary = stats.summarise(settings, since_s=since_s, journals=journals, now=now)
    data = gather(settings, since_s, journals, now)
    made = charts(settings, data, environ)
    written: dict[str, Any] = {
        "html": None,
        "png": [],
        "charts": [chart.title for chart in made],
        "malformed": max(summary["malformed"], data["malformed"]),
    }
    if html_path:
        since = None if since_s is None else f"{since_s:g}s"
        prometheus.replace_atomically(html_path, html(summary, made, since, generated))
        written["html"] = html_path
    if png_dir:
        os.makedirs(png_dir, exist_ok=True)
        for chart in made:
            path = os.path.join(png_dir, f"{chart.key}.png")
            png(chart, path)
            written["png"].append(path)
    return written
