"""Validation: a parsed TOML document into `Settings`, or a ConfigError naming the file, the key and
the problem (exit 78). Every key is checked up front, before any slot is taken.
"""

from __future__ import annotations

import os

from gpurouter.errors import ConfigError
from gpurouter.job import units
from gpurouter.job.config_values import check_keys, choice, duration, opt_int, string, sub_table
from gpurouter.job.settings import (
    ARGS_POSITIONS,
    BUILTIN,
    DEFAULT_GPU_ERROR_PATTERNS,
    DEFAULT_OOM_PATTERNS,
    DEFAULTS,
    FALLBACKS,
    GPU_WHEN,
    GUARD_DEFAULTS,
    NO_INPUT,
    ON_LOW_VRAM,
    PRIORITIES,
    PROBES,
    PROFILE_DEFAULTS,
    ROUTE_DEFAULTS,
    ROUTES,
    Guard,
    Profile,
    RouteSpec,
    Settings,
)
from gpurouter.job.units import is_safe_name, parse_cpus, parse_hours, parse_ionice, parse_wait
from gpurouter.job.validate_box import build_backend, build_gpu, build_residents

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from gpurouter.job.settings import RouteName


def validate(document: Mapping[str, Any], source: str, path: str | None) -> Settings:
    """Turn a parsed TOML document into `Settings`, or raise `ConfigError` naming the key.

    Raises:
        ConfigError: a key is unknown or a value has the wrong type or form.
    """
    tables = ("profiles", "gpu", "residents", "backend")
    check_keys(document, set(DEFAULTS) | set(tables), "", source)
    merged = {**DEFAULTS, **{k: v for k, v in document.items() if k not in tables}}
    sources = {key: source for key in document if key not in tables}

    lock_dir = string(merged, "lock_dir", "", source)
    if not os.path.isabs(lock_dir):
        raise ConfigError(
            source, "lock_dir", f"must be an absolute path (jobs start in many directories), got {lock_dir!r}"
        )
    journal = merged.get("journal")
    if journal is None:
        journal = os.path.join(lock_dir, "journal.jsonl")
    if not isinstance(journal, str):
        raise ConfigError(
            source, "journal", f'must be a path string ("" turns the journal off), got {journal!r}'
        )
    if journal and not os.path.isabs(journal):
        raise ConfigError(source, "journal", f"must be an absolute path, got {journal!r}")
    busy = merged["busy_exit_code"]
    if isinstance(busy, bool) or not isinstance(busy, int) or not 1 <= busy <= 255:
        raise ConfigError(source, "busy_exit_code", f"must be an integer from 1 to 255, got {busy!r}")
    probe_cache = merged["probe_cache"]
    if not isinstance(probe_cache, bool):
        raise ConfigError(source, "probe_cache", f"must be true or false, got {probe_cache!r}")
    timeout_s = duration(merged, "probe_timeout", "", source)
    if timeout_s <= 0:
        raise ConfigError(source, "probe_timeout", "must be longer than 0s")

    raw_profiles = document.get("profiles", {})
    if not isinstance(raw_profiles, dict):
        raise ConfigError(source, "profiles", "must be a table of [profiles.NAME] tables")
    profiles = {}
    for name, table in raw_profiles.items():
        if not isinstance(table, dict):
            raise ConfigError(source, f"profiles.{name}", "must be a table")
        if not name or "/" in name or "\0" in name:
            raise ConfigError(source, f"profiles.{name}", "a profile name must be a non-empty command name")
        profiles[name] = build_profile(name, table, source)
        sources.update(_key_sources(table, f"profiles.{name}", source))
    for table_name in ("gpu", "backend"):
        sources.update(_key_sources(document.get(table_name) or {}, table_name, source))
    return Settings(
        path=path,
        lock_dir=lock_dir,
        journal=journal or None,
        busy_exit_code=busy,
        ffprobe=string(merged, "ffprobe", "", source),
        probe_timeout_s=timeout_s,
        probe_cache=probe_cache,
        profiles=profiles,
        default_profile=profiles.get("default") or build_profile("default", {}, BUILTIN),
        sources=sources,
        gpu=build_gpu(sub_table(document, "gpu", source), source),
        residents=build_residents(sub_table(document, "residents", source), source),
        backend=build_backend(sub_table(document, "backend", source), source),
    )


def _key_sources(table: Mapping[str, Any], prefix: str, source: str) -> dict[str, str]:
    found = {}
    for key, value in table.items():
        if isinstance(value, dict) and key in ROUTES:
            found.update(_key_sources(value, f"{prefix}.{key}", source))
        else:
            found[f"{prefix}.{key}"] = source
    return found


def build_profile(name: str, table: Mapping[str, Any], source: str) -> Profile:
    where = f"profiles.{name}"
    check_keys(table, set(PROFILE_DEFAULTS) | set(ROUTES) | {"escape"}, where, source)
    merged = {**PROFILE_DEFAULTS, **table}

    binary = merged["binary"]
    if binary is not None and (not isinstance(binary, str) or not binary):
        raise ConfigError(source, f"{where}.binary", f"must be a path string, got {binary!r}")
    probe = merged["probe"]
    if probe is not None and probe not in PROBES:
        raise ConfigError(source, f"{where}.probe", f"must be one of {', '.join(PROBES)}, got {probe!r}")
    probe_command = merged["probe_command"]
    if probe == "command":
        if (
            not isinstance(probe_command, list)
            or not probe_command
            or not all(isinstance(a, str) and a for a in probe_command)
        ):
            raise ConfigError(
                source,
                f"{where}.probe_command",
                'probe = "command" needs probe_command = ["program", "arg", ...]',
            )
        probe_command = tuple(probe_command)
    elif probe_command is not None:
        raise ConfigError(source, f"{where}.probe_command", 'only used with probe = "command"')

    threshold_text = merged["threshold"]
    threshold = None
    if probe is None and threshold_text is not None:
        raise ConfigError(source, f"{where}.threshold", "has no effect without a probe; set probe too")
    if probe is not None:
        if threshold_text is None:
            raise ConfigError(source, f"{where}.threshold", f"is required with probe = {probe!r}")
        if threshold_text == "auto":
            threshold = (
                None  # decided per job from the fit of monitored runs and live free VRAM (autotune.py)
            )
        else:
            try:
                threshold = units.parse_threshold(threshold_text, probe)
            except ValueError as error:
                raise ConfigError(source, f"{where}.threshold", str(error)) from None
        threshold_text = str(threshold_text)
    threshold_start = None
    start_text = merged["threshold_start"]
    if start_text is not None:
        if threshold_text != "auto":
            raise ConfigError(source, f"{where}.threshold_start", 'is only used with threshold = "auto"')
        try:
            threshold_start = units.parse_threshold(start_text, probe)
        except ValueError as error:
            raise ConfigError(source, f"{where}.threshold_start", str(error)) from None

    input_rule = merged["input"]
    if isinstance(input_rule, bool) or not isinstance(input_rule, (str, int)) or input_rule == "":
        raise ConfigError(
            source,
            f"{where}.input",
            f'must be "last", "first", an argument index or a flag like "--input", got {input_rule!r}',
        )
    if isinstance(input_rule, str) and input_rule not in ("last", "first") and not input_rule.startswith("-"):
        raise ConfigError(
            source,
            f"{where}.input",
            f'must be "last", "first", an argument index or a flag like "--input", got {input_rule!r}',
        )

    fallback = merged["fallback"]
    if fallback not in FALLBACKS:
        raise ConfigError(
            source, f"{where}.fallback", f"must be one of {', '.join(FALLBACKS)}, got {fallback!r}"
        )
    try:
        wait_s = parse_wait(merged["wait"])
    except ValueError as error:
        raise ConfigError(source, f"{where}.wait", str(error)) from None

    routes = {
        route: _build_route(route, table.get(route, {}), f"{where}.{route}", source) for route in ROUTES
    }
    max_wait = merged["max_wait"]
    max_wait_s = None if max_wait is None else duration(merged, "max_wait", where, source)
    escape = _build_guard(sub_table(table, "escape", source, where), f"{where}.escape", source)
    hours_text = merged["hours"]
    hours = None
    if hours_text is not None:
        if not isinstance(hours_text, str):
            raise ConfigError(
                source, f"{where}.hours", f'must be a string like "18:00-09:00", got {hours_text!r}'
            )
        try:
            hours = parse_hours(hours_text)
        except ValueError as error:
            raise ConfigError(source, f"{where}.hours", str(error)) from None
    patterns = merged["oom_patterns"]
    if patterns is None:
        patterns = list(DEFAULT_OOM_PATTERNS)
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise ConfigError(
            source, f"{where}.oom_patterns", f"must be a list of non-empty strings, got {patterns!r}"
        )
    monitor = merged["monitor"]
    if not isinstance(monitor, bool):
        raise ConfigError(source, f"{where}.monitor", f"must be true or false, got {monitor!r}")
    error_patterns = merged["gpu_error_patterns"]
    if error_patterns is None:
        error_patterns = list(DEFAULT_GPU_ERROR_PATTERNS)
    if not isinstance(error_patterns, list) or not all(isinstance(p, str) and p for p in error_patterns):
        raise ConfigError(
            source,
            f"{where}.gpu_error_patterns",
            f"must be a list of non-empty strings, got {error_patterns!r}",
        )
    interval = duration(merged, "monitor_interval", where, source)
    if not 0.05 <= interval <= 3600:
        raise ConfigError(source, f"{where}.monitor_interval", "must be between 50ms and 1h")
    return Profile(
        name=name,
        binary=binary,
        probe=probe,
        probe_command=probe_command,
        threshold=threshold,
        threshold_text=threshold_text,
        threshold_start=threshold_start,
        input=input_rule,
        fallback=fallback,
        wait_s=wait_s,
        gpu=routes["gpu"],
        cpu=routes["cpu"],
        max_wait_s=max_wait_s,
        escape=escape,
        priority=choice(merged, "priority", (*PRIORITIES, None), where, source),
        batch_yields=choice(merged, "batch_yields", ("waiting", "running"), where, source),
        hours=hours,
        hours_text=hours_text,
        outside_hours=choice(merged, "outside_hours", ("cpu", "busy", "wait"), where, source),
        no_gpu=choice(merged, "no_gpu", ("cpu", "busy", "fail", None), where, source),
        monitor=monitor,
        monitor_interval_s=interval,
        on_gpu_oom=choice(merged, "on_gpu_oom", ("cpu", None), where, source),
        oom_patterns=tuple(patterns),
        no_input=choice(merged, "no_input", NO_INPUT, where, source),
        gpu_when=choice(merged, "gpu_when", GPU_WHEN, where, source),
        on_gpu_error=choice(merged, "on_gpu_error", ("cpu", None), where, source),
        gpu_error_patterns=tuple((p, DEFAULT_GPU_ERROR_PATTERNS.get(p, "custom")) for p in error_patterns),
    )


def _build_route(name: RouteName, table: object, where: str, source: str) -> RouteSpec:
    if not isinstance(table, dict):
        raise ConfigError(source, where, "must be a table")
    check_keys(table, set(ROUTE_DEFAULTS), where, source)
    merged = {**ROUTE_DEFAULTS, **table}
    args = merged["args"]
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ConfigError(source, f"{where}.args", f"must be a list of strings, got {args!r}")
    slots = merged["slots"]
    if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= 1024:
        raise ConfigError(source, f"{where}.slots", f"must be an integer from 1 to 1024, got {slots!r}")
    pool = merged["pool"] if merged["pool"] is not None else name
    if not isinstance(pool, str) or not is_safe_name(pool):
        raise ConfigError(
            source, f"{where}.pool", f"must be a name of letters, digits, '-' and '_', got {merged['pool']!r}"
        )
    position = merged["args_position"]
    if position not in ARGS_POSITIONS:
        raise ConfigError(
            source, f"{where}.args_position", f"must be one of {', '.join(ARGS_POSITIONS)}, got {position!r}"
        )
    input_args = merged["input_args"]
    if not isinstance(input_args, list) or not all(isinstance(a, str) for a in input_args):
        raise ConfigError(source, f"{where}.input_args", f"must be a list of strings, got {input_args!r}")
    env = merged["env"]
    if not isinstance(env, dict) or not all(
        isinstance(v, str) and k and "=" not in k for k, v in env.items()
    ):
        raise ConfigError(source, f"{where}.env", f'must be a table of NAME = "value" strings, got {env!r}')
    guard = _build_guard({k: v for k, v in table.items() if k in GUARD_DEFAULTS}, where, source)
    vram = merged["vram_mib"]
    if (
        vram is not None
        and vram != "auto"
        and (isinstance(vram, bool) or not isinstance(vram, int) or not 1 <= vram <= 1 << 24)
    ):  # a 400-digit int (issue 12)
        raise ConfigError(
            source,
            f"{where}.vram_mib",
            f'must be MiB per device (an integer from 1 to 16777216) or "auto", got {vram!r}',
        )
    gpus = merged["gpus"]
    if (
        gpus is not None
        and gpus != "auto"
        and (isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= 64)
    ):
        raise ConfigError(
            source, f"{where}.gpus", f'must be a device count from 1 to 64 or "auto", got {gpus!r}'
        )
    return RouteSpec(
        name=name,
        args=tuple(args),
        slots=slots,
        pool=pool,
        args_position=position,
        env=dict(env),
        guard=guard,
        ram_mib=opt_int(merged, "ram_mib", 1, 1 << 30, where, source),
        vram_mib=vram,
        gpus=gpus,
        on_low_vram=choice(merged, "on_low_vram", ON_LOW_VRAM, where, source),
        input_args=tuple(input_args),
    )


def _build_guard(table: Mapping[str, Any], where: str, source: str) -> Guard:
    check_keys(table, set(GUARD_DEFAULTS), where, source)
    merged = {**GUARD_DEFAULTS, **table}
    ionice = merged["ionice"]
    if ionice is not None:
        try:
            parse_ionice(ionice)
        except ValueError as error:
            raise ConfigError(source, f"{where}.ionice", str(error)) from None
    cpus = merged["cpus"]
    if cpus is not None:
        try:
            parse_cpus(cpus)
        except ValueError as error:
            raise ConfigError(source, f"{where}.cpus", str(error)) from None
    force_env = merged["force_env"]
    if not isinstance(force_env, bool):
        raise ConfigError(source, f"{where}.force_env", f"must be true or false, got {force_env!r}")
    return Guard(
        threads=opt_int(merged, "threads", 1, 4096, where, source),
        nice=opt_int(merged, "nice", -20, 19, where, source),
        ionice=ionice,
        cpus=cpus,
        force_env=force_env,
    )
