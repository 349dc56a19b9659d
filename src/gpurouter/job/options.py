"""The options of `run` and `route`: one table, a stdlib parser for the hot path, overrides.

`gpurouter run` sits in front of every job and must not pay ~40-70 ms for click, so its
arguments are parsed here by hand. `cli.py` builds the click options (for `--help` and
the other commands) from the same table, so there is one source of truth.
"""

from __future__ import annotations

import os

from gpurouter.errors import ConfigError, UsageError
from gpurouter.job import units
from gpurouter.job.settings import PROBES, ROUTES
from gpurouter.job.units import parse_wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from gpurouter.job.settings import Profile, Settings

# (option, metavar or None for a flag, help)
RUN_OPTIONS: tuple[tuple[str, str | None, str], ...] = (
    (
        "--profile",
        "NAME",
        "Profile to use (default: $GPUROUTER_PROFILE, else COMMAND's name if such a "
        "profile exists, else 'default').",
    ),
    ("--route", "gpu|cpu", "Force the route, skipping the probe (also $GPUROUTER_ROUTE)."),
    ("--probe", "duration|size|pixels|command", "Probe to measure the input with."),
    ("--threshold", "VALUE", "GPU when the metric is below this (e.g. 1h, 500MB, 1920x1080)."),
    ("--gpu-args", "ARGS", "Arguments added on the GPU route (shell-split)."),
    ("--cpu-args", "ARGS", "Arguments added on the CPU route (shell-split)."),
    ("--gpu-slots", "N", "GPU slots this job may use."),
    ("--cpu-slots", "N", "CPU slots this job may use."),
    ("--wait", "fail|block|DURATION", "Fail fast (exit 75), block, or wait up to DURATION for a slot."),
    ("--config", "FILE", "Configuration file (default: $GPUROUTER_CONFIG, XDG, /etc)."),
    ("--monitor", None, "Run the job as a child: forward signals, sample the GPUs, journal an `end` event."),
    ("--verbose", None, "Say the decision and any wait on stderr."),
)
_VALUED = {name: metavar for name, metavar, _ in RUN_OPTIONS if metavar is not None}
_FLAGS = {name for name, metavar, _ in RUN_OPTIONS if metavar is None}


class NeedsClick(Exception):
    """The arguments need click's full treatment (help, or an error message in click's form)."""


def parse_run_args(args: Sequence[str]) -> tuple[dict[str, str | bool], list[str]]:
    """Split `run` arguments into ({option: value}, command argv); stops at the first non-option.

    Raises:
        NeedsClick: --help, an unknown option or a missing value (click then reports it, exit 2).
    """
    options: dict[str, str | bool] = {}
    position = 0
    while position < len(args):
        arg = args[position]
        if arg == "--":
            position += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, has_value, value = arg.partition("=")
        if name in _FLAGS and not has_value:
            options[name[2:]] = True
        elif name in _VALUED:
            if not has_value:
                position += 1
                if position >= len(args):
                    raise NeedsClick(arg)
                value = args[position]
            options[name[2:].replace("-", "_")] = value
        else:
            raise NeedsClick(arg)
        position += 1
    return options, list(args[position:])


def pick_profile(
    settings: Settings, command: str, named: str | None, environ: Mapping[str, str], intercepted: bool = False
) -> Profile:
    """The contract's profile order: --profile, $GPUROUTER_PROFILE, the command's name, 'default'.

    Raises:
        ConfigError: a profile named by --profile or $GPUROUTER_PROFILE is not configured.
    """
    for name, origin in ((named, "--profile"), (environ.get("GPUROUTER_PROFILE"), "GPUROUTER_PROFILE")):
        if name:
            if name not in settings.profiles and name != "default":
                where = settings.path or "the built-in configuration"
                known = ", ".join(sorted(settings.profiles)) or "none"
                raise ConfigError(
                    where, f"profiles.{name}", f"no such profile (named by {origin}; defined: {known})"
                )
            return settings.profile(name)
    base = os.path.basename(command)
    if intercepted or base in settings.profiles:
        return settings.profile(base)
    return settings.profile("default")


def apply_overrides(profile: Profile, options: Mapping[str, str | bool]) -> Profile:
    """The profile with `run`/`route` options applied.

    Raises:
        UsageError: a value that does not parse (exit 2).
    """
    changes: dict[str, object] = {}
    probe = options.get("probe")
    if isinstance(probe, str):
        if probe not in PROBES:
            raise UsageError(f"--probe must be one of {', '.join(PROBES)}, got {probe!r}")
        if probe == "command" and not profile.probe_command:
            raise UsageError(f"--probe command needs probe_command in profile {profile.name!r}")
        changes["probe"] = probe
    threshold = options.get("threshold", profile.threshold_text)
    if "probe" in changes or "threshold" in options:
        if threshold is None:
            raise UsageError("--probe needs a threshold (--threshold, or threshold in the profile)")
        if changes.get("probe", profile.probe) is None:
            raise UsageError("--threshold needs a probe (--probe, or probe in the profile)")
        try:
            changes["threshold"] = units.parse_threshold(
                str(threshold), str(changes.get("probe", profile.probe))
            )
        except ValueError as error:
            raise UsageError(f"--threshold: {error}") from None
        changes["threshold_text"] = str(threshold)
    if options.get("monitor") is True:
        changes["monitor"] = True
    wait = options.get("wait")
    if isinstance(wait, str):
        try:
            changes["wait_s"] = parse_wait(wait)
        except ValueError as error:
            raise UsageError(f"--wait {error}") from None
    for route in ROUTES:
        spec = profile.route(route)
        route_changes: dict[str, object] = {}
        args = options.get(f"{route}_args")
        if isinstance(args, str):
            import shlex  # deferred: ~5 ms, only when the option is used

            try:
                route_changes["args"] = tuple(shlex.split(args))
            except ValueError as error:
                raise UsageError(f"--{route}-args: {error}") from None
        count = options.get(f"{route}_slots")
        if isinstance(count, str):
            digits = count.strip()
            # ASCII only (issue 12): "²".isdigit() is true, and int("²") raises.
            if not (digits.isascii() and digits.isdigit()) or not 1 <= int(digits) <= 1024:
                raise UsageError(f"--{route}-slots must be an integer from 1 to 1024, got {count!r}")
            route_changes["slots"] = int(count)
        if route_changes:
            changes[route] = spec.replace(**route_changes)
    return profile.replace(**changes) if changes else profile
