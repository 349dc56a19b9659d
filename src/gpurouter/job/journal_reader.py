"""The journal reader every tool and the fit share: one validation of what another user may have
written (the journal is world-writable: issue 12), and a streaming scanner of the journal and its
rotated files.

The journal (and its rotated files: `journal.jsonl.1`, `.2.gz`, `-20261123`...) is streamed,
never loaded whole. Decoding every line as JSON costs ~6-9 µs a line: 5.5-8.7 s for a
million lines here. Most lines are `start` / `busy` / `end` records of our own compact
encoder (`journal.encode`); for those the event, profile and route come from a cached *head*
(see `Scanner`) and the few other fields counted (pool, wait, duration, peak VRAM) are cut
from the bytes by the tools (observe/stats.py): ~3.2-3.4 s for a million lines
(`benchmarks/stats_bench.py`). That is safe because in compact JSON an unescaped `,"pool":"` can
only be a key (a quote inside a string is always escaped).

It lives in the per-job layer because `threshold = "auto"` (gpu/fit.py) reads the journal when its
memo is stale; `json` is imported inside the scanner, never at module level.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from typing import Any, BinaryIO, Final

    from gpurouter.job.settings import Settings

# `--since` bisects the journal for its start and lands this far earlier (clock jitter, slow writers).
SEEK_MARGIN_S: Final = 3600.0

_OURS: Final = b'{"v":1,"ts":"'  # how every line of journal.encode starts (compact, keys in this order)
_EVENT_KEY: Final = b'"event":"'
_METRIC_KEY: Final = b',"metric":'

# --------------------------------------------------------------------------- validating

# The journal is shared and world-writable (issue 12, item 7): one forged line crashed `status`
# and `top`, and an `end` with metric 1e20 hung `report`. So every reader takes a record only
# through `malformed` (or, on the byte-level fast paths, `in_bounds` for each number it cuts
# out), and counts what it skipped. The bounds are physical, far beyond anything real.
MAX_METRIC: Final = 1e15  # seconds, bytes or pixels: 31 million years, a PB, a 1e15-pixel frame
MAX_SECONDS: Final = 1e9  # a wait or a run of 31 years
MAX_MIB: Final = float(1 << 30)  # an EiB of VRAM
_BOUNDED: Final = {
    "metric": MAX_METRIC,
    "waited_s": MAX_SECONDS,
    "duration_s": MAX_SECONDS,
    "elapsed_s": MAX_SECONDS,
    "window_in_s": MAX_SECONDS,
    "peak_vram_mib": MAX_MIB,
    "vram_mib": MAX_MIB,
}
_TEXTS: Final = (
    "ts",
    "profile",
    "route",
    "pool",
    "reason",
    "kind",
    "via",
    "input",
    "slot",
    "priority",
    "pattern",
    "victim",
    "wait",
    "run_id",
)
_INTEGERS: Final = {
    "pid": (1, 1 << 22),
    "job_pid": (1, 1 << 22),
    "uid": (0, (1 << 32) - 1),
    "exit_status": (-(1 << 31), (1 << 31) - 1),
    "signal": (0, 1 << 10),
}


def in_bounds(field: str, value: object) -> bool:
    """Is `value` absent (None) or a finite number within the field's bounds (`_BOUNDED`)?"""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return 0 <= value <= _BOUNDED[field]  # NaN fails both comparisons, infinity the second


def malformed(record: Mapping[str, Any]) -> str | None:
    """The first field of a decoded record that no gpurouter writes so (wrong type, out of range,
    not finite), or None when every field a reader uses is sound. Unknown fields are fine."""
    if not isinstance(record.get("event"), str):
        return "event"
    for field in _TEXTS:
        value = record.get(field)
        if value is not None and not isinstance(value, str):
            return field
    for field in _BOUNDED:
        if not in_bounds(field, record.get(field)):
            return field
    for field, (low, high) in _INTEGERS.items():
        value = record.get(field)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
        ):
            return field
    argv, gpus, devices = record.get("argv"), record.get("gpus"), record.get("devices")
    if argv is not None and not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        return "argv"
    if gpus is not None and not (
        isinstance(gpus, list)
        and all(isinstance(g, int) and not isinstance(g, bool) and 0 <= g < 1 << 16 for g in gpus)
    ):
        return "gpus"
    if devices is not None and not isinstance(devices, dict):
        return "devices"
    return None


def skipped_text(count: int, what: str = "malformed journal record") -> str:
    """'skipped 3 malformed journal records' (for a one-line warning)."""
    return f"skipped {count} {what}{'' if count == 1 else 's'}"


# --------------------------------------------------------------------------- reading


def journal_files(path: str) -> list[str]:
    """The journal and its rotated files, oldest first (by mtime); the live journal last.

    Rotated names are logrotate's: `NAME.1`, `NAME.2.gz`, `NAME-20261123`, `NAME-20261123.gz`.
    """
    directory, base = os.path.split(os.path.abspath(path))
    rotated: list[tuple[float, str]] = []
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    for name in names:
        if name == base or not name.startswith(base):
            continue
        rest = name[len(base) :]
        core = rest[:-3] if rest.endswith(".gz") else rest
        if len(core) >= 2 and core[0] in ".-" and core[1:].isascii() and core[1:].isdigit():
            full = os.path.join(directory, name)
            try:
                rotated.append((os.stat(full, follow_symlinks=False).st_mtime, full))
            except OSError:
                continue
    return [full for _, full in sorted(rotated)] + [path]


def _open(path: str) -> tuple[BinaryIO, BinaryIO] | None:
    """(line stream, the file under it) for a journal file, gunzipped when it ends in .gz;
    None if it cannot be read. Close both (GzipFile leaves its file object open)."""
    from gpurouter.job import fsutil

    try:
        fd = fsutil.open_regular_for_reading(path)  # never follows a symlink planted in a shared dir
    except OSError:
        return None
    raw = open(fd, "rb", buffering=1 << 20)  # noqa: SIM115  # returned open: the caller closes it
    if path.endswith(".gz"):
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
    return raw, raw


class Scanner:
    """Stream records from journal files, filtered by event, profile and time.

    Every record our encoder writes begins `{"v":1,"ts":"...","event":"E","profile":"P",
    "route":"R","metric":` (runner, aio, slurm and monitor all build their records in that
    order). The bytes from the event to `,"metric":` are the line's *head*; there are only a
    few distinct heads in a journal, so each is decoded once (as real JSON, escapes and all)
    and cached. Filters on event and profile then cost a slice and a dict look-up per line.

    Args:
        events: keep only these events (None: all).
        profile: keep only this profile.
        since_epoch: keep only records at or after this time (seconds since the epoch).
    """

    def __init__(
        self,
        events: Iterable[str] | None = None,
        profile: str | None = None,
        since_epoch: float | None = None,
    ) -> None:
        import json

        self.events = None if events is None else frozenset(events)
        self.profile = profile
        self.since_epoch = since_epoch
        self._heads: dict[bytes, tuple[str, str | None, str | None] | None] = {}
        self._minutes: dict[str, float] = {}
        self._loads = json.loads
        self._decode = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # no json.loads overhead (~3 µs)
        self.lines = 0  # lines read
        self.decoded = 0  # lines decoded as JSON
        self.malformed = 0  # lines skipped: not JSON, not a record, or a record `malformed` rejects
        self.files: list[str] = []

    def lines_of(self, paths: Iterable[str]) -> Iterator[bytes]:
        """Every line of the files, oldest file first; skips rotated files older than the cutoff."""
        for path in paths:
            if self.since_epoch is not None:
                try:  # a rotated file last written before the cutoff holds nothing newer
                    if os.stat(path).st_mtime < self.since_epoch:
                        continue
                except OSError:
                    continue
            opened = _open(path)
            if opened is None:
                continue
            stream, raw = opened
            self.files.append(path)
            with raw, stream:
                try:
                    if self.since_epoch is not None and not path.endswith(".gz"):
                        self._seek_near(stream, self.since_epoch - SEEK_MARGIN_S)
                    for line in stream:
                        self.lines += 1
                        yield line
                except (OSError, EOFError):  # a truncated .gz: what was read still counts
                    continue

    def _seek_near(self, stream: BinaryIO, cutoff: float) -> None:
        """Bisect a plain journal for the first line at or after `cutoff` and seek there.

        Records are appended in time order but for a few milliseconds of jitter between
        writers (a timestamp is taken just before the write), so the bisection lands safely
        `SEEK_MARGIN_S` before the cutoff and the lines after it are still checked one by one.
        """
        size = os.fstat(stream.fileno()).st_size
        low, high = 0, size
        while high - low > 1 << 16:
            middle = (low + high) // 2
            stream.seek(middle)
            stream.readline()  # the rest of a line cut in the middle
            epoch = None
            for _ in range(8):  # a torn or foreign line: try the next few
                line = stream.readline()
                if not line:
                    break
                epoch = self.epoch(_ts_of(line))
                if epoch is not None:
                    break
            if epoch is None or epoch >= cutoff:
                high = middle
            else:
                low = middle
        stream.seek(low)
        if low:
            stream.readline()

    def loads_string(self, raw: bytes) -> str:
        """The text of a JSON string from its raw bytes between the quotes."""
        if b"\\" not in raw:
            return raw.decode("utf-8", "surrogateescape")
        try:
            return str(self._loads(b'"' + raw + b'"'))
        except ValueError:  # cut at an escaped quote by the fast path (a forged or odd line): as it is
            return raw.decode("utf-8", "surrogateescape")

    def head(self, line: bytes) -> tuple[str, str | None, str | None] | None:
        """(event, profile, route) of a line of ours from its cached head, or None (decode it)."""
        if not line.startswith(_OURS):
            return None
        at = line.find(_EVENT_KEY, 13, 64)
        stop = line.find(_METRIC_KEY, at, at + 400) if at > 0 else -1
        if stop < 0:
            return None
        raw = line[at + 9 : stop]
        try:
            return self._heads[raw]
        except KeyError:
            return self.parse_head(raw)

    def parse_head(self, raw: bytes) -> tuple[str, str | None, str | None] | None:
        """Decode (and cache) a head: the bytes between `"event":"` and `,"metric":`."""
        parsed: tuple[str, str | None, str | None] | None = None
        try:
            fields = self._loads(b'{"event":"' + raw + b"}")
            if (
                isinstance(fields, dict)
                and isinstance(fields.get("event"), str)
                and set(fields) <= {"event", "profile", "route"}
            ):
                profile, route = fields.get("profile"), fields.get("route")
                parsed = (
                    fields["event"],
                    profile if isinstance(profile, str) else None,
                    route if isinstance(route, str) else None,
                )
        except ValueError:
            pass
        if len(self._heads) < 100_000:  # a journal of random heads must not grow this without bound
            self._heads[raw] = parsed
        return parsed

    def wanted(self, head: tuple[str, str | None, str | None]) -> bool:
        """Does a record with this head pass the event and profile filters?"""
        return (self.events is None or head[0] in self.events) and (
            self.profile is None or head[1] == self.profile
        )

    def recent(self, line: bytes) -> bool:
        """Is a line of ours at or after the cutoff (always, without one)?"""
        if self.since_epoch is None:
            return True
        epoch = self.epoch(line[13 : line.find(b'"', 13)].decode("ascii", "replace"))
        return epoch is not None and epoch >= self.since_epoch

    def records(self, paths: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Every record that passes the filters, decoded; torn and foreign lines are skipped."""
        for line in self.lines_of(paths):
            head = self.head(line)
            if head is not None and (not self.wanted(head) or not self.recent(line)):
                continue
            record = self.decode(line)
            if record is not None:
                yield record

    def decode(self, line: bytes) -> dict[str, Any] | None:
        """One line as a record, if it is one and passes the filters."""
        text = line.decode("utf-8", "surrogateescape").strip()
        if not text:
            return None
        if not text.startswith("{"):
            self.malformed += 1
            return None
        try:
            record, end = self._decode(text, 0)
        except (ValueError, StopIteration, RecursionError):
            self.malformed += 1  # torn or foreign line
            return None
        if end != len(text) or not isinstance(record, dict) or not isinstance(record.get("event"), str):
            self.malformed += 1
            return None
        if self.events is not None and record["event"] not in self.events:
            return None
        if self.profile is not None and record.get("profile") != self.profile:
            return None
        if self.since_epoch is not None:
            epoch = self.epoch(record.get("ts"))
            if epoch is None or epoch < self.since_epoch:
                return None
        if malformed(record) is not None:
            self.malformed += 1
            return None
        self.decoded += 1
        return record

    def checked(self, record: dict[str, Any] | None) -> dict[str, Any] | None:
        """A record cut from the bytes (the fast path), if `malformed` finds nothing wrong with it."""
        if record is not None and malformed(record) is not None:
            self.malformed += 1
            return None
        return record

    def epoch(self, ts: object) -> float | None:
        """Seconds since the epoch of an ISO 8601 time with zone; cached per minute for our format."""
        if not isinstance(ts, str):
            return None
        if len(ts) == 29 and ts[19] == ".":  # 2026-11-23T21:50:34.123+01:00 (journal.timestamp)
            key = ts[:16] + ts[23:]
            minute = self._minutes.get(key)
            if minute is None:
                minute = _parse_epoch(ts[:16] + ":00" + ts[23:])
                if minute is None:
                    return None
                self._minutes[key] = minute
            try:
                return minute + float(ts[17:23])
            except ValueError:
                return None
        return _parse_epoch(ts)


def _ts_of(line: bytes) -> str | None:
    """The `ts` of a line, cheaply for ours, else by decoding it."""
    if line.startswith(_OURS):
        return line[13 : line.find(b'"', 13)].decode("ascii", "replace")
    import json

    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("ts") if isinstance(record, dict) else None


def _parse_epoch(ts: str) -> float | None:
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if moment.tzinfo is None:  # no zone: local time, as the journal would have written it
        return time.mktime(moment.timetuple()) + moment.microsecond / 1e6
    return moment.timestamp()


def epoch_of(ts: object) -> float | None:
    """Seconds since the epoch of a journal timestamp, or None if it does not parse."""
    return _parse_epoch(ts) if isinstance(ts, str) else None


def default_files(settings: Settings, journals: Iterable[str] | None = None) -> list[str]:
    """The files to read: those named, else the configured journal and its rotated files."""
    named = list(journals or ())
    if named:
        return named
    return journal_files(settings.journal) if settings.journal else []
