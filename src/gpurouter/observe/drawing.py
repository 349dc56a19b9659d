"""Drawing the report's display lists: inline SVG for the page, PNG through Pillow (imported only
for `--png`, extra `gpurouter[report]`), and the self-contained HTML page around them.
"""

from __future__ import annotations

import math
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from gpurouter.observe.charts import Chart

# --------------------------------------------------------------------------- drawing


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def svg(chart: Chart) -> str:
    """The chart as an inline SVG element."""
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {chart.width} {chart.height}" '
        f'width="{chart.width}" height="{chart.height}" role="img" aria-label="{_esc(chart.title)}" '
        'font-family="DejaVu Sans, Verdana, sans-serif">',
        f"<title>{_esc(chart.title)}</title>",
        f'<rect width="{chart.width}" height="{chart.height}" fill="#ffffff"/>',
    ]
    for item in chart.items:
        kind = item[0]
        if kind == "rect":
            _, x, y, w, h, fill = item
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{fill}"/>')
        elif kind == "line":
            _, x1, y1, x2, y2, stroke, width, dash = item
            extra = ' stroke-dasharray="6 4"' if dash else ""
            out.append(
                f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
                f'stroke-width="{width}"{extra}/>'
            )
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
            out.append(
                f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}"'
                f"{weight}>{_esc(text)}</text>"
            )
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
                draw.line([a, b], fill=stroke, width=max(1, round(width * s)))
        elif kind == "polyline":
            _, points, stroke, width = item
            draw.line(
                [(x * s, y * s) for x, y in points],
                fill=stroke,
                width=max(1, round(width * s)),
                joint="curve",
            )
        elif kind == "circle":
            _, x, y, r, fill = item
            draw.ellipse([(x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s], fill=fill)
        elif kind == "text":
            _, x, y, text, size, anchor, fill, bold = item
            where = {"start": "ls", "middle": "ms", "end": "rs"}[anchor]
            draw.text(
                (x * s, y * s),
                text,
                font=font(size),
                fill=fill,
                anchor=where,
                stroke_width=1 if bold else 0,
                stroke_fill=fill,
            )
    import io

    from gpurouter.job import fsutil

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
        rows.append(
            f"<tr><td>{_esc(name)}</td><td>{row['gpu']}</td><td>{row['cpu']}</td><td>{row['busy']}</td>"
            f"<td>{row['busy_rate'] * 100:.1f}%</td><td>{_fmt(row['wait_p50_s'], 's')}</td>"
            f"<td>{_fmt(row['wait_p95_s'], 's')}</td><td>{row['escapes']}</td><td>{row['oom']}</td>"
            f"<td>{_fmt(peak['max'], ' MiB', 0)}</td></tr>"
        )
    advice = "".join(f"<li>{_esc(line)}</li>" for line in summary["advice"])
    figures = "\n".join(f'<figure id="{chart.key}">{svg(chart)}</figure>' for chart in made)
    files = ", ".join(_esc(path) for path in summary.get("files") or []) or "none"
    span = f"{_esc(summary['first'] or '-')} .. {_esc(summary['last'] or '-')}"
    stamp = _esc(time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(generated)))
    meta = (
        f"journal: {files}<br>records: {summary['records']} ({span}), "
        f"since: {_esc(since or 'start')}; generated {stamp}"
    )
    head = (
        "<tr><th>profile</th><th>GPU</th><th>CPU</th><th>busy</th><th>busy %</th><th>wait p50</th>"
        "<th>wait p95</th><th>escaped</th><th>OOM</th><th>peak VRAM</th></tr>"
    )
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
<p class="meta">{meta}</p>
<h2>Jobs by profile</h2>
<table>
{head}
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
