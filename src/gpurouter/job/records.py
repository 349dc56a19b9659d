"""A minimal frozen record base: `dataclasses` costs ~10 ms to import, too much for the hot path.

To the type checker a record is a frozen, keyword-only dataclass (`dataclass_transform`, imported
only under TYPE_CHECKING, costs nothing at run time): in src a missing or misspelt field, or a
value of the wrong type, is a mypy error. At run time a misspelt field raises TypeError.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, ClassVar, Self, dataclass_transform
else:

    def dataclass_transform(**_: object) -> object:
        return lambda cls: cls


@dataclass_transform(kw_only_default=True, frozen_default=True)
class Record:
    """Frozen, slotted value object; subclasses list their fields in `__slots__` and annotate them."""

    __slots__: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **fields: Any) -> None:
        for name in self.__slots__:  # a missing field is None here (tests build partial snapshots) ...
            object.__setattr__(self, name, fields.pop(name, None))
        if fields:  # ... and a misspelt one an error
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(fields)}")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and type(other) is type(self) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(repr(getattr(self, n)) for n in self.__slots__))

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({inner})"

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (nested records stay records)."""
        return {n: getattr(self, n) for n in self.__slots__}

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed."""
        fields = self.as_dict()
        fields.update(changes)
        return type(self)(**fields)


def to_plain(value: object) -> object:
    """A tree of records as data `marshal` can store: a record becomes (b"record", its class name, its
    fields in order). Bytes never come out of TOML, so no configured value can pass for a record."""
    if isinstance(value, Record):
        return (
            b"record",
            type(value).__name__,
            tuple(to_plain(getattr(value, name)) for name in value.__slots__),
        )
    if isinstance(value, tuple):
        return tuple(to_plain(item) for item in value)
    if isinstance(value, list):
        return [to_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    return value


def from_plain(value: object, classes: Mapping[str, type[Record]]) -> Any:
    """The tree `to_plain` made, with its records rebuilt from `classes` (by name).

    Raises:
        ValueError: a record of an unknown class or with another number of fields (a memo written by
            another version of gpurouter): the caller computes the value afresh.
    """
    if isinstance(value, tuple):
        if len(value) == 3 and value[0] == b"record":
            cls = classes.get(value[1]) if isinstance(value[1], str) else None
            fields = value[2]
            if cls is None or not isinstance(fields, tuple) or len(fields) != len(cls.__slots__):
                raise ValueError(f"not a record of this version: {value[1]!r}")
            return cls(
                **{name: from_plain(item, classes) for name, item in zip(cls.__slots__, fields, strict=True)}
            )
        return tuple(from_plain(item, classes) for item in value)
    if isinstance(value, list):
        return [from_plain(item, classes) for item in value]
    if isinstance(value, dict):
        return {key: from_plain(item, classes) for key, item in value.items()}
    return value
