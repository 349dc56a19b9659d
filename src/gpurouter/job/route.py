"""The routing decision: a pure function of the profile, the probe result, the time of day
and whether a GPU is usable. No I/O and no clock here, so every rule is testable with
plain values.
"""

from __future__ import annotations

from gpurouter.job import units
from gpurouter.job.records import Record
from gpurouter.job.units import within_hours

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Final, Literal

    from gpurouter.job.probe import ProbeResult
    from gpurouter.job.settings import Profile, RouteName, RouteSpec

    # run | refuse busy | refuse (fallback/no_gpu = "fail") | wait for the GPU window | a parent already
    # routed this job (interception inside `run`) | no_input = "pass" with no input argument (issue 14)
    Action = Literal["run", "busy", "fail", "wait-window", "pass-through", "pass"]

RUN: Final = "run"
BUSY: Final = "busy"
FAIL: Final = "fail"
WAIT_WINDOW: Final = "wait-window"
PASS: Final = "pass-through"
NO_INPUT: Final = "pass"  # no_input = "pass" and no input argument: exec untouched, no slot (issue 14)


class Route(Record):
    """The route taken, why, and what to do about it (run, refuse busy, fail, wait for the window)."""

    __slots__ = ("name", "spec", "reason", "action")
    name: RouteName
    spec: RouteSpec
    reason: str
    action: Action


def choose_route(
    profile: Profile,
    probe: ProbeResult | None,
    forced: RouteName | None = None,
    forced_by: str | None = None,
    minute_of_day: int | None = None,
    gpu_problem: str | None = None,
) -> Route:
    """GPU when metric < threshold, else CPU; then the GPU route's time window and availability.

    Args:
        profile: the rules.
        probe: what the probe found (None: no probe configured or route forced).
        forced: a route forced by `--route` / GPUROUTER_ROUTE (wins over everything).
        forced_by: who forced it, for the reason.
        minute_of_day: local time, for `hours`.
        gpu_problem: why no GPU is usable (None: usable, or not checked).
    """
    if forced is not None:
        return Route(
            name=forced, spec=profile.route(forced), reason=f"forced by {forced_by or 'caller'}", action=RUN
        )
    route = _by_threshold(profile, probe)
    if route.name != "gpu":
        return route
    if (
        profile.hours is not None
        and minute_of_day is not None
        and not within_hours(profile.hours, minute_of_day)
    ):
        why = f"outside hours {profile.hours_text}"
        if profile.outside_hours == "cpu":
            return Route(name="cpu", spec=profile.cpu, reason=f"{route.reason}; {why}: cpu", action=RUN)
        action = BUSY if profile.outside_hours == "busy" else WAIT_WINDOW
        return route.replace(reason=f"{route.reason}; {why}: {profile.outside_hours}", action=action)
    if gpu_problem is not None:
        why = f"no usable GPU ({gpu_problem})"
        if profile.no_gpu in (None, "cpu"):
            return Route(name="cpu", spec=profile.cpu, reason=f"{route.reason}; {why}: cpu", action=RUN)
        return route.replace(
            reason=f"{route.reason}; {why}: no_gpu = {profile.no_gpu}",
            action=BUSY if profile.no_gpu == "busy" else FAIL,
        )
    return route


def _by_threshold(profile: Profile, probe: ProbeResult | None) -> Route:
    if probe is None or (profile.threshold is None and probe.metric is not None):
        return Route(name="gpu", spec=profile.gpu, reason="no probe configured", action=RUN)
    if probe.metric is None:
        if profile.fallback == "fail":
            return Route(
                name="cpu",
                spec=profile.cpu,
                action=FAIL,
                reason=f'no metric ({probe.problem}) and profile {profile.name!r} says fallback = "fail"',
            )
        return Route(
            name=profile.fallback,
            spec=profile.route(profile.fallback),
            reason=f"no metric ({probe.problem}): fallback {profile.fallback}",
            action=RUN,
        )
    assert profile.threshold is not None  # a metric without a threshold returned above
    shown = units.format_human(probe.metric, probe.kind, beside=profile.threshold)
    limit = units.format_metric(profile.threshold, probe.kind)
    below = probe.metric < profile.threshold
    compared = f"{probe.kind} {shown} {'<' if below else '>='} threshold {limit}"
    if profile.gpu_when == "above":  # the GPU for the big jobs where it pays (issue 14)
        name: RouteName = "cpu" if below else "gpu"
        return Route(
            name=name, spec=profile.route(name), reason=f"{compared}: {name} (gpu_when = above)", action=RUN
        )
    name = "gpu" if below else "cpu"
    return Route(name=name, spec=profile.route(name), reason=compared, action=RUN)


def seconds_until_window(hours: Sequence[tuple[int, int]], seconds_of_day: float) -> float:
    """How long until the next range of `hours` opens (0 if inside one now)."""
    minute = int(seconds_of_day // 60) % 1440
    if within_hours(tuple(hours), minute):
        return 0.0
    return min((start * 60 - seconds_of_day) % 86400 for start, _ in hours)


def job_argv(argv: Sequence[str], spec: RouteSpec, input_at: int | None = None) -> list[str]:
    """The job's argv with the route's args placed per `args_position` and its `input_args` before the input.

    Args:
        argv: the job's argv, the command first.
        spec: the route.
        input_at: index into `argv[1:]` to put `input_args` before (`probe.locate_input`); None: the
            job has no input argument, and `input_args` are left out.

    Where both land at one place, the route's args come first: `input_args` always sit right
    before the input (or the flag that introduces it).
    """
    command, args = argv[0], list(argv[1:])
    inserts: dict[int, list[str]] = {}
    if spec.args:
        if spec.args_position == "prepend":
            at = 0
        elif spec.args_position == "before-last":
            at = max(len(args) - 1, 0)  # before ffmpeg's output file; with no argument at all: the only place
        else:
            at = len(args)
        inserts.setdefault(at, []).extend(spec.args)
    if spec.input_args and input_at is not None:
        inserts.setdefault(input_at, []).extend(spec.input_args)
    if not inserts:
        return [command, *args]
    out = [command]
    for position in range(len(args) + 1):
        out.extend(inserts.get(position, ()))
        if position < len(args):
            out.append(args[position])
    return out
