"""`threshold = "auto"`: the threshold of each decision, from evidence.

The fit of peak VRAM against the probe metric (`tune.fit` over the profile's monitored GPU
runs) gives the largest metric whose predicted peak fits in the VRAM free right now on the
best device (less the cushion and the MiB promised to jobs that have just started). The
fit is memoised per user, keyed by the journal's identity and size in MiB, so a job reads
the journal again only after it has grown by a MiB.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping

    from gpurouter.job.config import Profile, Settings


def _fit(settings: Settings, profile: Profile, environ: Mapping[str, str]) -> tuple[float, float, float] | str:
    """(slope, intercept, max residual) of the profile's runs, or why there is none."""
    from gpurouter.job import memo
    from gpurouter.observe import tune

    if not settings.journal:
        return "no journal to learn from"
    try:
        info = os.stat(settings.journal)
    except OSError:
        return "no journal yet"
    identity = ("autotune", settings.journal, profile.name, info.st_dev, info.st_ino, info.st_size >> 20)
    cached = memo.recall("autotune", identity, environ)
    if isinstance(cached, (tuple, str)):
        return cached  # type: ignore[return-value,unused-ignore]
    points = tune.runs(settings, profile.name)["points"]
    result: tuple[float, float, float] | str
    if len(points) < tune.MIN_RUNS:
        result = f"threshold = \"auto\" needs {tune.MIN_RUNS} monitored GPU runs, the journal has {len(points)}"
    else:
        try:
            model = tune.fit(points)
            result = (model.slope, model.intercept, model.max_residual_mib)
        except ValueError as error:
            result = f"no fit of the monitored runs: {error}"
    memo.remember("autotune", identity, result, environ)
    return result


def threshold(settings: Settings, profile: Profile, environ: Mapping[str, str]) -> tuple[float | None, str]:
    """(threshold, why) for this decision; (None, why) sends the job to the profile's fallback."""
    from gpurouter.gpu import nvml, placement, selection
    from gpurouter.observe import tune

    fitted = _fit(settings, profile, environ)
    if isinstance(fitted, str):
        return None, fitted
    slope, intercept, residual = fitted
    gpus = selection.eligible(nvml.query_gpus(environ).gpus, settings.gpu.devices)
    if not gpus:
        return None, "threshold = \"auto\" needs the GPUs' free VRAM and none is visible"
    promised = placement.read_claims(settings.lock_dir, gpus, profile.gpu.pool)
    free = max((g.memory_free_mib or 0) - promised.get(g.index, 0) for g in gpus)
    budget = free - settings.gpu.cushion_mib
    model = tune.Fit(n=0, slope=slope, intercept=intercept, r2=0.0, max_residual_mib=residual, max_metric=0.0,
                     max_metric_peak_mib=0.0, min_metric=0.0)  # only the line and the margin matter here
    return tune.threshold_for(model, budget), f"auto from the fit and {free} MiB free"
