"""The decision for one job: probe, route and the slot rules, before anything is taken.

`decide` takes nothing and runs nothing; `admission.acquire` carries a decision out.
"""

from __future__ import annotations

import os

from gpurouter.errors import UsageError
from gpurouter.job import guard, route
from gpurouter.job.records import Record
from gpurouter.job.settings import ROUTES
from gpurouter.job.units import format_wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from gpurouter.job.route import Action
    from gpurouter.job.settings import Profile, RouteName, RouteSpec, Settings

HELD_VAR = "GPUROUTER_HELD"
ROUTED_VAR = "GPUROUTER_ROUTED"  # the profile a parent gpurouter already routed (its args are in argv)
SKIP_VAR = "GPUROUTER_SKIP_LOCK"


class Decision(Record):
    """Everything decided for one job before a slot is taken."""

    __slots__ = (
        "profile",
        "route",
        "reason",
        "metric",
        "kind",
        "via",
        "input",
        "executable",
        "argv",
        "pool",
        "slots",
        "wait_s",
        "env",
        "no_slot_because",
        "spec",
        "rules",
        "action",
        "base_argv",
        "need_mib",
        "gpu_count",
        "input_at",
    )
    profile: str
    route: RouteName  # a no_input pass carries the CPU route's name but takes none: see `taken_route`
    reason: str
    metric: float | None
    kind: str | None
    via: str | None
    input: str | None
    executable: str
    argv: list[str]
    pool: str
    slots: int
    wait_s: float
    env: dict[str, str]  # variables the job gets on top of the caller's environment
    no_slot_because: str | None  # GPUROUTER_SKIP_LOCK or a held pool: take no slot
    spec: RouteSpec
    rules: Profile
    action: Action
    base_argv: list[str]  # the job's argv before route args
    need_mib: int | None  # device mode: VRAM per device (None: not device-aware)
    gpu_count: int | None  # device mode: devices per job (None: not device-aware)
    input_at: int | None  # where input_args go in base_argv[1:] (probe.locate_input); None: no input

    @property
    def taken_route(self) -> str | None:
        """The route the job takes, None for a no_input pass (it takes no route, pool or slot)."""
        return None if self.action == route.NO_INPUT else self.route

    @property
    def device_mode(self) -> bool:
        """Does this GPU job pick devices by free VRAM (vram_mib or gpus configured)?"""
        return self.route == "gpu" and self.gpu_count is not None

    def summary(self) -> dict[str, Any]:
        """The decision as JSON-ready data (for `route --json` and the journal)."""
        return {
            "profile": self.profile,
            "route": self.taken_route,
            "reason": self.reason,
            "metric": self.metric,
            "kind": self.kind,
            "via": self.via,
            "input": self.input,
            "executable": self.executable,
            "argv": self.argv,
            "pool": self.pool if self.taken_route else None,
            "slots": self.slots,
            "wait": format_wait(self.wait_s),
            "env": self.env,
            "action": self.action,
            "priority": self.rules.priority,
            "gpus": self.gpu_count,
            "vram_mib": self.need_mib,
            "slot": None if self.no_slot_because else "pending",
            "no_slot_because": self.no_slot_because,
        }


def routed_value(profile: str, route_name: str, command: str) -> str:
    """GPUROUTER_ROUTED for a job: 'PROFILE:ROUTE:COMMAND-NAME'."""
    return f"{profile}:{route_name}:{os.path.basename(command)}"


def parse_routed(value: str) -> tuple[str, RouteName | None, str]:
    """(profile, route, command name) from GPUROUTER_ROUTED; ("", None, "") when absent or foreign."""
    for route_name in ROUTES:  # split at the route: profile names may hold ':' themselves
        profile, marker, command = value.partition(f":{route_name}:")
        if marker:
            return profile, route_name, command
    return "", None, ""


def held_pools(environ: Mapping[str, str]) -> list[str]:
    """Pools an ancestor holds, from GPUROUTER_HELD ('gpu,cpu')."""
    return [p for p in environ.get(HELD_VAR, "").split(",") if p]


def holds_device_of(held: Sequence[str], pool: str) -> bool:
    """Does an ancestor hold a device slot of `pool` (`<pool><index>`, as placement.device_pool names them)?

    Matched exactly (issue 12, item 4): a prefix test took a parent's `gpu_small` for a `gpu` device,
    and the nested device-mode call then ran with no slot and no CUDA_VISIBLE_DEVICES.
    """
    size = len(pool)
    return any(
        len(p) > size and p.startswith(pool) and p[size:].isascii() and p[size:].isdigit() for p in held
    )


def forced_route(option: str | None, environ: Mapping[str, str]) -> tuple[RouteName | None, str | None]:
    """(route, who forced it) from `--route` or GPUROUTER_ROUTE.

    Raises:
        UsageError: a value other than gpu or cpu.
    """
    for value, origin in ((option, "--route"), (environ.get("GPUROUTER_ROUTE"), "GPUROUTER_ROUTE")):
        if value:
            if value == "gpu":
                return "gpu", origin
            if value == "cpu":
                return "cpu", origin
            raise UsageError(f"{origin} must be gpu or cpu, got {value!r}")
    return None, None


def gpu_problem(settings: Settings, environ: Mapping[str, str]) -> str | None:
    """Why no GPU is usable on this box, or None (queries NVML or the device file)."""
    if not settings.gpu.enabled:
        return "gpu.enabled = false"
    from gpurouter.gpu import nvml  # deferred: only profiles that ask about the GPU pay for it

    query = nvml.query_gpus(environ)
    if not query.gpus:
        return query.message or "no GPU found"
    return None


def decide(
    settings: Settings,
    profile: Profile,
    argv: Sequence[str],
    executable: str,
    forced: tuple[RouteName | None, str | None] = (None, None),
    environ: Mapping[str, str] | None = None,
    intercepted: bool = False,
) -> Decision:
    """Probe and route one job; takes nothing and runs nothing.

    Raises:
        ProbeRefused: no metric under `fallback = "fail"`.
    """
    env_in = os.environ if environ is None else environ
    parent_profile, parent_route, parent_command = parse_routed(env_in.get(ROUTED_VAR, ""))
    if intercepted and parent_profile == profile.name and parent_command == os.path.basename(argv[0]):
        # `gpurouter run -- NAME` where NAME is itself an intercepting link: the parent already
        # probed, added the route args and holds the slot. Only the interception form passes
        # through; a nested `gpurouter run` routes as usual (and takes no slot of a held pool).
        return _pass_through(profile, argv, executable, parent_route or "gpu")
    input_at = None
    if profile.no_input == "pass" or profile.gpu.input_args or profile.cpu.input_args:
        from gpurouter.job.probe import locate_input

        # The same selection the probe makes (probe.locate_input), so the options land where it looked.
        located, input_at, _ = locate_input(argv[1:], profile.input)
        if located is None and profile.no_input == "pass":
            return _no_input(profile, argv, executable)
    result = None
    if not forced[0] and profile.probe is not None:
        from gpurouter.job.probe import probe_job  # deferred: a forced route or a probe-less profile skips it

        result = probe_job(profile, argv[1:], settings)
    auto_why = None
    if profile.threshold_text == "auto" and result is not None and result.metric is not None:
        from gpurouter.gpu import fit  # deferred: only threshold = "auto" reads the fit and the GPUs

        threshold, auto_why = fit.threshold(settings, profile, env_in)
        if threshold is None:
            result = result.replace(metric=None, problem=auto_why)  # no evidence yet: the profile's fallback
            auto_why = None
        else:
            profile = profile.replace(threshold=threshold)
    minute = None
    if profile.hours is not None:
        import time

        now = time.localtime()
        minute = now.tm_hour * 60 + now.tm_min
    chosen = route.choose_route(profile, result, *forced, minute_of_day=minute)
    if auto_why is not None and not forced[0]:
        chosen = chosen.replace(reason=f"{chosen.reason} ({auto_why})")
    if (
        chosen.name == "gpu"
        and chosen.action == route.RUN
        and not forced[0]
        and settings.backend.kind == "local"
        and (profile.no_gpu is not None or not settings.gpu.enabled)
    ):  # on Slurm the cluster knows the GPUs
        problem = gpu_problem(settings, env_in)
        if problem is not None:
            chosen = route.choose_route(profile, result, minute_of_day=minute, gpu_problem=problem)
    if (
        chosen.name == "gpu"
        and chosen.action == route.RUN
        and not forced[0]
        and profile.on_gpu_oom == "cpu"
        and result is not None
        and result.input is not None
    ):
        from gpurouter.job import probe_cache  # loaded by the probe already

        oom = probe_cache.recall_oom(settings.lock_dir, result.input)
        if oom is not None:  # it died of GPU OOM before: the runner's retry must not meet the same OOM
            chosen = route.Route(
                name="cpu", spec=profile.cpu, reason=f"{chosen.reason}; {oom}: cpu", action=route.RUN
            )
    spec = chosen.spec
    no_slot = None
    if env_in.get(SKIP_VAR, "") not in ("", "0"):
        no_slot = f"{SKIP_VAR}={env_in[SKIP_VAR]}"
    elif spec.pool in held_pools(env_in):
        no_slot = f"pool {spec.pool!r} is held by a parent gpurouter ({HELD_VAR})"
    env = {k: v for k, v in spec.env.items() if k not in env_in}  # the caller's explicit setting wins
    env.update(guard.thread_env(spec.guard, env_in))
    need_mib, gpu_count = None, None
    if chosen.name == "gpu" and (spec.vram_mib is not None or spec.gpus is not None):
        from gpurouter.gpu import parallelism

        gpu_count, need_mib = parallelism.requirements(spec, argv[1:], settings.gpu)
        if holds_device_of(held_pools(env_in), spec.pool):
            no_slot = no_slot or f"a {spec.pool} device is held by a parent gpurouter ({HELD_VAR})"
    return Decision(
        profile=profile.name,
        route=chosen.name,
        reason=chosen.reason,
        metric=None if result is None else result.metric,
        kind=None if result is None else result.kind,
        via=None if result is None else result.via,
        input=None if result is None else result.input,
        executable=executable,
        argv=route.job_argv(argv, spec, input_at),
        pool=spec.pool,
        slots=spec.slots,
        wait_s=profile.wait_s,
        env=env,
        no_slot_because=no_slot,
        spec=spec,
        rules=profile,
        action=chosen.action,
        base_argv=list(argv),
        need_mib=need_mib,
        gpu_count=gpu_count,
        input_at=input_at,
    )


def _no_input(profile: Profile, argv: Sequence[str], executable: str) -> Decision:
    """`no_input = "pass"` and the job has no input argument at all (`ffmpeg -version`): exec it untouched,
    with no probe, no slot and no route args (issue 14)."""
    reason = f"no input argument ({profile.input}): no_input = pass"
    return _untouched(
        profile, argv, executable, profile.cpu, reason, "no input argument (no_input = pass)", route.NO_INPUT
    )


def _pass_through(
    profile: Profile, argv: Sequence[str], executable: str, parent_route: RouteName
) -> Decision:
    """A nested call of a profile its parent gpurouter already routed (e.g. `run -- NAME` where NAME is
    itself an intercepting link): the parent probed, added the route args and holds the slot, so
    this call execs the real binary with the argv untouched."""
    spec = profile.route(parent_route)
    reason = f"already routed by a parent gpurouter ({ROUTED_VAR})"
    return _untouched(
        profile, argv, executable, spec, reason, "already routed by a parent gpurouter", route.PASS
    )


def _untouched(
    profile: Profile,
    argv: Sequence[str],
    executable: str,
    spec: RouteSpec,
    reason: str,
    no_slot_because: str,
    action: Action,
) -> Decision:
    """A decision that execs the job as it came: no probe, no slot, no route args."""
    return Decision(
        profile=profile.name,
        route=spec.name,
        reason=reason,
        metric=None,
        kind=None,
        via=None,
        input=None,
        executable=executable,
        argv=list(argv),
        pool=spec.pool,
        slots=0 if action == route.NO_INPUT else spec.slots,
        wait_s=0.0,
        env={},
        no_slot_because=no_slot_because,
        spec=spec,
        rules=profile,
        action=action,
        base_argv=list(argv),
        need_mib=None,
        gpu_count=None,
        input_at=None,
    )
