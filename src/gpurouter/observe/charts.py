"""The report's charts as small display lists (rects, lines, circles, text), laid out once and
drawn twice by observe/drawing.py: as inline SVG for the page and as PNG through Pillow.
"""

from __future__ import annotations

import math
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Any, Final


GPU_COLOR: Final = "#2e7d32"
CPU_COLOR: Final = "#1565c0"
BUSY_COLOR: Final = "#ef6c00"
OOM_COLOR: Final = "#c62828"
BUDGET_COLOR: Final = "#6a1b9a"
FIT_COLOR: Final = "#757575"
INK: Final = "#212121"
GRID: Final = "#e0e0e0"
SERIES: Final = ("#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#4e342e", "#827717")
WAIT_BUCKETS: Final = (
    ("0", 0.0005),
    ("< 1s", 1.0),
    ("1-10s", 10.0),
    ("10s-1m", 60.0),
    ("1-10m", 600.0),
    ("10m-1h", 3600.0),
    ("> 1h", math.inf),
)
MAX_HOURLY_BARS: Final = 24 * 14  # beyond two weeks, bars per day


# --------------------------------------------------------------------------- the display list


class Chart:
    """A chart as drawing primitives in a width × height box (y grows downwards)."""

    def __init__(self, key: str, title: str, width: int = 960, height: int = 360) -> None:
        self.key, self.title, self.width, self.height = key, title, width, height
        self.items: list[tuple[Any, ...]] = []

    def rect(self, x: float, y: float, w: float, h: float, fill: str) -> None:
        self.items.append(("rect", x, y, w, h, fill))

    def line(
        self, x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 1.0, dash: bool = False
    ) -> None:
        self.items.append(("line", x1, y1, x2, y2, stroke, width, dash))

    def polyline(self, points: Sequence[tuple[float, float]], stroke: str, width: float = 1.5) -> None:
        if len(points) > 1:
            self.items.append(("polyline", tuple(points), stroke, width))

    def circle(self, x: float, y: float, r: float, fill: str) -> None:
        self.items.append(("circle", x, y, r, fill))

    def text(
        self,
        x: float,
        y: float,
        text: str,
        size: int = 12,
        anchor: str = "start",
        fill: str = INK,
        bold: bool = False,
    ) -> None:
        """Text with its baseline at y; anchor start | middle | end."""
        self.items.append(("text", x, y, text, size, anchor, fill, bold))


class _Plot:
    """Maps data to pixels inside a chart's plot area, and draws the axes."""

    def __init__(
        self,
        chart: Chart,
        x_range: tuple[float, float],
        y_range: tuple[float, float],
        left: int = 70,
        right: int = 20,
        top: int = 56,
        bottom: int = 50,
    ) -> None:
        self.chart = chart
        self.left, self.top = left, top
        self.right, self.bottom = chart.width - right, chart.height - bottom
        self.x0, self.x1 = x_range if x_range[1] > x_range[0] else (x_range[0] - 1, x_range[0] + 1)
        self.y0, self.y1 = y_range if y_range[1] > y_range[0] else (y_range[0], y_range[0] + 1)

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - (value - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)

    def axes(
        self,
        x_ticks: Iterable[float] | None,
        y_ticks: Iterable[float],
        x_label: Callable[[float], str],
        y_label: Callable[[float], str],
        x_title: str = "",
        y_title: str = "",
    ) -> None:
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


_DURATION_STEPS: Final = (
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    172800,
    604800,
)


def metric_ticks(kind: str, high: float, count: int = 6) -> list[float]:
    """Round ticks from 0 in the metric's own units: 15m, 30m, 1h...; 512MiB, 1GiB...; else decimal."""
    if high <= 0 or not math.isfinite(high):
        return nice_ticks(0, 1, count)
    if kind == "duration":
        step = next((s for s in _DURATION_STEPS if s * count >= high), None)
        if step is None:  # beyond weeks: round weeks, never one tick per week (issue 12: 1e12 s took 9 s)
            return [tick * _DURATION_STEPS[-1] for tick in nice_ticks(0, high / _DURATION_STEPS[-1], count)]
    elif kind == "size":
        unit = float(2**30) if high >= 2**30 else float(2**20)
        return [tick * unit for tick in nice_ticks(0, high / unit, count)]
    else:
        return nice_ticks(0, high, count)
    return [step * i for i in range(math.ceil(high / step) + 1)]


def time_ticks(first: float, last: float, count: int = 6) -> list[float]:
    """Ticks at round local times (every 5 min, 1 h, 6 h, 1 day...) between two epochs."""
    span = max(1.0, last - first)
    step = next((s for s in _DURATION_STEPS if s >= 60 and s * count >= span), None)
    if step is None:  # beyond weeks (a journal of years, or a forged ts): whole weeks, about `count` ticks
        step = _DURATION_STEPS[-1] * math.ceil(span / (_DURATION_STEPS[-1] * count))
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
    slots = round((last - first) / span_s) + 1
    top = max(sum(counts) for counts in buckets.values())
    plot = _Plot(chart, (0, slots), (0, nice_ticks(0, top)[-1]))
    step = max(1, slots // 8)
    fmt = "%m-%d" if per == "day" else "%m-%d %H:00"
    plot.axes(
        [i + 0.5 for i in range(0, slots, step)],
        nice_ticks(0, top),
        lambda tick: time.strftime(fmt, time.localtime(first + int(tick) * span_s)),
        lambda tick: f"{tick:g}",
        "local time",
        "jobs",
    )
    width = (plot.right - plot.left) / slots
    for start, counts in buckets.items():
        index = round((start - first) / span_s)
        x = plot.left + index * width + width * 0.1
        base = 0
        for count, color in zip(counts, (GPU_COLOR, CPU_COLOR, BUSY_COLOR), strict=True):
            if count:
                chart.rect(
                    x, plot.y(base + count), max(1.0, width * 0.8), plot.y(base) - plot.y(base + count), color
                )
                base += count
    return chart


def vram_chart(
    profile: str,
    kind: str,
    points: Sequence[tuple[float, float]],
    ooms: Sequence[float],
    threshold: float | None,
    budget_mib: float | None,
    model: Any,
) -> Chart:
    """Peak VRAM of monitored GPU runs against the metric, with threshold, budget and fit."""
    from gpurouter.job.units import format_coarse

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
        from gpurouter.observe.tune import per_unit

        unit, per = per_unit(kind, model.slope)
        subtitle += f", fit {model.intercept:.0f} MiB + {per:.3g} MiB per {unit}, R^2 {model.r2:.2f}"
    _title(chart, subtitle)
    plot.axes(
        x_ticks,
        y_ticks,
        lambda tick: format_coarse(tick, kind),
        lambda tick: f"{tick:g}",
        f"metric ({kind})",
        "peak MiB",
    )
    if budget_mib:
        chart.line(
            plot.left, plot.y(budget_mib), plot.right, plot.y(budget_mib), BUDGET_COLOR, 1.5, dash=True
        )
        chart.text(
            plot.left + 6,
            plot.y(budget_mib) - 5,
            f"budget per job {budget_mib:.0f} MiB",
            11,
            fill=BUDGET_COLOR,
        )
    if model is not None:
        chart.line(
            plot.x(0),
            plot.y(max(0.0, model.intercept)),
            plot.x(x_ticks[-1]),
            plot.y(min(y_ticks[-1], model.intercept + model.slope * x_ticks[-1])),
            FIT_COLOR,
            1.0,
            dash=True,
        )
    if threshold is not None and math.isfinite(threshold):
        x = plot.x(threshold)
        chart.line(x, plot.top, x, plot.bottom, OOM_COLOR, 2.0)
        chart.text(x + 5, plot.top + 12, f"threshold {format_coarse(threshold, kind)}", 11, fill=OOM_COLOR)
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
    from gpurouter.observe.stats import percentile

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
    plot.axes(
        [i + 0.5 for i in range(len(counts))],
        y_ticks,
        lambda tick: WAIT_BUCKETS[int(tick)][0],
        lambda tick: f"{tick:g}",
        "waited",
        "jobs",
    )
    width = (plot.right - plot.left) / len(counts)
    for index, count in enumerate(counts):
        if count:
            x = plot.left + index * width + width * 0.15
            chart.rect(
                x, plot.y(count), width * 0.7, plot.bottom - plot.y(count), CPU_COLOR if index else GPU_COLOR
            )
            chart.text(x + width * 0.35, plot.y(count) - 4, str(count), 11, "middle")
    return chart


def device_chart(
    key: str,
    title: str,
    series: Mapping[str, Sequence[tuple[float, float]]],
    unit: str,
    y_max: float | None = None,
) -> Chart:
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
    plot.axes(
        time_ticks(first, last),
        y_ticks,
        lambda tick: time.strftime(fmt, time.localtime(tick)),
        lambda tick: f"{tick:g}",
        "end of run",
        unit,
    )
    for n, points in enumerate(series.values()):
        color = SERIES[n % len(SERIES)]
        ordered = sorted(points)
        chart.polyline([(plot.x(t), plot.y(v)) for t, v in ordered], color)
        for t, v in ordered:
            chart.circle(plot.x(t), plot.y(v), 2.5, color)
    return chart


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)[:60] or "profile"
