"""The routing rules as a grid, calling the pure functions directly (no process, no file, no clock).

Each axis is one rule of docs/configuration.md; the expected outcome is the rules restated in
their order of precedence: a forced route wins; then the threshold (or the fallback when there is
no metric); then, for a GPU route, the time window; then GPU availability.
"""

from __future__ import annotations

import itertools

import pytest

from gpurouter.job import route
from gpurouter.job.config import validate
from gpurouter.job.probe import ProbeResult

METRICS = {  # id -> probe result for a 5 s threshold (None: no probe configured)
    "short-input": ProbeResult(input="a.wav", metric=2.0, kind="duration", via="native:wav", problem=None),
    "long-input": ProbeResult(input="a.wav", metric=8.0, kind="duration", via="native:wav", problem=None),
    "no-metric": ProbeResult(input="a.txt", metric=None, kind=None, via=None, problem="not media"),
    "no-probe": None,
}
FORCED = [None, "gpu", "cpu"]
WINDOWS = {  # id -> (hours, outside_hours, minute of day): 09:00-17:00 window
    "no-hours": (None, "cpu", None),
    "inside-hours": ("09:00-17:00", "cpu", 10 * 60),
    "outside-to-cpu": ("09:00-17:00", "cpu", 20 * 60),
    "outside-busy": ("09:00-17:00", "busy", 20 * 60),
    "outside-wait": ("09:00-17:00", "wait", 20 * 60),
}
NO_GPU = [None, "cpu", "busy", "fail"]
GPU_STATES = {"gpu-usable": None, "no-gpu": "no NVIDIA driver"}
FALLBACKS = ["cpu", "gpu", "fail"]


def profile_for(hours: str | None, outside_hours: str, no_gpu: str | None, fallback: str, probed: bool):  # type: ignore[no-untyped-def]
    table: dict[str, object] = {"fallback": fallback, "outside_hours": outside_hours}
    if probed:
        table.update(probe="duration", threshold="5s")
    if hours is not None:
        table["hours"] = hours
    if no_gpu is not None:
        table["no_gpu"] = no_gpu
    settings = validate({"lock_dir": "/tmp/grid", "profiles": {"job": table}}, "grid.toml", None)
    return settings.profiles["job"]


def expected(
    metric_id: str,
    forced: str | None,
    window_id: str,
    no_gpu: str | None,
    gpu_problem: str | None,
    fallback: str,
) -> tuple[str, str]:
    """(route, action) by the documented rules."""
    if forced is not None:
        return forced, route.RUN
    if metric_id == "no-metric":
        if fallback == "fail":
            return "cpu", route.FAIL
        chosen = fallback
    else:
        chosen = "cpu" if metric_id == "long-input" else "gpu"
    if chosen == "cpu":
        return "cpu", route.RUN
    _hours, outside_hours, _ = WINDOWS[window_id]
    if window_id.startswith("outside"):
        if outside_hours == "cpu":
            return "cpu", route.RUN
        return "gpu", route.BUSY if outside_hours == "busy" else route.WAIT_WINDOW
    if gpu_problem is not None:
        if no_gpu in (None, "cpu"):
            return "cpu", route.RUN
        return "gpu", route.BUSY if no_gpu == "busy" else route.FAIL
    return "gpu", route.RUN


GRID = list(itertools.product(METRICS, FORCED, WINDOWS, NO_GPU, GPU_STATES, FALLBACKS))


@pytest.mark.parametrize(
    ("metric_id", "forced", "window_id", "no_gpu", "gpu_state", "fallback"),
    GRID,
    ids=[f"{m}-forced:{f}-{w}-no_gpu:{n}-{g}-fallback:{b}" for m, f, w, n, g, b in GRID],
)
def test_the_route_follows_the_rules_in_their_order(
    metric_id: str, forced: str | None, window_id: str, no_gpu: str | None, gpu_state: str, fallback: str
) -> None:
    hours, outside_hours, minute = WINDOWS[window_id]
    profile = profile_for(hours, outside_hours, no_gpu, fallback, probed=metric_id != "no-probe")
    gpu_problem = GPU_STATES[gpu_state]
    chosen = route.choose_route(
        profile,
        METRICS[metric_id],
        forced,
        "--route" if forced else None,
        minute_of_day=minute,
        gpu_problem=gpu_problem,
    )
    assert (chosen.name, chosen.action) == expected(
        metric_id, forced, window_id, no_gpu, gpu_problem, fallback
    )
    assert chosen.spec is profile.route(chosen.name)
    assert chosen.reason  # every outcome says why


@pytest.mark.parametrize(
    ("metric", "reason"),
    [
        (2.0, "duration 2s < threshold 5s"),
        (5.0, "duration 5s >= threshold 5s"),
        (8.0, "duration 8s >= threshold 5s"),
    ],
    ids=["below", "at-the-threshold-is-cpu", "above"],
)
def test_the_reason_names_the_metric_and_the_threshold(metric: float, reason: str) -> None:
    profile = profile_for(None, "cpu", None, "cpu", probed=True)
    probe = ProbeResult(input="a.wav", metric=metric, kind="duration", via="native:wav", problem=None)
    assert route.choose_route(profile, probe).reason == reason


@pytest.mark.parametrize(
    ("position", "argv"),
    [("append", ["job", "in.wav", "--device", "cuda"]), ("prepend", ["job", "--device", "cuda", "in.wav"])],
)
def test_route_args_land_where_the_profile_says(position: str, argv: list[str]) -> None:
    settings = validate(
        {
            "lock_dir": "/tmp/grid",
            "profiles": {"job": {"gpu": {"args": ["--device", "cuda"], "args_position": position}}},
        },
        "grid.toml",
        None,
    )
    assert route.job_argv(["job", "in.wav"], settings.profiles["job"].gpu) == argv


def _decide(environ: dict[str, str], table: dict[str, object] | None = None, forced: str | None = None):  # type: ignore[no-untyped-def]
    from gpurouter.job import decision

    settings = validate({"lock_dir": "/tmp/grid", "profiles": {"job": table or {}}}, "grid.toml", None)
    return decision.decide(
        settings,
        settings.profiles["job"],
        ["job", "x"],
        "/bin/true",
        decision.forced_route(forced, environ),
        environ,
    )


@pytest.mark.parametrize(
    ("environ", "no_slot_because"),
    [
        ({}, None),
        ({"GPUROUTER_SKIP_LOCK": "1"}, "GPUROUTER_SKIP_LOCK=1"),
        ({"GPUROUTER_SKIP_LOCK": "0"}, None),
        ({"GPUROUTER_HELD": "cpu,gpu"}, "pool 'gpu' is held by a parent gpurouter (GPUROUTER_HELD)"),
        ({"GPUROUTER_HELD": "gpu_small"}, None),
    ],
    ids=["free", "skip-lock", "skip-lock-off", "held-by-a-parent", "a-pool-named-alike-is-another-pool"],
)
def test_decide_takes_no_slot_only_when_told_or_already_held(
    environ: dict[str, str], no_slot_because: str | None
) -> None:
    assert _decide(environ).no_slot_because == no_slot_because


def test_decide_forced_by_the_environment_names_who_forced_it() -> None:
    chosen = _decide({"GPUROUTER_ROUTE": "cpu"})
    assert (chosen.route, chosen.reason, chosen.pool) == ("cpu", "forced by GPUROUTER_ROUTE", "cpu")


def test_decide_caps_threads_unless_the_caller_set_them() -> None:
    chosen = _decide({"OMP_NUM_THREADS": "1"}, {"cpu": {"threads": 4}}, forced="cpu")
    assert "OMP_NUM_THREADS" not in chosen.env and chosen.env["MKL_NUM_THREADS"] == "4"


def test_decide_rejects_a_forced_route_that_is_not_gpu_or_cpu() -> None:
    from gpurouter.errors import UsageError

    with pytest.raises(UsageError, match="GPUROUTER_ROUTE must be gpu or cpu"):
        _decide({"GPUROUTER_ROUTE": "tpu"})
