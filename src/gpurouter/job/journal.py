"""Append and read the JSON Lines journal.

Each record is one `os.write` on an `O_APPEND` descriptor, so lines from concurrent
processes never interleave. A journal that cannot be written warns and never stops a job.
The encoder is a few lines over the C string escaper: `import json` pulls in `re` (~5 ms).
"""

from __future__ import annotations

import os
import sys
import time

from gpurouter.job import fsutil

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

SCHEMA_VERSION = 1

try:
    from _json import encode_basestring_ascii as _quote
except ImportError:  # pragma: no cover - every CPython has _json
    from json.encoder import py_encode_basestring_ascii as _quote


def encode(value: Any) -> str:
    """Compact JSON for str, int, float, bool, None, lists, tuples and dicts."""
    if isinstance(value, str):
        return str(_quote(value))
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value) if value == value and value not in (float("inf"), float("-inf")) else "null"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_quote(str(k))}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return str(_quote(str(value)))


def timestamp(now: float | None = None) -> str:
    """ISO 8601 local time with milliseconds and zone offset, e.g. 2026-11-23T21:50:34.123+01:00."""
    now = time.time() if now is None else now
    local = time.localtime(now)
    offset = local.tm_gmtoff or 0
    sign = "+" if offset >= 0 else "-"
    hours, minutes = divmod(abs(offset) // 60, 60)
    millis = int((now % 1) * 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', local)}.{millis:03d}{sign}{hours:02d}:{minutes:02d}"


def append_record(path: str | None, event: str, **fields: Any) -> bool:
    """Append one event record; returns False (after a one-line warning) if it could not be written."""
    if not path:
        return False
    record = {"v": SCHEMA_VERSION, "ts": timestamp(), "event": event}
    record.update(fields)
    line = (encode(record) + "\n").encode("utf-8", "surrogateescape")
    try:
        fd = _open_for_append(path)
    except OSError as error:
        _warn(f"journal {path} not written: {error.strerror or error}")
        return False
    try:
        written = os.write(fd, line)
        if written != len(line):
            # Why: on a full disk the write stops mid-record; left there, the torn line would
            # swallow the next record (appended to it once space is back) and every reader
            # would lose both. (Checking the last byte before each write instead is racy:
            # it sees other writers' records half-copied and adds blank lines.)
            _cut_back(fd, written)
            _warn(f"journal {path}: short write ({written} of {len(line)} bytes: {_why_short(fd, path)})")
            return False
    except OSError as error:
        _warn(f"journal {path} not written: {error.strerror or error}")
        return False
    finally:
        os.close(fd)
    return True


def _open_for_append(path: str) -> int:
    try:
        return fsutil.open_shared_file(path, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        # The journal's directory (by default the lock dir) may not exist yet before the first
        # slot is taken: create it shared (1777) like the lock dir, then try once more.
        os.close(fsutil.open_shared_dir(os.path.dirname(os.path.abspath(path))))
        return fsutil.open_shared_file(path, os.O_WRONLY | os.O_APPEND)


def _why_short(fd: int, path: str) -> str:
    """Why a write stopped early, in words (issue 12: "disk full?" was said when `ulimit -f` was the cause).

    A short write reports no errno; the next write would (EFBIG, ENOSPC) but would also add to
    the file, so the two usual causes are checked instead.
    """
    import resource  # a C module, loaded only on this rare path

    try:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and os.fstat(fd).st_size >= limit - 4096:
            return f"File too large: the file size limit (ulimit -f) is {limit} bytes"
        if os.fstatvfs(fd).f_bavail == 0:
            return "No space left on device"
    except OSError:
        pass
    return "the file system took only part of it"


def _cut_back(fd: int, written: int) -> None:
    """Remove the fragment a short write left at the end, unless another record followed it."""
    try:
        end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: where our partial write ended
        if written > 0 and os.fstat(fd).st_size == end:
            os.ftruncate(fd, end - written)
    except OSError:
        pass  # best effort: readers skip a torn line


def read_records(
    path: str, tail_bytes: int | None = None, skipped: dict[str, int] | None = None
) -> Iterator[dict[str, Any]]:
    """Every well-formed record of a journal, oldest first; torn, foreign and malformed lines
    (`journal_reader.malformed`: the journal is world-writable) are skipped.

    Args:
        path: the journal.
        tail_bytes: read only about this many bytes from the end (for a quick recent view).
        skipped: if given, `skipped["malformed"]` is raised by one for each line skipped.
    """
    import json

    from gpurouter.job.journal_reader import malformed

    counts = {} if skipped is None else skipped
    counts.setdefault("malformed", 0)
    try:
        fd = fsutil.open_regular_for_reading(path)
    except OSError:
        return
    with open(fd, "rb") as stream:
        if tail_bytes is not None:
            size = os.fstat(fd).st_size
            if size > tail_bytes:
                stream.seek(size - tail_bytes)
                stream.readline()  # skip the partial first line
        for line in stream:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                counts["malformed"] += 1
                continue
            if isinstance(record, dict) and malformed(record) is None:
                yield record
            else:
                counts["malformed"] += 1


def _warn(message: str) -> None:
    if sys.stderr is None:  # started with fd 2 closed (issue 12)
        return
    try:
        sys.stderr.write(f"gpurouter: warning: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
