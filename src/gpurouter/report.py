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

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Final, Iterable, Mapping, Sequence, TypeGuard

    from gpurouter.config import Settings

GPU_COLOR: Final = "#2e7d32"
CPU_COLOR: Final = "#1565c0"
BUSY_COLOR: Final = "#ef6c00"
OOM_COLOR: Final = "#c62828"
BUDGET_COLOR: Final = "#6a1b9a"
FIT_COLOR: Final = "#757575"
INK: Final = "#212121"
GRID: Final = "#e0e0e0"
SERIES: Final = ("#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#4e342e", "#827717")
WAIT_BUCKETS: Final = (("0", 0.0005), ("< 1s", 1.0), ("1-10s", 10.0), ("10s-1m", 60.0), ("1-10m", 600.0),
                       ("10m-1h", 3600.0), ("> 1h", math.inf))  # fmt: skip
MAX_HOURLY_BARS: Final = 24 * 14  # beyond two weeks, bars per day


# --------------------------------------------------------------------------- the display list


class Chart:
    """A chart as drawing primitives in a width × height box (y grows downwards)."""

    def __init__(self, key: str, title: str, width: int = 960, height: int = 360) -> None:
        self.key, self.title, self.width, self.height = key, title, width, height
        self.items: list[tuple[Any, ...]] = []

    def rect(self, x: float, y: float, w: float, h: float, fill: str) -> None:
        self.items.append(("rect", x, y, w, h, fill))

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 1.0,
             dash: bool = False) -> None:  # fmt: skip
        self.items.append(("line", x1, y1, x2, y2, stroke, width, dash))

    def polyline(self, points: Sequence[tuple[float, float]], stroke: str, width: float = 1.5) -> None:
        if len(points) > 1:
            self.items.append(("polyline", tuple(points), stroke, width))

    def circle(self, x: float, y: float, r: float, fill: str) -> None:
        self.items.append(("circle", x, y, r, fill))

    def text(self, x: float, y: float, text: str, size: int = 12, anchor: str = "start", fill: str = INK,
             bold: bool = False) -> None:  # fmt: skip
        """Text with its baseline at y; anchor start | middle | end."""
        self.items.append(("text", x, y, text, size, anchor, fill, bold))


class _Plot:
    """Maps data to pixels inside a chart's plot area, and draws the axes."""

    def __init__(self, chart: Chart, x_range: tuple[float, float], y_range: tuple[float, float],
                 left: int = 70, right: int = 20, top: int = 56, bottom: int = 50) -> None:  # fmt: skip
        self.chart = chart
        self.left, self.top = left, top
        self.right, self.bottom = chart.width - right, chart.height - bottom
        self.x0, self.x1 = x_range if x_range[1] > x_range[0] else (x_range[0] - 1, x_range[0] + 1)
        self.y0, self.y1 = y_range if y_range[1] > y_range[0] else (y_range[0], y_range[0] + 1)

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - (value - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)

    def axes(self, x_ticks: Iterable[float] | None, y_ticks: Iterable[float], x_label: Callable[[float], str],
             y_label: Callable[[float], str], x_title: str = "", y_title: str = "") -> None:  # fmt: skip
        chart = self.chart
        for tick in y_ticks:
            y = self.y(tick)
            chart.line(self.left, y, self.right, y, GRID)
            chart.text(self.left - 6, y + 4, y_label(tick), 11, "end")
        for tick in x_ticks or ():
            x = self.x(tick)
            chart.line(x, self.bottom, x, self.bottom + 4, INK)
            chart.text(x, self.bottom + 17, x_label(tick), 11, "middle")
        chart.line(self.left, self.bottom, self.right, self.bottom, INK)
        chart.line(self.left, self.top, self.left, self.bottom, INK)
        if y_title:
            chart.text(self.left - 6, self.top - 8, y_title, 11, "end")
        if x_title:
            chart.text(self.right, self.bottom + 38, x_title, 11, "end")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [low, high] (1, 2, 2.5, 5 × 10^n steps)."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        high = low + 1
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


_DURATION_STEPS: Final = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
                          86400, 172800, 604800)  # fmt: skip


def metric_ticks(kind: str, high: float, count: int = 6) -> list[float]:
    """Round ticks from 0 in the metric's own units: 15m, 30m, 1h...; 512MiB, 1GiB...; else decimal."""
    if high <= 0 or not math.isfinite(high):
        return nice_ticks(0, 1, count)
    if kind == "duration":
        step = next((s for s in _DURATION_STEPS if s * count >= high), _DURATION_STEPS[-1])
    elif kind == "size":
        unit = float(2**30) if high >= 2**30 else float(2**20)
        return [tick * unit for tick in nice_ticks(0, high / unit, count)]
    else:
        return nice_ticks(0, high, count)
    return [step * i for i in range(int(math.ceil(high / step)) + 1)]


def time_ticks(first: float, last: float, count: int = 6) -> list[float]:
    """Ticks at round local times (every 5 min, 1 h, 6 h, 1 day...) between two epochs."""
    span = max(1.0, last - first)
    step = next((s for s in _DURATION_STEPS if s >= 60 and s * count >= span), _DURATION_STEPS[-1])
    offset = time.localtime(first).tm_gmtoff
    tick = math.ceil((first + offset) / step) * step - offset
    ticks = []
    while tick <= last:
        ticks.append(float(tick))
        tick += step
    return ticks or [first]


def _title(chart: Chart, subtitle: str = "") -> None:
    chart.text(12, 22, chart.title, 15, bold=True)
    if subtitle:
        chart.text(chart.width - 12, 22, subtitle, 11, "end", FIT_COLOR)


def _empty(chart: Chart, why: str) -> Chart:
    _title(chart)
    chart.rect(12, 40, chart.width - 24, chart.height - 60, "#fafafa")
    chart.text(chart.width / 2, chart.height / 2, why, 13, "middle", FIT_COLOR)
    return chart


def _legend(chart: Chart, entries: Sequence[tuple[str, str]], x: float, y: float = 22) -> None:
    for label, color in reversed(entries):
        width = 12 + 7 * len(label)
        x -= width + 14
        chart.rect(x, y - 9, 10, 10, color)
        chart.text(x + 14, y, label, 11)


# --------------------------------------------------------------------------- the charts


def routing_chart(buckets: Mapping[float, list[int]], span_s: float) -> Chart:
    """Stacked bars of GPU starts, CPU starts and busy refusals per hour (or day)."""
    per = "day" if span_s == 86400 else "hour"
    chart = Chart("routing", f"Routing per {per}: GPU, CPU, busy")
    if not buckets:
        return _empty(chart, "no start or busy record in the journal")
    _title(chart)
    _legend(chart, [("GPU", GPU_COLOR), ("CPU", CPU_COLOR), ("busy", BUSY_COLOR)], chart.width - 12)
    first, last = min(buckets), max(buckets)
    slots = int(round((last - first) / span_s)) + 1
    top = max(sum(counts) for counts in buckets.values())
    plot = _Plot(chart, (0, slots), (0, nice_ticks(0, top)[-1]))
    step = max(1, slots // 8)
    fmt = "%m-%d" if per == "day" else "%m-%d %H:00"
    plot.axes([i + 0.5 for i in range(0, slots, step)], nice_ticks(0, top),
              lambda tick: time.strftime(fmt, time.localtime(first + int(tick) * span_s)), lambda tick: f"{tick:g}",
              "local time", "jobs")  # fmt: skip
    width = (plot.right - plot.left) / slots
    for start, counts in buckets.items():
        index = int(round((start - first) / span_s))
        x = plot.left + index * width + width * 0.1
        base = 0
        for count, color in zip(counts, (GPU_COLOR, CPU_COLOR, BUSY_COLOR), strict=True):
            if count:
                chart.rect(
                    x, plot.y(base + count), max(1.0, width * 0.8), plot.y(base) - plot.y(base + count), color
                )
                base += count
    return chart


def vram_chart(profile: str, kind: str, points: Sequence[tuple[float, float]], ooms: Sequence[float],
               threshold: float | None, budget_mib: float | None, model: Any) -> Chart:  # fmt: skip
    """Peak VRAM of monitored GPU runs against the metric, with threshold, budget and fit."""
    from gpurouter.stats import human_metric

    chart = Chart(f"vram-{_slug(profile)}", f"Peak VRAM vs metric: {profile}")
    if not points:
        return _empty(chart, "no monitored GPU run with a peak VRAM (monitor = true)")
    xs = [x for x, _ in points] + list(ooms) + ([threshold] if threshold is not None else [])
    ys = [y for _, y in points] + ([budget_mib] if budget_mib else [])
    x_ticks = metric_ticks(kind, max(xs) * 1.05)
    y_ticks = nice_ticks(0, max(ys) * 1.1)
    plot = _Plot(chart, (0, x_ticks[-1]), (0, y_ticks[-1]))
    subtitle = f"{len(points)} runs"
    if model is not None:
        from gpurouter.tune import per_unit

        unit, per = per_unit(kind, model.slope)
        subtitle += f", fit {model.intercept:.0f} MiB + {per:.3g} MiB per {unit}, R^2 {model.r2:.2f}"
    _title(chart, subtitle)
    plot.axes(x_ticks, y_ticks, lambda tick: human_metric(tick, kind), lambda tick: f"{tick:g}",
              f"metric ({kind})", "peak MiB")  # fmt: skip
    if budget_mib:
        chart.line(
            plot.left, plot.y(budget_mib), plot.right, plot.y(budget_mib), BUDGET_COLOR, 1.5, dash=True
        )
        chart.text(plot.left + 6, plot.y(budget_mib) - 5, f"budget per job {budget_mib:.0f} MiB", 11,
                   fill=BUDGET_COLOR)  # fmt: skip
    if model is not None:
        chart.line(plot.x(0), plot.y(max(0.0, model.intercept)), plot.x(x_ticks[-1]),
                   plot.y(min(y_ticks[-1], model.intercept + model.slope * x_ticks[-1])), FIT_COLOR, 1.0, dash=True)  # fmt: skip
    if threshold is not None and math.isfinite(threshold):
        x = plot.x(threshold)
        chart.line(x, plot.top, x, plot.bottom, OOM_COLOR, 2.0)
        chart.text(x + 5, plot.top + 12, f"threshold {human_metric(threshold, kind)}", 11, fill=OOM_COLOR)
    for x, y in points:
        chart.circle(plot.x(x), plot.y(y), 3.5, GPU_COLOR)
    for metric in ooms:
        x, y = plot.x(metric), plot.top + 4
        chart.line(x - 4, y - 4, x + 4, y + 4, OOM_COLOR, 2.0)
        chart.line(x - 4, y + 4, x + 4, y - 4, OOM_COLOR, 2.0)
    if ooms:
        chart.text(chart.width - 12, 40, f"x = GPU out of memory ({len(ooms)})", 11, "end", OOM_COLOR)
    return chart


def wait_chart(waits: Sequence[float]) -> Chart:
    """How long started jobs waited for their slot, in log-spaced buckets."""
    from gpurouter.stats import percentile

    chart = Chart("waits", "Wait for a slot", height=300)
    if not waits:
        return _empty(chart, "no start record with a wait")
    counts = [0] * len(WAIT_BUCKETS)
    for value in waits:
        counts[next(i for i, (_, bound) in enumerate(WAIT_BUCKETS) if value < bound)] += 1
    ordered = sorted(waits)
    _title(
        chart,
        f"{len(waits)} jobs, median {percentile(ordered, 0.5):.2f}s, p95 {percentile(ordered, 0.95):.2f}s",
    )
    y_ticks = nice_ticks(0, max(counts))
    plot = _Plot(chart, (0, len(counts)), (0, y_ticks[-1]))
    plot.axes([i + 0.5 for i in range(len(counts))], y_ticks, lambda tick: WAIT_BUCKETS[int(tick)][0],
              lambda tick: f"{tick:g}", "waited", "jobs")  # fmt: skip
    width = (plot.right - plot.left) / len(counts)
    for index, count in enumerate(counts):
        if count:
            x = plot.left + index * width + width * 0.15
            chart.rect(
                x, plot.y(count), width * 0.7, plot.bottom - plot.y(count), CPU_COLOR if index else GPU_COLOR
            )
            chart.text(x + width * 0.35, plot.y(count) - 4, str(count), 11, "middle")
    return chart


def device_chart(key: str, title: str, series: Mapping[str, Sequence[tuple[float, float]]], unit: str,
                 y_max: float | None = None) -> Chart:  # fmt: skip
    """One line per device over time (one point per monitored run, at its end)."""
    chart = Chart(key, title, height=300)
    if not any(series.values()):
        return _empty(chart, "no monitored run with device figures")
    _title(chart)
    _legend(
        chart, [(f"GPU {index}", SERIES[n % len(SERIES)]) for n, index in enumerate(series)], chart.width - 12
    )
    times = [t for points in series.values() for t, _ in points]
    values = [v for points in series.values() for _, v in points]
    y_ticks = nice_ticks(0, y_max if y_max is not None else max(values) * 1.1)
    first, last = min(times), max(times)
    plot = _Plot(chart, (first, last), (0, y_ticks[-1]))
    span = max(1.0, last - first)
    fmt = "%H:%M" if span < 86400 else "%m-%d %H:%M"
    plot.axes(time_ticks(first, last), y_ticks,
              lambda tick: time.strftime(fmt, time.localtime(tick)), lambda tick: f"{tick:g}", "end of run", unit)  # fmt: skip
    for n, points in enumerate(series.values()):
        color = SERIES[n % len(SERIES)]
        ordered = sorted(points)
        chart.polyline([(plot.x(t), plot.y(v)) for t, v in ordered], color)
        for t, v in ordered:
            chart.circle(plot.x(t), plot.y(v), 2.5, color)
    return chart


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)[:60] or "profile"


# --------------------------------------------------------------------------- data


def gather(settings: Settings, since_s: float | None = None, journals: Iterable[str] | None = None,
           now: float | None = None) -> dict[str, Any]:  # fmt: skip
    """One pass over the journal for the charts: hourly routing, waits, monitored runs, OOMs."""
    from gpurouter import stats

    cutoff = None if since_s is None else (time.time() if now is None else now) - since_s
    scanner = stats.Scanner(events=("start", "busy", "end", "oom", "exec_failed"), since_epoch=cutoff)
    hours: dict[float, list[int]] = {}
    waits: list[float] = []
    runs: dict[str, list[tuple[float, float]]] = {}
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

    for line in scanner.lines_of(stats.default_files(settings, journals)):
        head = scanner.head(line)
        if head is not None and (not scanner.wanted(head) or not scanner.recent(line)):
            continue
        if (
            head is not None
            and head[0] in ("start", "busy", "exec_failed")
            and line.count(b"{") == 1
            and line[-2:] == b"}\n"
        ):
            count(scanner.epoch(line[13 : line.find(b'"', 13)].decode("ascii", "replace")), head[0], head[2])
            at = line.rfind(b',"waited_s":') if head[0] == "start" else -1
            if at > 0:
                end = line.find(b",", at + 12)
                try:
                    waits.append(float(line[at + 12 : end if end > 0 else -2]))
                except ValueError:
                    pass
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
            single = not (isinstance(record.get("gpus"), list) and len(record["gpus"]) > 1)  # as tune.runs
            if record.get("exit_status", 0) == 0 and single and _number(metric) and _number(record.get("peak_vram_mib")):
                runs.setdefault(profile, []).append((float(metric), float(record["peak_vram_mib"])))
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
    return {"hours": hours, "waits": waits, "runs": runs, "kinds": kinds, "ooms": ooms,
            "utilization": dict(sorted(utilization.items())), "memory": dict(sorted(memory.items())),
            "lines": scanner.lines, "files": scanner.files}  # fmt: skip


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def charts(
    settings: Settings, data: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> list[Chart]:
    """Every chart of the report, in page order."""
    from gpurouter import tune

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
                model = tune.fit(points)
            except ValueError:
                model = None
        try:
            budget = tune.budget(settings, name, environ)["mib"]
        except tune.TuneRefused:
            budget = None
        made.append(
            vram_chart(name, kind, points, sorted(data["ooms"].get(name, [])), rules.threshold, budget, model)
        )
    if not names:
        made.append(vram_chart("(no monitored profile)", "number", [], [], None, None, None))
    made.append(wait_chart(data["waits"]))
    made.append(device_chart("gpu-utilization", "GPU utilization per device (mean per run)", data["utilization"],
                             "percent", 100))  # fmt: skip
    made.append(device_chart("gpu-memory", "GPU memory used per device (max per run)", data["memory"], "MiB"))
    return made


# --------------------------------------------------------------------------- drawing


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def svg(chart: Chart) -> str:
    """The chart as an inline SVG element."""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {chart.width} {chart.height}" '
           f'width="{chart.width}" height="{chart.height}" role="img" aria-label="{_esc(chart.title)}" '
           'font-family="DejaVu Sans, Verdana, sans-serif">',
           f"<title>{_esc(chart.title)}</title>",
           f'<rect width="{chart.width}" height="{chart.height}" fill="#ffffff"/>']  # fmt: skip
    for item in chart.items:
        kind = item[0]
        if kind == "rect":
            _, x, y, w, h, fill = item
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{fill}"/>')
        elif kind == "line":
            _, x1, y1, x2, y2, stroke, width, dash = item
            extra = ' stroke-dasharray="6 4"' if dash else ""
            out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
                       f'stroke-width="{width}"{extra}/>')  # fmt: skip
        elif kind == "polyline":
            _, points, stroke, width = item
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{stroke}" stroke-width="{width}"/>')
        elif kind == "circle":
            _, x, y, r, fill = item
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}"/>')
        elif kind == "text":
            _, x, y, text, size, anchor, fill, bold = item
            weight = ' font-weight="bold"' if bold else ""
            out.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}"'
                       f"{weight}>{_esc(text)}</text>")  # fmt: skip
    out.append("</svg>")
    return "\n".join(out)


def png(chart: Chart, path: str, scale: int = 2) -> None:
    """Draw the chart with Pillow into a PNG file (`scale` × its size, for crisp text).

    Raises:
        ImportError: Pillow is not installed.
    """
    from PIL import Image, ImageDraw, ImageFont  # deferred: only --png needs it (gpurouter[report])

    image = Image.new("RGB", (chart.width * scale, chart.height * scale), "white")
    draw = ImageDraw.Draw(image)
    fonts: dict[int, Any] = {}

    def font(size: int) -> Any:
        if size not in fonts:
            fonts[size] = ImageFont.load_default(size=size * scale)
        return fonts[size]

    s = scale
    for item in chart.items:
        kind = item[0]
        if kind == "rect":
            _, x, y, w, h, fill = item
            if w > 0 and h > 0:
                draw.rectangle([x * s, y * s, (x + w) * s - 1, (y + h) * s - 1], fill=fill)
        elif kind == "line":
            _, x1, y1, x2, y2, stroke, width, dash = item
            for a, b in (
                _dashes((x1 * s, y1 * s), (x2 * s, y2 * s), 6 * s, 4 * s)
                if dash
                else [((x1 * s, y1 * s), (x2 * s, y2 * s))]
            ):
                draw.line([a, b], fill=stroke, width=max(1, int(round(width * s))))
        elif kind == "polyline":
            _, points, stroke, width = item
            draw.line(
                [(x * s, y * s) for x, y in points],
                fill=stroke,
                width=max(1, int(round(width * s))),
                joint="curve",
            )
        elif kind == "circle":
            _, x, y, r, fill = item
            draw.ellipse([(x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s], fill=fill)
        elif kind == "text":
            _, x, y, text, size, anchor, fill, bold = item
            where = {"start": "ls", "middle": "ms", "end": "rs"}[anchor]
            draw.text((x * s, y * s), text, font=font(size), fill=fill, anchor=where,
                      stroke_width=1 if bold else 0, stroke_fill=fill)  # fmt: skip
    import io

    from gpurouter import fsutil

    encoded = io.BytesIO()
    image.save(encoded, "PNG", optimize=True)
    # Not image.save(path): that open(2)s with O_TRUNC, follows a planted symlink and blocks on a
    # FIFO; write_replacing replaces only a regular file (issue 12).
    fsutil.write_replacing(path, encoded.getvalue(), 0o644)


def _dashes(
    a: tuple[float, float], b: tuple[float, float], on: float, off: float
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    length = math.hypot(b[0] - a[0], b[1] - a[1])
    if length == 0:
        return []
    ux, uy = (b[0] - a[0]) / length, (b[1] - a[1]) / length
    pieces, at = [], 0.0
    while at < length:
        end = min(length, at + on)
        pieces.append(((a[0] + ux * at, a[1] + uy * at), (a[0] + ux * end, a[1] + uy * end)))
        at = end + off
    return pieces


_CSS = """
body { font-family: "DejaVu Sans", Verdana, sans-serif; color: #212121; margin: 24px; max-width: 1000px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 6px; }
p.meta { color: #616161; font-size: 13px; margin: 0 0 16px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 3px 10px; text-align: right; border-bottom: 1px solid #e0e0e0; }
th:first-child, td:first-child { text-align: left; }
ul.advice li { font-size: 13px; margin: 4px 0; }
figure { margin: 8px 0 20px; } svg { max-width: 100%; height: auto; border: 1px solid #eeeeee; }
"""


def html(summary: Mapping[str, Any], made: Sequence[Chart], since: str | None, generated: float) -> str:
    """The self-contained page: summary table, advice, and every chart as inline SVG."""
    rows = []
    for name, row in summary["profiles"].items():
        peak = row["peak_vram_mib"]
        rows.append(f"<tr><td>{_esc(name)}</td><td>{row['gpu']}</td><td>{row['cpu']}</td><td>{row['busy']}</td>"
                    f"<td>{row['busy_rate'] * 100:.1f}%</td><td>{_fmt(row['wait_p50_s'], 's')}</td>"
                    f"<td>{_fmt(row['wait_p95_s'], 's')}</td><td>{row['escapes']}</td><td>{row['oom']}</td>"
                    f"<td>{_fmt(peak['max'], ' MiB', 0)}</td></tr>")  # fmt: skip
    advice = "".join(f"<li>{_esc(line)}</li>" for line in summary["advice"])
    figures = "\n".join(f'<figure id="{chart.key}">{svg(chart)}</figure>' for chart in made)
    files = ", ".join(_esc(path) for path in summary.get("files") or []) or "none"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gpurouter report</title>
<style>{_CSS}</style>
</head>
<body>
<h1>gpurouter report</h1>
<p class="meta">journal: {files}<br>records: {summary["records"]} ({_esc(summary["first"] or "-")} .. {_esc(summary["last"] or "-")}), since: {_esc(since or "start")}; generated {_esc(time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(generated)))}</p>
<h2>Jobs by profile</h2>
<table>
<tr><th>profile</th><th>GPU</th><th>CPU</th><th>busy</th><th>busy %</th><th>wait p50</th><th>wait p95</th><th>escaped</th><th>OOM</th><th>peak VRAM</th></tr>
{"".join(rows) or '<tr><td colspan="10">no jobs</td></tr>'}
</table>
{f'<h2>Advice</h2><ul class="advice">{advice}</ul>' if advice else ""}
<h2>Charts</h2>
{figures}
</body>
</html>
"""


def _fmt(value: float | None, unit: str, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def write(settings: Settings, html_path: str | None, png_dir: str | None = None, since_s: float | None = None,
          journals: Iterable[str] | None = None, environ: Mapping[str, str] | None = None,
          now: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Build the charts and write the page (and the PNGs); returns what was written.

    Raises:
        OSError: a file could not be written.
        ImportError: --png without Pillow.
    """
    from gpurouter import prometheus, stats

    generated = time.time() if now is None else now
    summary = stats.summarise(settings, since_s=since_s, journals=journals, now=now)
    made = charts(settings, gather(settings, since_s, journals, now), environ)
    written: dict[str, Any] = {"html": None, "png": [], "charts": [chart.title for chart in made]}
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
