"""Parse and print the quantities of the configuration: durations, sizes, pixels, thresholds.

Hand-written rather than regex-based: `re` costs ~5 ms to import and this runs per job.
Every parser is the inverse of its printer: `parse(format(parse(s))) == parse(s)`.
"""

from __future__ import annotations

import math

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
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
    if isinstance(text, bool):
        raise ValueError("must be a number or a string like '1h', '500MB' or '1920x1080'")
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
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10),
                         ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):  # fmt: skip
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
