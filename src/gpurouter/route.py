"""The routing decision: a pure function of the profile, the probe result and any force.

No I/O and no clock here, so every rule is testable with plain values.
"""

from __future__ import annotations

from gpurouter import units
from gpurouter._record import Record
from gpurouter.errors import ProbeRefused

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Sequence

    from gpurouter.config import Profile, RouteSpec
    from gpurouter.probe import ProbeResult


class Route(Record):
    """The route taken and why."""

    __slots__ = ("name", "spec", "reason")
    name: str  # gpu | cpu
    spec: RouteSpec
    reason: str


def choose_route(profile: Profile, probe: ProbeResult | None, forced: str | None = None,
                 forced_by: str | None = None) -> Route:  # fmt: skip
    """GPU when metric < threshold, else CPU; forced routes and fallbacks as configured.

    Raises:
        ProbeRefused: no metric and the profile says `fallback = "fail"`.
    """
    if forced is not None:
        return Route(name=forced, spec=profile.route(forced), reason=f"forced by {forced_by or 'caller'}")
    if probe is None or profile.threshold is None:
        return Route(name="gpu", spec=profile.gpu, reason="no probe configured")
    if probe.metric is None:
        if profile.fallback == "fail":
            raise ProbeRefused(f"no metric for profile {profile.name!r} ({probe.problem}) and fallback = \"fail\"")
        return Route(name=profile.fallback, spec=profile.route(profile.fallback),
                     reason=f"no metric ({probe.problem}): fallback {profile.fallback}")  # fmt: skip
    shown = units.format_metric(probe.metric, probe.kind)
    limit = units.format_metric(profile.threshold, probe.kind)
    if probe.metric < profile.threshold:
        return Route(name="gpu", spec=profile.gpu, reason=f"{probe.kind} {shown} < threshold {limit}")
    return Route(name="cpu", spec=profile.cpu, reason=f"{probe.kind} {shown} >= threshold {limit}")


def job_argv(argv: Sequence[str], spec: RouteSpec) -> list[str]:
    """The job's argv with the route's args appended (or prepended after the command)."""
    if spec.args_position == "prepend":
        return [argv[0], *spec.args, *argv[1:]]
    return [*argv, *spec.args]
