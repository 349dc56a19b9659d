"""`gpurouter top`: a live view of the devices, the pools and their slots (holders and
waiters, from the kernel), and the last journal events, refreshed in place.

Plain ANSI and the standard library (termios, select), not rich or textual: the view is a
few tables redrawn every second or two, which needs cursor-home, erase-line and an
alternate screen, not a widget toolkit. Measured here: rich costs ~55 ms to import and ~13
MB with pygments; textual ~260 ms and ~21 MB. This costs nothing and adds no dependency, and
`--once` falls out of the same frame builder as plain text for scripts and tests.

The frame is built from plain data (`snapshot`) by a pure function (`frame`), so tests can
check it without a terminal; `live` only draws frames and reads keys.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Final, TextIO

    from gpurouter.job.settings import Settings

EVENTS_TAIL_BYTES: Final = 256 * 1024  # the last events come from the journal's tail only
_RESET: Final = "\x1b[0m"
_BOLD: Final = "\x1b[1m"
_DIM: Final = "\x1b[2m"
_GREEN, _YELLOW, _RED, _CYAN = "\x1b[32m", "\x1b[33m", "\x1b[31m", "\x1b[36m"


def snapshot(
    settings: Settings, events: int = 12, environ: Mapping[str, str] | None = None, now: float | None = None
) -> dict[str, Any]:
    """Everything one frame shows, as plain data: devices, slots, the last journal events."""
    from gpurouter.job import journal
    from gpurouter.observe import status
    from gpurouter.observe.gpus_view import view as gpu_view

    view = gpu_view(settings, environ)
    skipped = {"malformed": 0}
    rows = status.slot_rows(settings, skipped)
    last: list[dict[str, Any]] = []
    if settings.journal and events > 0:
        skipped["malformed"] = 0  # the events below read the same tail: count its bad lines once
        for record in journal.read_records(settings.journal, tail_bytes=EVENTS_TAIL_BYTES, skipped=skipped):
            last.append(record)
            if len(last) > events:
                del last[0]
    return {
        "now": time.time() if now is None else now,
        "journal": settings.journal,
        "gpu_source": view["source"],
        "gpu_message": view["message"],
        "devices": view["devices"],
        "residents": view["residents"],
        "slots": [row.as_dict() for row in rows],
        "events": last,
        "malformed": skipped["malformed"],
    }


class _Style:
    """ANSI styling, or none at all."""

    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, *codes: str) -> str:
        return f"{''.join(codes)}{text}{_RESET}" if self.color and codes else text

    def bar(self, fraction: float | None, width: int) -> str:
        if fraction is None:
            return "[" + "?" * width + "]"
        fraction = min(1.0, max(0.0, fraction))
        full = round(fraction * width)
        if not self.color:
            return "[" + "#" * full + "." * (width - full) + "]"
        tint = _GREEN if fraction < 0.6 else _YELLOW if fraction < 0.85 else _RED
        return f"[{tint}{'|' * full}{_RESET}{_DIM}{'.' * (width - full)}{_RESET}]"


def frame(
    data: Mapping[str, Any],
    width: int = 100,
    height: int | None = None,
    color: bool = False,
    interval_s: float | None = None,
) -> list[str]:
    """The lines of one frame (pure). Lines are cut to `width`; events fill what `height` leaves."""
    from gpurouter.job.journal_reader import skipped_text

    style = _Style(color)
    now = data["now"]
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    title = f"gpurouter top  {clock}"
    if interval_s is not None:
        title += f"  every {interval_s:g}s  q quits"
    lines = [style(title, _BOLD), ""]
    lines.append(style(f"DEVICES ({data['gpu_source']})", _BOLD))
    if not data["devices"]:
        lines.append(f"  no GPU{': ' + data['gpu_message'] if data['gpu_message'] else ''}")
    bar_width = max(10, min(30, width - 80))
    for device in data["devices"]:
        total, used = device["memory_total_mib"], device["memory_used_mib"]
        share = used / total if total and used is not None else None
        util = device["utilization_percent"]
        lines.append(
            f"  [{device['index']}] {(device['name'] or '?')[:20]:<20} mem {style.bar(share, bar_width)} "
            f"{_q(used):>6}/{_q(total):<6} MiB  free {_q(device['memory_free_mib']):>6}  "
            f"util {style.bar(None if util is None else util / 100, 10)} {_q(util):>3}%  "
            f"{_q(device['temperature_c'])}C  {_watts(device['power_w'])}"
        )
        if device.get("promised_mib"):
            lines.append(f"      promised to starting jobs: {device['promised_mib']} MiB")
    for resident in data.get("residents") or []:
        state = "loaded" if resident["loaded"] else "unloaded"
        lines.append(f"  resident {resident['name']}: {resident['vram_mib']} MiB, {state}")
    lines.append("")
    lines.extend(_pool_lines(data["slots"], now, style))
    lines.append("")
    lines.append(
        style("LAST EVENTS", _BOLD)
        + (f"  ({data['journal']})" if data["journal"] else "  (no journal)")
        + (f"  {skipped_text(data['malformed'])}" if data.get("malformed") else "")
    )
    events = [_event_line(record) for record in data["events"]]
    if height is not None:
        room = max(0, height - len(lines))
        events = events[-room:] if room else []
    lines.extend(events or ["  none"])
    return [_cut(line, width, color) for line in lines]


def _pool_lines(slots: list[dict[str, Any]], now: float, style: _Style) -> list[str]:
    pools: dict[str, list[dict[str, Any]]] = {}
    for row in slots:
        pools.setdefault(row["pool"], []).append(row)
    lines = [style("POOLS", _BOLD)]
    if not pools:
        lines.append("  no slot configured")
    for pool, rows in pools.items():
        real = [row for row in rows if row["index"] >= 0]
        held = sum(1 for row in real if row["holder"] is not None)
        waiting = sum(len(row["waiters"]) for row in rows)
        tint = _RED if held == len(real) and real else _GREEN
        lines.append(f"  {style(pool, _CYAN)}  {style(f'{held}/{len(real)} held', tint)}  {waiting} waiting")
        for row in rows:
            name = f"{pool}.{row['index']}" if row["index"] >= 0 else f"{pool} gate"
            if row["index"] < 0:
                for job in (row["holder"] or {}).get("realtime", []):
                    lines.append(f"    {name:<10} {'rt':<5} {_job(job, now)}")
            elif row["holder"] is None:
                lines.append(f"    {name:<10} {style('free', _DIM)}")
            else:
                lines.append(f"    {name:<10} {style('held ', _YELLOW)} {_job(row['holder'], now)}")
            for job in row["waiters"]:
                lines.append(f"    {'':<10} {'wait':<5} {_job(job, now)}")
    return lines


def _job(job: Mapping[str, Any], now: float) -> str:
    from gpurouter.job.journal_reader import epoch_of

    started = epoch_of(job.get("ts"))
    age = "" if started is None else f"for {_age(now - started)}"
    command = " ".join(job.get("command") or [])
    return (
        f"pid {job['pid']:<7} {job.get('user', '?')!s:<10} {job.get('profile') or '?'!s:<18} "
        f"{job.get('route') or ''!s:<4} {age:<10} {command}"
    )


def _event_line(record: Mapping[str, Any]) -> str:
    ts = str(record.get("ts") or "")
    clock = ts[11:19] if len(ts) >= 19 else ts
    event = str(record.get("event"))
    detail = []
    for key in (
        "slot",
        "pool",
        "waited_s",
        "exit_status",
        "duration_s",
        "peak_vram_mib",
        "victim",
        "pattern",
    ):
        value = record.get(key)
        if value is not None and not (key == "pool" and record.get("slot")):
            detail.append(f"{key}={value}")
    reason = record.get("reason")
    if reason and event in ("start", "busy", "refused"):
        detail.append(str(reason))
    return (
        f"  {clock:<8}  {event:<8} {record.get('profile') or '-'!s:<18} {record.get('route') or '-'!s:<4}"
        f"  {'  '.join(detail)}"
    )


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _q(value: object) -> str:
    return "?" if value is None else str(value)


def _watts(value: float | None) -> str:
    return "?W" if value is None else f"{value:.0f}W"


def _cut(line: str, width: int, color: bool) -> str:
    """Cut a line to `width` visible characters (escape codes are not counted)."""
    if not color:
        return line[:width]
    shown, out, index = 0, [], 0
    while index < len(line):
        if line[index] == "\x1b":
            end = line.find("m", index)
            if end < 0:
                break
            out.append(line[index : end + 1])
            index = end + 1
            continue
        if shown < width:
            out.append(line[index])
            shown += 1
        index += 1
    return "".join(out) + (_RESET if "\x1b" in line else "")


def once(settings: Settings, stream: TextIO, environ: Mapping[str, str] | None = None) -> None:
    """Print one frame: plain text unless `stream` is a terminal (and NO_COLOR is unset)."""
    color = _wants_color(stream)
    width = os.get_terminal_size(stream.fileno()).columns if color else 200
    stream.write("\n".join(frame(snapshot(settings, environ=environ), width=width, color=color)) + "\n")
    stream.flush()


def _wants_color(stream: TextIO) -> bool:
    try:
        return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def live(
    settings: Settings,
    interval_s: float,
    stdin: TextIO,
    stdout: TextIO,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Redraw a frame every `interval_s` on the alternate screen until q, Q, Ctrl-C or end of input.

    Returns:
        0 (a clean quit); the terminal is restored whatever happens.
    """
    import select
    import signal
    import termios
    import tty

    in_fd, out_fd = stdin.fileno(), stdout.fileno()
    keys = os.isatty(in_fd)
    saved = termios.tcgetattr(in_fd) if keys else None
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    old_wakeup = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    old_winch = signal.signal(signal.SIGWINCH, lambda *_: None)  # a resize wakes the select: redraw at once
    write = stdout.write
    try:
        if keys:
            tty.setcbreak(in_fd)  # keys one at a time, no echo; Ctrl-C still raises KeyboardInterrupt
        write("\x1b[?1049h\x1b[?25l")  # alternate screen, hide the cursor
        while True:
            size = os.get_terminal_size(out_fd)
            data = snapshot(settings, events=max(0, size.lines - 8), environ=environ)
            lines = frame(
                data,
                width=size.columns,
                height=size.lines - 1,
                color=_wants_color(stdout),
                interval_s=interval_s,
            )
            write("\x1b[H" + "\x1b[K\n".join(lines) + "\x1b[K\x1b[J")
            stdout.flush()
            deadline = time.monotonic() + interval_s
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([in_fd, wake_read] if keys else [wake_read], [], [], left)
                if wake_read in ready:
                    os.read(wake_read, 512)
                    break  # a signal (a resize): redraw now
                if in_fd in ready:
                    key = os.read(in_fd, 32)
                    if not key or key[:1] in (b"q", b"Q", b"\x04"):
                        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        write("\x1b[?25h\x1b[?1049l")  # cursor back, main screen back
        stdout.flush()
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old_winch)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_read)
        os.close(wake_write)
