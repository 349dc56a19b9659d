"""Figures from the journal: jobs by profile and route, refusals by pool, waits, run times,
peak VRAM, evictions, escapes, OOM fallbacks, and the runbook's advice in words.

The journal (and its rotated files: `journal.jsonl.1`, `.2.gz`, `-20261123`...) is streamed,
never loaded whole. Decoding every line as JSON costs ~6-9 µs a line: 5.5-8.7 s for a
million lines here. Most lines are `start` / `busy` / `end` records of our own compact
encoder (`journal.encode`); for those the event, profile and route come from a cached *head*
(see `Scanner`) and the few other fields counted (pool, wait, duration, peak VRAM) are cut
from the bytes: ~3.2-3.4 s for a million lines (`benchmarks/stats_bench.py`). That is safe
because in compact JSON an unescaped `,"pool":"` can only be a key (a quote inside a string is
always escaped), and it is done only where the part read holds no nested object (an `end`
record's device figures come last and are not read); every other line (`evict`, `oom`,
other writers' lines, anything with a backslash to unescape) goes through the real decoder.
"""

from __future__ import annotations

import time
from array import array

from gpurouter.job.journal_reader import _EVENT_KEY, _METRIC_KEY, _OURS, Scanner, default_files, in_bounds
from gpurouter.observe import advice

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any, Final

    from gpurouter.job.settings import Settings

_COUNTED: Final = ("start", "busy", "escape", "refused", "oom", "end", "evict", "exec_failed")


# --------------------------------------------------------------------------- figures


class Quantiles:
    """Values of one figure (8 bytes each) for exact percentiles."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values = array("d")

    def add(self, value: object) -> None:
        """Add a number (anything else is ignored)."""
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            self.values.append(float(value))

    def summary(self) -> dict[str, Any]:
        """n, min, median, p95, max, mean (None when empty)."""
        ordered = sorted(self.values)
        n = len(ordered)
        if not n:
            return {"n": 0, "min": None, "p50": None, "p95": None, "max": None, "mean": None, "sum": 0.0}
        total = sum(ordered)
        return {
            "n": n,
            "min": ordered[0],
            "p50": percentile(ordered, 0.5),
            "p95": percentile(ordered, 0.95),
            "max": ordered[-1],
            "mean": round(total / n, 3),
            "sum": round(total, 3),
        }


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class _Profile:
    """Running figures of one profile."""

    __slots__ = (
        "starts",
        "busy",
        "escapes",
        "refused",
        "oom",
        "oom_retries",
        "oom_retries_ok",
        "oom_metrics",
        "oom_kind",
        "busy_pools",
        "waits",
        "durations",
        "peaks",
        "monitored",
        "exec_failed",
    )

    def __init__(self) -> None:
        self.starts = {"gpu": 0, "cpu": 0}
        self.busy: dict[str | None, int] = {"gpu": 0, "cpu": 0, None: 0}
        self.escapes = self.refused = self.oom = self.oom_retries = self.oom_retries_ok = self.monitored = 0
        self.exec_failed = 0  # starts taken back: the exec failed, the job never ran (issue 12)
        self.oom_metrics: list[float] = []
        self.oom_kind: str | None = None
        self.busy_pools: dict[str, int] = {}
        self.waits = Quantiles()
        self.durations = {"gpu": Quantiles(), "cpu": Quantiles()}
        self.peaks = Quantiles()

    def as_row(self) -> dict[str, Any]:
        gpu, cpu = self.starts["gpu"], self.starts["cpu"]
        busy = sum(self.busy.values())
        attempts = gpu + cpu + busy
        waits = self.waits.summary()
        return {
            "gpu": gpu,
            "cpu": cpu,
            "busy": busy,
            "busy_gpu": self.busy["gpu"],
            "busy_cpu": self.busy["cpu"],
            "busy_rate": round(busy / attempts, 4) if attempts else 0.0,
            "busy_by_pool": dict(sorted(self.busy_pools.items())),
            "wait_p50_s": waits["p50"],
            "wait_p95_s": waits["p95"],
            "wait_max_s": waits["max"],
            "refused": self.refused,
            "escapes": self.escapes,
            "exec_failed": self.exec_failed,
            "oom": self.oom,
            "oom_min_metric": min(self.oom_metrics) if self.oom_metrics else None,
            "oom_kind": self.oom_kind,
            "oom_retries": self.oom_retries,
            "oom_retries_ok": self.oom_retries_ok,
            "monitored": self.monitored,
            "duration_s": {route: q.summary() for route, q in self.durations.items()},
            "peak_vram_mib": self.peaks.summary(),
            "waits": waits,
        }


_FLAT: Final = frozenset({"start", "busy", "escape", "refused", "exec_failed"})
_UNSEEN: Final = object()


def _plan(scanner: Scanner, tally: _Tally, raw: bytes) -> Any:
    """What summarise does with lines of this head: None decode, False skip, or a tuple."""
    head = scanner.parse_head(raw)
    if head is None:
        return None
    if head[1] is None or not scanner.wanted(head):
        return False
    if head[0] not in _FLAT and head[0] != "end":
        return None
    return (head[0], head[1], head[2], tally.profile(head[1]).waits.values)


_END_FIELDS: Final = tuple(
    (name, f',"{name}":'.encode())
    for name in ("metric", "duration_s", "elapsed_s", "peak_vram_mib", "exit_status")
)


def _cut_end(line: bytes, event: str, name: str, route: str | None) -> dict[str, Any] | None:
    """The fields stats needs from an `end` record of ours, without decoding its device figures.

    The monitor writes the device figures last (`..."samples":12,"devices":{...}}`): the part
    before `,"devices":{` is then flat, and its keys are the record's own. Anything else
    (another layout, a backslash to unescape) returns None: decode the line.
    """
    cut = line.find(b',"devices":{')
    if cut > 0:
        if not (line.endswith((b"}}}}\n", b',"devices":{}}\n'))):
            return None
        part = line[:cut]
    elif line[-2:] == b"}\n":
        part = line
    else:
        return None
    if part.count(b"{") != 1 or b"\\" in part:
        return None
    record: dict[str, Any] = {
        "event": event,
        "profile": name,
        "route": route,
        "ts": line[13 : line.find(b'"', 13)].decode("ascii", "replace"),
    }
    for field, key in _END_FIELDS:
        at = part.rfind(key)
        if at < 0:
            continue
        at += len(key)
        end = part.find(b",", at)
        token = part[at : end if end > 0 else part.rfind(b"}")]
        if token == b"null":
            record[field] = None
        else:
            try:
                record[field] = float(token) if b"." in token or b"e" in token else int(token)
            except ValueError:
                return None
    if b',"retry_of":"' in part:
        record["retry_of"] = True
    return record


class _Tally:
    """The figures, fed by the byte-level fast path (`flat`) or by decoded records (`add`)."""

    def __init__(self) -> None:
        self.profiles: dict[str, _Profile] = {}
        self.pools: dict[tuple[str, str | None], list[int]] = {}  # (pool, route) -> [starts, busy]
        self.evictions: dict[str, dict[str, int]] = {}
        self.eviction_attempts = {"evicted": 0, "failed": 0, "no_victim": 0, "in_flight": 0}
        self.records = 0
        self.first: str | None = None
        self.last: str | None = None

    def seen(self, ts: object) -> None:
        self.records += 1
        self.span(ts)

    def span(self, ts: object) -> None:
        if isinstance(ts, str):
            if self.first is None or ts < self.first:
                self.first = ts
            if self.last is None or ts > self.last:
                self.last = ts

    def profile(self, name: str) -> _Profile:
        row = self.profiles.get(name)
        if row is None:
            row = self.profiles[name] = _Profile()
        return row

    def flat(
        self,
        event: str,
        name: str,
        route: str | None,
        pool: str | None,
        waited: object,
        retry: bool,
        count: int = 1,
    ) -> None:
        """`count` start, busy, escape or refused records (a start's wait is added once)."""
        row = self.profile(name)
        if event == "start":
            if route == "gpu" or route == "cpu":
                row.starts[route] += count
            row.waits.add(waited)
            if retry:
                row.oom_retries += count
            self._pool(pool, route)[0] += count
        elif event == "busy":
            row.busy[route if route == "gpu" or route == "cpu" else None] += count
            row.busy_pools[pool or "(none)"] = row.busy_pools.get(pool or "(none)", 0) + count
            self._pool(pool, route)[1] += count
        elif event == "escape":
            row.escapes += count
        elif event == "refused":
            row.refused += count
        elif event == "exec_failed":  # follows its own `start` (same pid): that job never ran
            if route == "gpu" or route == "cpu":
                row.starts[route] -= count
            row.exec_failed += count
            self._pool(pool, route)[0] -= count

    def _pool(self, pool: str | None, route: str | None) -> list[int]:
        key = (pool or "(none)", route if route == "gpu" or route == "cpu" else None)
        found = self.pools.get(key)
        if found is None:
            found = self.pools[key] = [0, 0]
        return found

    def add(self, record: dict[str, Any]) -> None:
        """One decoded record of any event."""
        name = record.get("profile")
        if not isinstance(name, str):
            return
        self.seen(record.get("ts"))
        event = record["event"]
        route = record.get("route")
        route = route if isinstance(route, str) else None
        if event in _FLAT:
            pool = record.get("pool")
            self.flat(
                event,
                name,
                route,
                pool if isinstance(pool, str) else None,
                record.get("waited_s"),
                bool(record.get("retry_of")),
            )
            return
        row = self.profile(name)
        if event == "oom":
            row.oom += 1
            metric = record.get("metric")
            if isinstance(metric, (int, float)) and not isinstance(metric, bool):
                row.oom_metrics.append(float(metric))
                kind = record.get("kind")
                row.oom_kind = kind if isinstance(kind, str) else row.oom_kind
        elif event == "end":
            if route == "gpu" or route == "cpu":
                row.durations[route].add(record.get("duration_s", record.get("elapsed_s")))
            if "peak_vram_mib" in record:
                row.monitored += 1
                row.peaks.add(record.get("peak_vram_mib"))
            if record.get("retry_of") and record.get("exit_status") == 0:
                row.oom_retries_ok += 1
        elif event == "evict":
            victim = record.get("victim")
            outcome = record.get("outcome")
            if outcome not in self.eviction_attempts:  # records before outcomes were written
                outcome = "no_victim" if victim is None else "evicted" if record.get("ok") else "failed"
            self.eviction_attempts[str(outcome)] += 1
            if outcome in ("evicted", "failed"):  # an attempt with no victim, or a wait, evicted nothing
                counts = self.evictions.setdefault(str(victim), {"ok": 0, "failed": 0})
                counts["ok" if outcome == "evicted" else "failed"] += 1

    def pool_rows(self) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for (name, route), (starts, busy) in self.pools.items():
            row = rows.setdefault(name, {"route": route, "starts": 0, "busy": 0})
            row["route"] = row["route"] or route
            row["starts"] += starts
            row["busy"] += busy
        for row in rows.values():
            attempts = row["starts"] + row["busy"]
            row["busy_rate"] = round(row["busy"] / attempts, 4) if attempts else 0.0
        return dict(sorted(rows.items()))


def summarise(
    settings: Settings,
    since_s: float | None = None,
    profile: str | None = None,
    now: float | None = None,
    journals: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Jobs by profile and route, refusals by pool and their rate, waits, durations, peak VRAM,
    evictions, escapes and OOM fallbacks; and advice in words where the figures call for it.

    Args:
        settings: the configuration (journal path; each profile's wait, thresholds... for the advice).
        since_s: only records of the last `since_s` seconds.
        profile: only this profile.
        now: the present, for `since_s` (tests).
        journals: read these files instead of the configured journal and its rotated files.

    Returns:
        Plain data: `profiles` {name: counts, busy_rate, wait_p50_s/p95_s, duration_s, peak_vram_mib,
        oom...}, `pools` {pool: route, starts, busy, busy_rate}, `waits`, `evictions` {victim: ok,
        failed}, `advice` [sentences], and what was read (`files`, `lines`, `records`).
    """
    cutoff = None if since_s is None else (time.time() if now is None else now) - since_s
    scanner = Scanner(events=_COUNTED, profile=profile, since_epoch=cutoff)
    tally = _Tally()
    # The hot loop, inlined (~3 µs a line on a busy 2-core box; decoding each line is ~6-9 µs).
    # Per distinct head, a plan: None = decode the line, False = not wanted, else
    # (event, name, route, the profile's wait values).
    plans: dict[bytes, Any] = {}
    counts: dict[tuple[bytes, bytes | None], int] = {}  # (raw head, raw pool) -> records
    retries: dict[str, int] = {}
    first = last = None
    decode, recent = scanner.decode, scanner.recent
    ours, event_key, metric_key, unseen = (
        _OURS,
        _EVENT_KEY,
        _METRIC_KEY,
        _UNSEEN,
    )  # locals: no global look-ups
    plan_of, count_of = plans.get, counts.get
    for line in scanner.lines_of(default_files(settings, journals)):
        plan = None
        if line.startswith(ours):
            at = line.find(event_key, 13, 64)
            stop = line.find(metric_key, at, at + 400) if at > 0 else -1
            if stop > 0:
                raw = line[at + 9 : stop]
                plan = plan_of(raw, unseen)
                if plan is unseen:
                    plan = plans[raw] = _plan(scanner, tally, raw)
        if plan is False:
            continue
        if plan is not None and plan[0] == "end":  # monitored runs: half the lines of a monitored box
            if cutoff is None or recent(line):
                cut = _cut_end(line, "end", plan[1], plan[2])
                record = decode(line) if cut is None else scanner.checked(cut)
                if record is not None:
                    tally.add(record)
            continue
        if plan is None or line[-2:] != b"}\n" or line.count(b"{") != 1:  # not ours, nested, or torn
            record = decode(line)
            if record is not None:
                tally.add(record)
            continue
        if cutoff is not None and not recent(line):
            continue
        event = plan[0]
        pool = None
        if event == "start" or event == "busy" or event == "exec_failed":
            at = line.rfind(b',"pool":"')
            if at > 0:
                pool = line[at + 9 : line.find(b'"', at + 9)]
            if event == "start":
                at = line.rfind(b',"waited_s":')
                if at > 0:
                    end = line.find(b",", at + 12)
                    try:
                        waited = float(line[at + 12 : end if end > 0 else -2])
                    except ValueError:
                        waited = None
                    if waited is None or not in_bounds("waited_s", waited):
                        scanner.malformed += 1
                        continue
                    plan[3].append(waited)
                if b',"retry_of":"' in line:
                    retries[plan[1]] = retries.get(plan[1], 0) + 1
        key = (raw, pool)
        counts[key] = count_of(key, 0) + 1
        if first is None:
            first = line
        last = line
    for (raw, raw_pool), count in counts.items():
        event, name, route, _ = plans[raw]
        pool_name = None if raw_pool is None else scanner.loads_string(raw_pool)
        tally.flat(event, name, route, pool_name, None, False, count)
    for name, count in retries.items():
        tally.profile(name).oom_retries += count
    for edge in (first, last):
        if edge is not None:
            tally.span(edge[13 : edge.find(b'"', 13)].decode("ascii", "replace"))
    tally.records += sum(counts.values())
    profiles = {name: row.as_row() for name, row in sorted(tally.profiles.items())}
    waits_all = Quantiles()
    for row in tally.profiles.values():
        waits_all.values.extend(row.waits.values)
    evictions = dict(sorted(tally.evictions.items()))
    return {
        "journal": settings.journal,
        "files": scanner.files,
        "since": None if since_s is None else f"{since_s:g}s",
        "profile": profile,
        "records": tally.records,
        "lines": scanner.lines,
        "decoded": scanner.decoded,
        "malformed": scanner.malformed,
        "first": tally.first,
        "last": tally.last,
        "profiles": profiles,
        "pools": tally.pool_rows(),
        "waits": waits_all.summary(),
        "evictions": evictions,
        "eviction_attempts": dict(tally.eviction_attempts),
        "advice": advice.advise(settings, profiles, evictions),
    }
