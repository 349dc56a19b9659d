"""The value rules every config table shares: a table, one of a closed set, a bounded integer, a
string, a duration; each error names the file, the key and the problem (exit 78)."""

from __future__ import annotations

from gpurouter.errors import ConfigError
from gpurouter.job import units

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def sub_table(document: Mapping[str, Any], key: str, source: str, where: str = "") -> dict[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(source, f"{where}.{key}" if where else key, "must be a table")
    return value


def choice(table: Mapping[str, Any], key: str, allowed: tuple[Any, ...], where: str, source: str) -> Any:
    value = table[key]
    if value not in allowed:
        names = ", ".join(str(a) for a in allowed if a is not None)
        raise ConfigError(source, f"{where}.{key}", f"must be one of {names}, got {value!r}")
    return value


def opt_int(table: Mapping[str, Any], key: str, low: int, high: int, where: str, source: str) -> int | None:
    value = table[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(source, f"{where}.{key}", f"must be an integer from {low} to {high}, got {value!r}")
    return value


def int_in(table: Mapping[str, Any], key: str, low: int, high: int, where: str, source: str) -> int:
    value = opt_int(table, key, low, high, where, source)
    if value is None:
        raise ConfigError(source, f"{where}.{key}", f"must be an integer from {low} to {high}")
    return value


def check_keys(table: Mapping[str, Any], allowed: set[str], where: str, source: str) -> None:
    for key in table:
        if key not in allowed:
            dotted = f"{where}.{key}" if where else key
            raise ConfigError(source, dotted, f"unknown key (known here: {', '.join(sorted(allowed))})")


def string(table: Mapping[str, Any], key: str, where: str, source: str) -> str:
    value = table[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(
            source, f"{where}.{key}" if where else key, f"must be a non-empty string, got {value!r}"
        )
    return value


def duration(table: Mapping[str, Any], key: str, where: str, source: str) -> float:
    value = table[key]
    dotted = f"{where}.{key}" if where else key
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(source, dotted, f'must be a duration like "20s", got {value!r}')
    try:
        return units.parse_duration(str(value))
    except ValueError as error:
        raise ConfigError(source, dotted, str(error)) from None
