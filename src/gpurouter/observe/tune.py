"""`gpurouter tune PROFILE`: fit peak VRAM against the probe's metric from monitored GPU runs,
and propose the threshold under which a job fits its VRAM budget.

The fit is a least-squares line `peak_mib = intercept + slope × metric` over the `end`
records of successful monitored GPU runs. A job is predicted to fit when the line *plus the
largest under-estimate the fit made on the runs seen* (`max_residual_mib`) stays within the
budget, so every run observed so far would have been let through with its real peak. A GPU
run that ran out of memory at a smaller metric caps the threshold below that metric: what
happened beats what the line says.

The fit itself and the journal's evidence for it live in gpu/fit.py, shared with
`threshold = "auto"`, which calls them with the live free VRAM as the budget.
"""

from __future__ import annotations

import math
import os
from typing import Any, TypedDict  # a tool, not the per-job path: typing is welcome here

from gpurouter.errors import GpurouterError
from gpurouter.gpu.fit import MIN_RUNS, fit, round_down, runs, share_mib, threshold_for
from gpurouter.job import fsutil

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Final

    from gpurouter.job.settings import Settings

# How each probe's metric reads best in words: (unit name, size of that unit in metric units).
_UNITS: Final = {"duration": ("minute", 60.0), "size": ("GiB", float(2**30)), "pixels": ("megapixel", 1e6)}


class Budget(TypedDict):
    """The VRAM one job may plan for, and why."""

    mib: float
    why: str
    others_mib: float | None  # the most the device's other users held beside the runs (None: not used)


class Proposal(TypedDict):
    """What `tune` proposes, with its evidence: printed by render.tune_text, dumped by --json."""

    profile: str
    kind: str
    runs: int
    skipped: int
    ooms: list[float]
    fit: dict[str, Any]
    slope_per_unit: dict[str, Any]  # {"unit": "minute", "mib": 40.0}
    budget_mib: float
    budget_why: str
    others_mib: float | None
    threshold: float | None  # None: every job fits, or none does
    threshold_text: str | None
    every_job_fits: bool
    no_job_fits: bool
    current: float | None
    current_text: str | None
    capped_by_oom: float | None
    points: list[tuple[float, float]]
    notes: list[str]
    malformed: int
    untrusted: int
    out_of_range: int


class TuneRefused(GpurouterError):
    """tune cannot propose anything: too few runs, no probe, no budget (exit 1)."""

    exit_code = 1


def budget(
    settings: Settings,
    profile: str,
    environ: Mapping[str, str] | None = None,
    override_mib: float | None = None,
    others_mib: Sequence[float] = (),
) -> Budget:
    """The VRAM one job of the profile may use: `vram_mib` if configured, else the smallest
    allowed device's `fit.share_mib`: (total - cushion - what its other users held) / GPU slots.

    Args:
        others_mib: what the device's other users (residents, trainers, other users' jobs) held
            beside each monitored run (`others_vram_mib` of the `end` records); the largest counts.

    Raises:
        TuneRefused: no vram_mib, no override and no GPU to read the total from.
    """
    rules = settings.profile(profile)
    if override_mib is not None:
        return {"mib": float(override_mib), "why": f"--budget-mib {override_mib:g}", "others_mib": None}
    if isinstance(rules.gpu.vram_mib, int):
        return {
            "mib": float(rules.gpu.vram_mib),
            "why": f"vram_mib = {rules.gpu.vram_mib} (configured)",
            "others_mib": None,
        }
    from gpurouter.gpu import nvml, selection

    query = nvml.query_gpus(environ)
    totals = [
        (g.memory_total_mib, g)
        for g in selection.eligible(query.gpus, settings.gpu.devices)
        if g.memory_total_mib
    ]
    if not totals:
        raise TuneRefused(
            f"no VRAM budget for {profile}: no GPU seen ({query.message or 'none'}), "
            "no gpu.vram_mib configured; give --budget-mib"
        )
    total, gpu = min(totals, key=lambda item: item[0])
    cushion, slots = settings.gpu.cushion_mib, rules.gpu.slots
    others = max(others_mib, default=0.0)
    beside = (
        f" - {others:.0f} held by other users, the most seen beside {len(others_mib)} monitored run(s)"
        if others_mib
        else ""
    )
    device = f"GPU {gpu.index} {gpu.name or ''} {total} MiB"
    return {
        "mib": share_mib(total, cushion, others, slots),
        "why": f"({device} - cushion {cushion}{beside}) / {slots} slot(s)",
        "others_mib": others if others_mib else None,
    }


def propose(
    settings: Settings,
    profile: str,
    since_s: float | None = None,
    journals: Iterable[str] | None = None,
    environ: Mapping[str, str] | None = None,
    budget_mib: float | None = None,
) -> Proposal:
    """Fit the profile's runs and propose a threshold, with the evidence, as plain data.

    Raises:
        TuneRefused: fewer than MIN_RUNS usable runs, all at one metric, or no budget.
    """
    from gpurouter.job.units import format_coarse

    rules = settings.profile(profile)
    found = runs(settings, profile, since_s, journals)
    points = found["points"]
    kind = rules.probe if rules.probe in ("duration", "size", "pixels") else found["kind"] or "number"
    if len(points) < MIN_RUNS:
        ignored = ignored_text(found)
        raise TuneRefused(
            f"{profile}: {len(points)} monitored GPU run(s) with a metric and a peak VRAM in the "
            f"journal; tune needs at least {MIN_RUNS} (set monitor = true on the profile and let "
            f"it run){'; ' + ignored if ignored else ''}"
        )
    try:
        model = fit(points)
    except ValueError as error:
        raise TuneRefused(f"{profile}: {error}") from None
    allowed = budget(settings, profile, environ, budget_mib, found["others"])
    raw = threshold_for(model, allowed["mib"])
    notes = []
    capped_by_oom = None
    below = [m for m in found["ooms"] if m < raw]
    if below:
        capped_by_oom = below[0]
        raw = below[0]
        notes.append(
            f"a GPU run of {format_coarse(below[0], kind)} ran out of memory: the threshold stays below it"
        )
    proposed = round_down(raw, kind)
    if math.isfinite(raw) and raw > model.max_metric:
        notes.append(
            f"extrapolated beyond the largest run seen ({format_coarse(model.max_metric, kind)}): "
            "watch the first runs above it, or let more runs come in and tune again"
        )
    if model.r2 < 0.8:
        notes.append(f"a weak fit (R² {model.r2:.2f}): peak VRAM depends on more than this metric")
    unit, per = per_unit(kind, model.slope)
    return {
        "profile": profile,
        "kind": kind,
        "runs": model.n,
        "skipped": found["skipped"],
        "ooms": found["ooms"],
        "fit": model.as_dict(),
        "slope_per_unit": {"unit": unit, "mib": per},
        "budget_mib": allowed["mib"],
        "budget_why": allowed["why"],
        "others_mib": allowed["others_mib"],
        "threshold": proposed if math.isfinite(proposed) and proposed > 0 else None,
        "threshold_text": _text(proposed, kind) if proposed > 0 else None,
        "every_job_fits": math.isinf(proposed),
        "no_job_fits": proposed <= 0,
        "current": rules.threshold,
        "current_text": rules.threshold_text,
        "capped_by_oom": capped_by_oom,
        "points": points,
        "notes": notes,
        "malformed": found["malformed"],
        "untrusted": found["untrusted"],
        "out_of_range": found["out_of_range"],
    }


def ignored_text(found: Mapping[str, Any]) -> str:
    """What the journal held but tune did not use, in words ('' when nothing)."""
    parts = []
    if found["untrusted"]:
        parts.append(f"{found['untrusted']} record(s) written by other users")
    if found["out_of_range"]:
        parts.append(f"{found['out_of_range']} run(s) beyond the evidence bounds")
    if found["malformed"]:
        parts.append(f"{found['malformed']} malformed line(s)")
    return "not used: " + ", ".join(parts) if parts else ""


def per_unit(kind: str, slope: float) -> tuple[str, float]:
    """A slope in MiB per metric unit as MiB per readable unit: ("minute", 40.0) for 0.667 per second."""
    unit, scale = _UNITS.get(kind, ("unit", 1.0))
    return unit, slope * scale


def _text(value: float, kind: str) -> str | None:
    from gpurouter.job import units

    if not math.isfinite(value):
        return None
    if kind == "size":
        return f"{int(value // 2**20)}MiB"
    return units.format_metric(value, kind if kind in ("duration", "size") else None)


# --------------------------------------------------------------------------- --apply


def apply(config_path: str, profile: str, threshold_text: str) -> str:
    """Write `threshold = "..."` into the profile's table, keeping comments and layout; back up first.

    Returns:
        The backup's path (`FILE.bak`).

    Raises:
        TuneRefused: the file is not TOML, the result would not validate, or tomlkit is missing.
    """
    try:
        import tomlkit  # deferred: ~30 ms, and an optional extra (gpurouter[tune])
    except ImportError:
        raise TuneRefused("--apply needs tomlkit (pip install 'gpurouter[tune]')") from None
    import tomllib

    from gpurouter.errors import ConfigError
    from gpurouter.job import config

    # A symlinked config (e.g. from a config-management checkout) is edited where it points, and
    # stays a symlink; the target must be a regular file (issue 12).
    config_path = os.path.realpath(config_path)
    try:
        with open(fsutil.open_regular_for_reading(config_path), "rb") as stream:
            original = stream.read()
    except OSError as error:
        raise TuneRefused(f"{config_path}: cannot edit: {error.strerror or error}") from None
    try:
        document = tomlkit.parse(original.decode("utf-8"))
    except (UnicodeDecodeError, tomlkit.exceptions.TOMLKitError) as error:
        raise TuneRefused(f"{config_path}: cannot edit: {error}") from None
    profiles = document.get("profiles")
    if profiles is None:
        profiles = tomlkit.table(is_super_table=True)
        document["profiles"] = profiles
    table = profiles.get(profile)
    if table is None:
        table = tomlkit.table()
        profiles[profile] = table
    table["threshold"] = threshold_text
    text = tomlkit.dumps(document)
    try:
        config.validate(tomllib.loads(text), config_path, config_path)
    except (ConfigError, tomllib.TOMLDecodeError) as error:
        raise TuneRefused(f"not applied: the edited file would not be valid: {error}") from None
    backup = config_path + ".bak"
    try:
        fsutil.write_replacing(backup, original, os.stat(config_path).st_mode & 0o7777)
        fsutil.write_replacing(config_path, text.encode("utf-8"), os.stat(config_path).st_mode & 0o7777)
    except OSError as error:
        raise TuneRefused(
            f"not applied: {error.filename or config_path}: {error.strerror or error}"
        ) from None
    return backup
