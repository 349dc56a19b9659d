"""The fit of peak VRAM against the probe's metric, and `threshold = "auto"` from it.

The fit is a least-squares line `peak_mib = intercept + slope × metric` over the `end`
records of successful monitored GPU runs. A job is predicted to fit when the line *plus the
largest under-estimate the fit made on the runs seen* (`max_residual_mib`) stays within the
budget, so every run observed so far would have been let through with its real peak.

`fit`, `predict_peak_mib` and `threshold_for` are pure (no I/O, no clock). `threshold` gives each
decision of a `threshold = "auto"` profile its threshold: the largest metric whose predicted
peak fits in the VRAM free right now on the best device (less the cushion and the MiB promised
to jobs that have just started). The fit is memoised per user, keyed by the journal's identity
and size in MiB, so a job reads the journal again only after it has grown by a MiB.
`gpurouter tune` (observe/tune.py) proposes a fixed threshold from the same fit.
"""

from __future__ import annotations

import math
import os

from gpurouter.job.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any, Final, TypeGuard

    from gpurouter.job.settings import Profile, Settings

MIN_RUNS: Final = 3
# What tune and threshold = "auto" take as evidence (issue 12, item 7): forged `end` records of
# big inputs with small peaks sent a 10-hour file to the GPU. Beyond these, a run is not evidence.
EVIDENCE_MAX_METRIC: Final = {"duration": 30 * 86400.0, "size": float(1 << 44), "pixels": 1e10}
EVIDENCE_MAX_PEAK_MIB: Final = float(1 << 20)  # 1 TiB on one device


class Fit(Record):
    """A least-squares line of peak VRAM (MiB) against the probe's metric."""

    __slots__ = (
        "n",
        "slope",
        "intercept",
        "r2",
        "max_residual_mib",
        "max_metric",
        "max_metric_peak_mib",
        "min_metric",
    )
    n: int  # runs fitted
    slope: float  # MiB per metric unit (per second, per byte, per pixel)
    intercept: float  # MiB at metric 0
    r2: float  # coefficient of determination (1.0 when every point is on the line)
    max_residual_mib: float  # largest under-estimate: max(peak - line), >= 0
    max_metric: float  # the largest run that fit (its metric)
    max_metric_peak_mib: float  # ...and its peak
    min_metric: float


def fit(points: Iterable[tuple[float, float]]) -> Fit:
    """Least squares over (metric, peak_mib) points.

    Raises:
        ValueError: fewer than 2 points, or all at the same metric (no line through them).
    """
    pairs = [(float(x), float(y)) for x, y in points]
    n = len(pairs)
    if n < 2:
        raise ValueError(f"need at least 2 runs to fit a line, got {n}")
    mean_x = sum(x for x, _ in pairs) / n
    mean_y = sum(y for _, y in pairs) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in pairs)
    if sxx <= 0:
        raise ValueError("every run has the same metric: no line to fit")
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in pairs)
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    residuals = [y - (intercept + slope * x) for x, y in pairs]
    ss_res = sum(r * r for r in residuals)
    ss_tot = sum((y - mean_y) ** 2 for _, y in pairs)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    largest = max(pairs)
    return Fit(
        n=n,
        slope=slope,
        intercept=intercept,
        r2=r2,
        max_residual_mib=max(0.0, max(residuals)),
        max_metric=largest[0],
        max_metric_peak_mib=largest[1],
        min_metric=min(pairs)[0],
    )


def predict_peak_mib(model: Fit, metric: float) -> float:
    """The peak VRAM to plan for at `metric`: the line plus the largest under-estimate seen."""
    return model.intercept + model.slope * metric + model.max_residual_mib


def threshold_for(model: Fit, budget_mib: float) -> float:
    """The largest metric whose planned peak (`predict_peak_mib`) fits in `budget_mib`.

    Returns:
        The threshold in metric units: route GPU when metric < threshold. `math.inf` when the
        peak does not grow with the metric and fits (any job fits); 0.0 when even a job of
        metric 0 would not fit.
    """
    base = model.intercept + model.max_residual_mib
    if model.slope <= 0:
        return math.inf if base <= budget_mib else 0.0
    return max(0.0, (budget_mib - base) / model.slope)


# --------------------------------------------------------------------------- from the journal


def runs(
    settings: Settings, profile: str, since_s: float | None = None, journals: Iterable[str] | None = None
) -> dict[str, Any]:
    """The monitored GPU runs of a profile that ended well, and its GPU OOMs, from the journal.

    Only the evidence's owners count (issue 12, item 7: the journal is world-writable): records
    whose `uid` is the reading user's or the owner's of the journal file they are in, with a
    metric and a peak within `EVIDENCE_MAX_METRIC` / `EVIDENCE_MAX_PEAK_MIB`. The uid is what the
    writer says: this keeps other users' runs (and careless forgeries) out; against a deliberate
    forger, the journal must be a file only the job's users can write (docs/observability.md).

    Returns:
        {"points": [(metric, peak_mib)], "kind": the metric's kind, "ooms": [metrics], "skipped": n,
        "others": [others_vram_mib of every monitored GPU run, failed ones too],
        "malformed": lines skipped as malformed, "untrusted": records of other users,
        "out_of_range": records beyond the evidence bounds}
    """
    import time

    from gpurouter.job import journal_reader

    cutoff = None if since_s is None else time.time() - since_s
    scanner = journal_reader.Scanner(events=("end", "oom"), profile=profile, since_epoch=cutoff)
    points: list[tuple[float, float]] = []
    ooms: list[float] = []
    others: list[float] = []
    kind = None
    skipped = untrusted = out_of_range = 0
    reader = os.geteuid()
    owners: dict[str, int | None] = {}
    for record in scanner.records(journal_reader.default_files(settings, journals)):
        metric = record.get("metric")
        if not _is_number(metric) or record.get("route") != "gpu":
            continue
        current = scanner.files[-1]  # the file this record came from
        if current not in owners:
            try:
                owners[current] = os.stat(current).st_uid
            except OSError:
                owners[current] = None
        if record.get("uid") not in (reader, owners[current]):
            untrusted += 1
            continue
        record_kind = record.get("kind") if isinstance(record.get("kind"), str) else None
        peak = record.get("peak_vram_mib")
        if not 0 <= metric <= EVIDENCE_MAX_METRIC.get(record_kind or "", journal_reader.MAX_METRIC) or (
            _is_number(peak) and not 0 <= peak <= EVIDENCE_MAX_PEAK_MIB
        ):
            out_of_range += 1
            continue
        kind = record.get("kind") if isinstance(record.get("kind"), str) else kind
        beside = record.get("others_vram_mib")
        if record["event"] == "end" and _is_number(beside) and 0 <= beside <= EVIDENCE_MAX_PEAK_MIB:
            others.append(float(beside))  # what the device's other users held, whatever the job's fate
        if record["event"] == "oom":
            ooms.append(float(metric))
            continue
        peak = record.get("peak_vram_mib")
        devices = record.get("gpus")
        if (
            not _is_number(peak)
            or record.get("exit_status", 0) != 0
            or (isinstance(devices, list) and len(devices) > 1)
        ):
            # a run that failed, saw no process memory, or spread over several GPUs (its peak is
            # their sum, while the budget is per device)
            skipped += "peak_vram_mib" in record
            continue
        points.append((float(metric), float(peak)))
    return {
        "points": points,
        "kind": kind,
        "ooms": sorted(ooms),
        "others": others,
        "skipped": skipped,
        "malformed": scanner.malformed,
        "untrusted": untrusted,
        "out_of_range": out_of_range,
    }


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def share_mib(total_mib: float, cushion_mib: float, others_mib: float, slots: int) -> float:
    """What one job may plan for on a device when every slot is busy: what the device's other
    users (residents, trainers, other users' jobs) leave, less the cushion, split between the slots.

    Why subtract the others (issue 15): a 16 GiB card shared with a 4.5 GiB resident and a trainer
    that takes 6 GiB now and then has (16376 - 256 - 10752) / 2 = 2684 MiB per job of 2 slots, not
    8060; a threshold fitted to 8060 sent 155-minute files to an OOM where 60 minutes was the edge.
    """
    return (total_mib - cushion_mib - others_mib) / max(1, slots)


def round_down(value: float, kind: str | None) -> float:
    """A threshold people can read: whole minutes (or seconds under 10 min), whole MiB, whole pixels."""
    if not math.isfinite(value):
        return value
    if kind == "duration":
        step = 60.0 if value >= 600 else 1.0
    elif kind == "size":
        step = float(2**20)
    else:
        step = 1.0
    return math.floor(value / step) * step


Fitted = tuple[float, float, float, float | None]  # slope, intercept, max residual, others' peak MiB


def _fit(settings: Settings, profile: Profile, environ: Mapping[str, str]) -> Fitted | str:
    """(slope, intercept, max residual, others' peak) of the profile's runs, or why there is none."""
    from gpurouter.job import memo

    if not settings.journal:
        return "no journal to learn from"
    try:
        info = os.stat(settings.journal)
    except OSError:
        return "no journal yet"
    identity = (f"{settings.journal}\0{profile.name}", info.st_dev, info.st_ino)
    cached = memo.recall("autotune", identity, environ)
    if isinstance(cached, tuple) and len(cached) == 2 and isinstance(cached[0], int):
        size, value = cached
        # A fit is read again once the journal has grown by a MiB (~3000 jobs' records); "not
        # enough runs yet" after 64 KiB (~200 records), so the first runs count soon (issue 15:
        # threshold_start hands over to the fit) without every job re-reading a long journal.
        if isinstance(value, tuple) and len(value) == 4 and size >> 20 == info.st_size >> 20:
            return value  # type: ignore[return-value,unused-ignore]
        if isinstance(value, str) and 0 <= info.st_size - size < 1 << 16:
            return value
    found = runs(settings, profile.name)
    points = found["points"]
    result: Fitted | str
    if len(points) < MIN_RUNS:
        result = f'threshold = "auto" needs {MIN_RUNS} monitored GPU runs, the journal has {len(points)}'
    else:
        try:
            model = fit(points)
            others = max(found["others"]) if found["others"] else None
            result = (model.slope, model.intercept, model.max_residual_mib, others)
        except ValueError as error:
            result = f"no fit of the monitored runs: {error}"
    memo.remember("autotune", identity, (info.st_size, result), environ)
    return result


def forget(settings: Settings, profile: str, environ: Mapping[str, str] | None) -> None:
    """A monitored GPU run of `profile` has ended: its record is new evidence for the fit."""
    from gpurouter.job import memo

    memo.forget("autotune", (f"{settings.journal}\0{profile}",), environ)


def threshold(settings: Settings, profile: Profile, environ: Mapping[str, str]) -> tuple[float | None, str]:
    """(threshold, why) for this decision; (None, why) sends the job to the profile's fallback.

    The budget is the smaller of what is free on the best device now (less the MiB promised to
    jobs that have just started, and the cushion) and a slot's honest share of it
    (`share_mib`, or `gpu.vram_mib` when configured): the other slots may fill, and the device's
    other users come back, while the job runs. Until the fit has `MIN_RUNS` runs, the profile's
    `threshold_start` (when set) routes, so that the GPU runs the fit learns from happen at all.
    """
    from gpurouter.gpu import nvml, placement, selection
    from gpurouter.job import units

    kind = profile.probe if profile.probe in ("duration", "size", "pixels") else None
    fitted = _fit(settings, profile, environ)
    if isinstance(fitted, str):
        if profile.threshold_start is not None:
            start = units.format_metric(profile.threshold_start, kind)
            return profile.threshold_start, f"threshold_start {start} until the fit has its runs ({fitted})"
        return None, fitted
    slope, intercept, residual, others = fitted
    gpus = selection.eligible(nvml.query_gpus(environ).gpus, settings.gpu.devices)
    if not gpus:
        return None, 'threshold = "auto" needs the GPUs\' free VRAM and none is visible'
    promised = placement.read_claims(settings.lock_dir, gpus, profile.gpu.pool)
    cushion = settings.gpu.cushion_mib
    best: tuple[float, str] | None = None
    for gpu in gpus:
        free = (gpu.memory_free_mib or 0) - promised.get(gpu.index, 0)
        budget, why = float(free - cushion), f"{free} MiB free on GPU {gpu.index}"
        if isinstance(profile.gpu.vram_mib, int):
            share, share_why = float(profile.gpu.vram_mib), f"vram_mib {profile.gpu.vram_mib}"
        elif gpu.memory_total_mib:
            share = share_mib(gpu.memory_total_mib, cushion, others or 0, profile.gpu.slots)
            share_why = f"a slot's share {share:.0f} MiB" + (
                f" beside up to {others:.0f} MiB of other users" if others else ""
            )
        else:
            share, share_why = math.inf, ""
        if share < budget:
            budget, why = share, f"{why}, {share_why}"
        if best is None or budget > best[0]:
            best = (budget, why)
    assert best is not None
    budget, why = best
    model = Fit(
        n=0,
        slope=slope,
        intercept=intercept,
        r2=0.0,
        max_residual_mib=residual,
        max_metric=0.0,
        max_metric_peak_mib=0.0,
        min_metric=0.0,
    )  # only the line and the margin matter here
    found = round_down(threshold_for(model, budget), kind)
    return found, f"auto from the fit and {max(0, budget):.0f} MiB for this job: {why}"
