"""Parse and print the quantities of the configuration: durations, sizes, pixels, thresholds.

Hand-written rather than regex-based: `re` costs ~5 ms to import and this runs per job.
Every parser is the inverse of its printer: `parse(format(parse(s))) == parse(s)`.
"""

from __future__ import annotations

import math

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_NUMBER_CHARS = frozenset("0123456789.+-")  # plus an exponent, see _split_number

# The kinds a threshold can be, matching the probes that yield them.
KINDS = ("duration", "size", "pixels", "number")


def _split_number(text: str) -> tuple[float, str]:
    """Split '1.5h30m' into (1.5, 'h30m'); raise ValueError if no number leads."""
    end = 0
    while end < len(text) and text[end] in _NUMBER_CHARS:
        end += 1
    # an exponent ('1e-06', as repr() prints small floats): 'e' then an optional sign and a digit
    if end < len(text) and text[end] in "eE":
        mark = end + 1 + (end + 1 < len(text) and text[end + 1] in "+-")
        if mark < len(text) and text[mark].isdigit():
            end = mark
            while end < len(text) and text[end].isdigit():
                end += 1
    try:
        number = float(text[:end])
    except ValueError:
        raise ValueError(f"{text!r} does not start with a number") from None
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number, text[end:]


def parse_number(text: str) -> float:
    """A finite number >= 0."""
    number, rest = _split_number(text.strip())
    if rest.strip():
        raise ValueError(f"unexpected {rest.strip()!r} after the number")
    if number < 0:
        raise ValueError("must not be negative")
    return number


def parse_duration(text: str) -> float:
    """Seconds from '90', '90s', '10m', '1.5h', '1h30m', '250ms', '2d'."""
    rest = text.strip().lower()
    if not rest:
        raise ValueError("empty duration")
    total = 0.0
    while rest:
        number, rest = _split_number(rest)
        rest = rest.lstrip()  # '10 m' reads as '10m'
        unit_end = 0
        while unit_end < len(rest) and rest[unit_end].isalpha():
            unit_end += 1
        unit, rest = rest[:unit_end], rest[unit_end:].lstrip()
        if unit == "" and rest:
            raise ValueError(f"a unit is missing after {number:g}")
        factor = _DURATION_UNITS.get(unit or "s")
        if factor is None:
            raise ValueError(f"unknown duration unit {unit!r} (use ms, s, m, h or d)")
        if number < 0:
            raise ValueError("must not be negative")
        total += number * factor
    if not math.isfinite(total):
        raise ValueError("too large")
    return total


def parse_size(text: str) -> float:
    """Bytes from '512', '500MB', '1.5GiB', '64 KiB'."""
    number, unit = _split_number(text.strip())
    unit = unit.strip().lower()
    factor = _SIZE_UNITS.get(unit or "b")
    if factor is None:
        raise ValueError(f"unknown size unit {unit!r} (use B, KB, MB, GB, KiB, MiB, GiB)")
    if number < 0:
        raise ValueError("must not be negative")
    return _finite(number * factor)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("too large")
    return value


def parse_pixels(text: str) -> float:
    """Pixels from '1920x1080' (width × height) or a plain number."""
    lowered = text.strip().lower()
    if "x" in lowered:
        width, _, height = lowered.partition("x")
        return _finite(parse_number(width) * parse_number(height))
    return parse_number(lowered)


def parse_threshold(text: str | int | float, probe: str | None) -> float:
    """A threshold in the unit of `probe`'s metric; a bare number is taken as-is.

    Raises:
        ValueError: the text does not parse, or its unit does not fit the probe.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):  # a TOML list or table too
        raise ValueError(f"must be a number or a string like '1h', '500MB' or '1920x1080', got {text!r}")
    if isinstance(text, (int, float)):
        try:
            return parse_number(repr(float(text)))
        except OverflowError:  # a 400-digit TOML integer (issue 12)
            raise ValueError("not a finite number") from None
    stripped = text.strip()
    try:
        return parse_number(stripped)
    except ValueError:
        pass
    parsers = {"duration": parse_duration, "size": parse_size, "pixels": parse_pixels}
    parser = parsers.get(probe or "")
    if parser is None:
        raise ValueError(f"{text!r} is not a plain number (the {probe or 'absent'} probe yields one)")
    try:
        return parser(stripped)
    except ValueError as error:
        raise ValueError(f"{text!r} is not a {probe} threshold: {error}") from None


def format_duration(seconds: float) -> str:
    """'1h', '10m', '90s', '2.5s': the shortest exact form."""
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
        count = seconds / factor
        if seconds >= factor and count.is_integer() and float(int(count)) * factor == seconds:
            return f"{int(count)}{unit}"
    return f"{int(seconds)}s" if float(seconds).is_integer() and abs(seconds) < 2**53 else f"{seconds!r}s"


def format_size(size: float) -> str:
    """'1GiB', '500MB', '123B': the largest unit that divides exactly."""
    for unit, factor in (
        ("TiB", 2**40),
        ("GiB", 2**30),
        ("MiB", 2**20),
        ("KiB", 2**10),
        ("TB", 10**12),
        ("GB", 10**9),
        ("MB", 10**6),
        ("KB", 10**3),
    ):
        count = size / factor
        if size >= factor and count.is_integer() and float(int(count)) * factor == size:
            return f"{int(count)}{unit}"
    return f"{int(size)}B" if float(size).is_integer() and abs(size) < 2**53 else f"{size!r}B"


def format_metric(value: float | None, kind: str | None) -> str:
    """A metric or threshold in its natural unit, for messages and `config` output."""
    if value is None:
        return "none"
    if kind == "duration":
        return format_duration(value)
    if kind == "size":
        return format_size(value)
    return f"{int(value)}" if float(value).is_integer() and abs(value) < 2**53 else repr(value)


def format_human(value: float | None, kind: str | None, beside: float | None = None) -> str:
    """A metric rounded for people ('2.8s', '1h2m5s', '734.2MiB'); the journal keeps the exact value.

    Args:
        value: the metric.
        kind: its kind (duration, size, pixels, number).
        beside: a threshold it is compared with: when the rounded text would read the same as the
            threshold's, the exact form is printed instead ("10s >= threshold 10s" must not hide 9.96s).
    """
    if value is None:
        return "none"
    shown = _rounded(value, kind)
    if beside is not None and math.isfinite(value):
        parse = {"duration": parse_duration, "size": parse_size}.get(kind or "", parse_number)
        try:
            crossed = (parse(shown) < beside) != (value < beside)
        except ValueError:
            crossed = True
        if crossed:  # rounding moved it onto (or over) the threshold: exact, as format_metric prints it
            return format_metric(value, kind)
    return shown


def _rounded(value: float, kind: str | None) -> str:
    if not math.isfinite(value):
        return repr(value)
    if kind == "duration":
        if value < 60:
            return format_duration(value) if float(value).is_integer() else f"{value:.1f}s"
        whole = round(value)
        hours, rest = divmod(whole, 3600)
        minutes, seconds = divmod(rest, 60)
        parts = [f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n]
        return "".join(parts) or "0s"
    if kind == "size":
        for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if value >= factor:
                count = value / factor
                return f"{int(count)}{unit}" if count.is_integer() else f"{count:.1f}{unit}"
        return f"{int(value)}B" if float(value).is_integer() else f"{value:.1f}B"
    if float(value).is_integer() and abs(value) < 2**53:
        return f"{int(value)}"
    return f"{value:.4g}"


def format_coarse(value: float | None, kind: str | None) -> str:
    """A metric rounded to two or three figures for the tools' tables, advice and chart ticks: 1h53m,
    5m14s, 12.5s; 1.5GiB, 700MiB; 2.1MP; else the number. Coarser than `format_human` (decision
    reasons), which keeps every unit of a duration so a reason never hides which side it fell on."""
    if value is None:
        return "none"
    if kind == "duration":
        if value < 60:
            return f"{value:.1f}s".replace(".0s", "s")
        minutes, seconds = divmod(int(value), 60)
        if value < 3600:
            return f"{minutes}m" if not seconds else f"{minutes}m{seconds:02d}s"
        hours, minutes = divmod(minutes, 60)
        return f"{hours}h" if not minutes else f"{hours}h{minutes:02d}m"
    if kind == "size":
        for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if value >= factor:
                return f"{value / factor:.3g}{unit}"
        return f"{value:.0f}B"
    if kind == "pixels":
        return f"{value / 1e6:.3g}MP"
    return f"{value:.4g}"


# ---------------------------------------------------------------- the profile's other forms


def parse_ionice(text: object) -> tuple[int, int]:
    """(class, level) from "idle", "best-effort:N" or "realtime:N" (ioprio classes 3, 2, 1).

    Raises:
        ValueError: anything else.
    """
    if text == "idle":
        return 3, 0
    if isinstance(text, str):
        name, _, level = text.partition(":")
        classes = {"best-effort": 2, "realtime": 1}
        if name in classes and level.isascii() and level.isdigit() and 0 <= int(level) <= 7:
            return classes[name], int(level)
    raise ValueError(f'must be "idle", "best-effort:N" or "realtime:N" with N 0-7, got {text!r}')


def parse_cpus(text: object) -> set[int]:
    """CPU numbers from "0-3,6".

    Raises:
        ValueError: not a CPU list.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f'must be a CPU list like "0-3,6", got {text!r}')
    cpus: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if not (low.isascii() and low.isdigit()) or (dash and not (high.isascii() and high.isdigit())):
            raise ValueError(f'must be a CPU list like "0-3,6", got {text!r}')
        first, last = int(low), int(high) if dash else int(low)
        if last < first or last > 4095:
            raise ValueError(f"bad CPU range {part.strip()!r}")
        cpus.update(range(first, last + 1))
    return cpus


def parse_hours(text: str) -> tuple[tuple[int, int], ...]:
    """Minute-of-day ranges from "18:00-09:00" or "00:00-08:00,20:00-24:00" (a range may wrap midnight).

    Raises:
        ValueError: not a list of HH:MM-HH:MM ranges.
    """
    ranges = []
    for part in text.split(","):
        start, dash, end = part.strip().partition("-")
        if not dash:
            raise ValueError(f'must be ranges like "18:00-09:00", got {text!r}')
        first, last = _minute_of_day(start), _minute_of_day(end)
        if first == last:
            raise ValueError(f"empty range {part.strip()!r}")
        ranges.append((first, last))
    return tuple(ranges)


def _minute_of_day(text: str) -> int:
    hours, colon, minutes = text.strip().partition(":")
    if not (
        colon and (hours + minutes).isascii() and hours.isdigit() and minutes.isdigit() and len(minutes) == 2
    ):
        raise ValueError(f"{text.strip()!r} is not HH:MM")
    value = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or value > 24 * 60:
        raise ValueError(f"{text.strip()!r} is not a time of day")
    return value


def within_hours(hours: tuple[tuple[int, int], ...], minute_of_day: int) -> bool:
    """Is this minute of the day inside any range (a range may wrap midnight)?"""
    for start, end in hours:
        if start < end and start <= minute_of_day < end:
            return True
        if start > end and (minute_of_day >= start or minute_of_day < end):
            return True
    return False


def is_safe_name(name: str) -> bool:
    """A pool name usable as a file name prefix: letters, digits, '-', '_' (1-64 chars)."""
    return 0 < len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)


def parse_wait(value: object) -> float:
    """`fail` -> 0, `block` -> inf, a duration -> seconds.

    Raises:
        ValueError: anything else.
    """
    if value == "fail":
        return 0.0
    if value == "block":
        return math.inf
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # a bare number is seconds, as for every other duration
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as error:
            raise ValueError(f'must be "fail", "block" or a duration like "10m": {error}') from None
    raise ValueError(f'must be "fail", "block" or a duration like "10m", got {value!r}')


def format_wait(wait_s: float) -> str:
    """The inverse of `parse_wait`."""
    if wait_s == 0:
        return "fail"
    if math.isinf(wait_s):
        return "block"
    return format_duration(wait_s)
