"""`json.loads` without `import json`: that import pulls in `re` and `enum` (~7 ms), and the
device file is read on the per-job path of GPU-aware routes. The C scanner behind the json
package needs only a context object."""

from __future__ import annotations

import math

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar


class _Context:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: ClassVar[dict[str, str]] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[name]


def loads(text: str) -> Any:
    """Parse one JSON document.

    Raises:
        ValueError: not exactly one JSON document.
        RecursionError: nested deeper than the interpreter's recursion limit.
    """
    try:
        from _json import make_scanner
    except ImportError:  # pragma: no cover - every CPython has _json
        import json

        return json.loads(text)
    scan = make_scanner(_Context())  # type: ignore[arg-type]  # duck-typed context, as json.decoder passes
    start = len(text) - len(text.lstrip())
    try:
        value, end = scan(text, start)
    except (StopIteration, SystemError, ValueError) as error:
        # The C scanner reports errors by importing json.decoder's JSONDecodeError (fine: a bad
        # file is not the hot path), and on a few truncated inputs ends with a bare SystemError.
        raise ValueError(
            str(error).splitlines()[0] if isinstance(error, ValueError) else "not valid JSON"
        ) from None
    if text[end:].strip():
        raise ValueError(f"extra data after the JSON document at character {end}")
    return value
