"""The journal's figures, the slots and the GPUs as a node_exporter textfile-collector file.

node_exporter's textfile collector reads every `*.prom` file of its directory at each scrape;
a file half-written at that moment would be read half. So the text goes to a temp file in the
same directory (a name not ending in `.prom`, which the collector ignores), is fsync'ed, and
is renamed over the target: a scrape sees the old file or the new one, never a mix.

Written by hand rather than with `prometheus_client`: the format is a few lines of text, and
the client costs ~70 ms to import and a dependency for a command run every 30 s. The tests
parse the output with `prometheus_client.parser` to hold us to the format.

Counters (`*_total`) count the whole journal, rotated files included: when logrotate deletes
the oldest file a counter goes down, which Prometheus' `rate()` and `increase()` treat as a
counter reset, as they should.
"""

from __future__ import annotations

from gpurouter.job import fsutil

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any, Final

    from gpurouter.job.settings import Settings

_MIB: Final = 1048576
_QUANTILES: Final = (("0.5", "p50"), ("0.95", "p95"))


class _Family:
    """One metric family: HELP, TYPE and its samples."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[str, dict[str, str], float]] = []

    def add(self, value: float | None, suffix: str = "", **labels: str) -> None:
        if value is not None:
            self.samples.append((self.name + suffix, labels, float(value)))

    def text(self) -> str:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for name, labels, value in self.samples:
            inner = ",".join(f'{key}="{_escape_label(str(val))}"' for key, val in labels.items())
            lines.append(f"{name}{{{inner}}} {_number(value)}" if inner else f"{name} {_number(value)}")
        return "\n".join(lines)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def families(summary: Mapping[str, Any], slot_rows: Iterable[Any], gpus: Iterable[Any]) -> list[_Family]:
    """The metric families from a stats summary, status slot rows and GPU snapshots (pure)."""
    jobs = _Family("gpurouter_jobs_total", "counter", "Jobs started, by profile and route.")
    busy = _Family(
        "gpurouter_busy_total", "counter", "Jobs refused for want of a slot (exit 75), by profile and pool."
    )
    refused = _Family(
        "gpurouter_refused_total", "counter", "Jobs refused by policy (probe fail, no GPU), by profile."
    )
    escapes = _Family(
        "gpurouter_escapes_total", "counter", "Jobs run without a slot after max_wait, by profile."
    )
    ooms = _Family(
        "gpurouter_oom_fallbacks_total",
        "counter",
        "GPU runs that ran out of memory and fell back to the CPU.",
    )
    evictions = _Family("gpurouter_evictions_total", "counter", "Residents unloaded to make room, by victim.")
    attempts = _Family(
        "gpurouter_eviction_attempts_total",
        "counter",
        "Eviction attempts by outcome: evicted, failed, no_victim, in_flight (waited for one).",
    )
    evict_failed = _Family(
        "gpurouter_eviction_failures_total", "counter", "Resident evictions that failed, by victim."
    )
    waits = _Family("gpurouter_wait_seconds", "summary", "Seconds a started job waited for its slot.")
    malformed = _Family(
        "gpurouter_journal_malformed_records_total",
        "counter",
        "Journal lines skipped as malformed (not JSON, wrong types, numbers out of range).",
    )
    malformed.add(summary.get("malformed", 0))
    for name, row in summary["profiles"].items():
        for route in ("gpu", "cpu"):
            jobs.add(row[route], profile=name, route=route)
        for pool, count in row.get("busy_by_pool", {}).items():
            busy.add(count, profile=name, pool=pool)
        refused.add(row["refused"], profile=name)
        escapes.add(row["escapes"], profile=name)
        ooms.add(row["oom"], profile=name)
        figures = row.get("waits") or {}
        if figures.get("n"):
            for quantile, key in _QUANTILES:
                waits.add(figures[key], profile=name, quantile=quantile)
            waits.add(figures["sum"], "_sum", profile=name)
            waits.add(figures["n"], "_count", profile=name)
    for victim, tally in summary["evictions"].items():
        evictions.add(
            tally["ok"], victim=victim
        )  # a failed unload or an attempt with no victim evicted nothing
        evict_failed.add(tally["failed"], victim=victim)
    for outcome, count in (summary.get("eviction_attempts") or {}).items():
        attempts.add(count, outcome=outcome)
    in_use = _Family(
        "gpurouter_slots_in_use", "gauge", "Slots held right now (from the kernel's flock table), by pool."
    )
    total = _Family("gpurouter_slots_total", "gauge", "Slots configured (or found in the lock dir), by pool.")
    waiting = _Family("gpurouter_slot_waiters", "gauge", "Processes blocked waiting for a slot, by pool.")
    pools: dict[str, list[int]] = {}
    for row in slot_rows:
        if row.index < 0:  # a priority gate, not a slot
            continue
        counts = pools.setdefault(row.pool, [0, 0, 0])
        counts[0] += row.holder is not None
        counts[1] += 1
        counts[2] += len(row.waiters)
    for pool, (held, count, blocked) in sorted(pools.items()):
        in_use.add(held, pool=pool)
        total.add(count, pool=pool)
        waiting.add(blocked, pool=pool)
    free = _Family("gpurouter_gpu_memory_free_bytes", "gauge", "Free GPU memory in bytes.")
    memory = _Family("gpurouter_gpu_memory_total_bytes", "gauge", "Total GPU memory in bytes.")
    used = _Family("gpurouter_gpu_memory_used_bytes", "gauge", "Used GPU memory in bytes.")
    utilization = _Family("gpurouter_gpu_utilization_ratio", "gauge", "GPU utilization, 0 to 1.")
    temperature = _Family("gpurouter_gpu_temperature_celsius", "gauge", "GPU temperature in degrees Celsius.")
    power = _Family("gpurouter_gpu_power_watts", "gauge", "GPU power draw in watts.")
    for gpu in gpus:
        labels = {"gpu": str(gpu.index), "uuid": gpu.uuid or ""}
        free.add(None if gpu.memory_free_mib is None else gpu.memory_free_mib * _MIB, **labels)
        memory.add(None if gpu.memory_total_mib is None else gpu.memory_total_mib * _MIB, **labels)
        used.add(None if gpu.memory_used_mib is None else gpu.memory_used_mib * _MIB, **labels)
        utilization.add(None if gpu.utilization_percent is None else gpu.utilization_percent / 100, **labels)
        temperature.add(gpu.temperature_c, **labels)
        power.add(gpu.power_w, **labels)
    every = [
        jobs,
        busy,
        refused,
        escapes,
        ooms,
        evictions,
        evict_failed,
        attempts,
        waits,
        malformed,
        in_use,
        total,
        waiting,
        free,
        memory,
        used,
        utilization,
        temperature,
        power,
    ]
    return [family for family in every if family.samples]


def exposition(summary: Mapping[str, Any], slot_rows: Iterable[Any], gpus: Iterable[Any]) -> str:
    """The text exposition format (version 0.0.4) of `families`, ending with a newline."""
    return "".join(family.text() + "\n" for family in families(summary, slot_rows, gpus))


def write_textfile(
    settings: Settings,
    path: str,
    profile: str | None = None,
    journals: Iterable[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Gather the figures, slots and GPUs and replace `path` with them atomically.

    Returns:
        {"path", "families", "samples"} for the caller to report.

    Raises:
        OSError: the directory is not writable (the old file, if any, is left as it was).
    """
    from gpurouter.gpu import nvml
    from gpurouter.observe import stats, status

    summary = stats.summarise(settings, profile=profile, journals=journals)
    rows = status.slot_rows(settings)
    gpus = nvml.query_gpus(environ, full=True).gpus
    found = families(summary, rows, gpus)
    text = "".join(family.text() + "\n" for family in found)
    replace_atomically(path, text)
    return {"path": path, "families": len(found), "samples": sum(len(f.samples) for f in found)}


def replace_atomically(path: str, text: str) -> None:
    """Write `text` beside `path` and rename it over `path` (mode 0644: node_exporter often runs as
    another user)."""
    fsutil.write_replacing(path, text.encode("utf-8"), 0o644)
