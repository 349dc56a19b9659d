"""Quantities in the configuration parse, print and parse back to the same value."""

from __future__ import annotations

import pytest

from gpurouter.job import units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("10m", 600),
        ("1h", 3600),
        ("1.5h", 5400),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("2d", 172800),
        ("10 m", 600),
        (" 1H ", 3600),
    ],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert units.parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("500MB", 500e6),
        ("1.5GiB", 1.5 * 2**30),
        ("64 KiB", 65536),
        ("2gb", 2e9),
    ],
)
def test_sizes_parse(text: str, size: float) -> None:
    assert units.parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "h", "1x", "1.2.3s", "-5s", "nan", "inf", "1e999s", "s1", "1e"])
def test_bad_durations_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        units.parse_duration(bad)


def test_pixels_accept_width_by_height() -> None:
    assert units.parse_threshold("1920x1080", "pixels") == 1920 * 1080


def test_a_threshold_unit_must_fit_the_probe() -> None:
    with pytest.raises(ValueError, match="unknown duration unit"):
        units.parse_threshold("500MB", "duration")
    with pytest.raises(ValueError, match="not a plain number"):
        units.parse_threshold("1h", "command")


@pytest.mark.parametrize(
    ("text", "probe"),
    [
        ("1h", "duration"),
        ("90s", "duration"),
        ("2.5s", "duration"),
        ("500MB", "size"),
        ("1GiB", "size"),
        ("3", "command"),
    ],
)
def test_a_printed_threshold_parses_back_to_the_same_value(text: str, probe: str) -> None:
    value = units.parse_threshold(text, probe)
    kind = {"duration": "duration", "size": "size"}.get(probe)
    assert units.parse_threshold(units.format_metric(value, kind), probe) == value


def test_exponent_notation_reads_as_repr_prints_it() -> None:
    assert units.parse_duration("1e-06s") == 1e-06 and units.parse_duration("1e3") == 1000
