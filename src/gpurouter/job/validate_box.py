"""Validation of the box-wide tables: `[gpu]`, `[residents.NAME]` and `[backend]`."""

from __future__ import annotations

from gpurouter.errors import ConfigError
from gpurouter.job.config_values import check_keys, choice, duration, int_in, opt_int, string
from gpurouter.job.settings import (
    BACKEND_DEFAULTS,
    GPU_DEFAULTS,
    RESIDENT_DEFAULTS,
    SELECTS,
    SLURM_DEFAULTS,
    Backend,
    GpuSettings,
    Resident,
    SlurmSettings,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def build_gpu(table: Mapping[str, Any], source: str) -> GpuSettings:
    check_keys(table, set(GPU_DEFAULTS), "gpu", source)
    merged = {**GPU_DEFAULTS, **table}
    if not isinstance(merged["enabled"], bool):
        raise ConfigError(source, "gpu.enabled", f"must be true or false, got {merged['enabled']!r}")
    devices = merged["devices"]
    if devices is not None:
        if not isinstance(devices, list) or not all(
            (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or (isinstance(d, str) and d)
            for d in devices
        ):
            raise ConfigError(
                source,
                "gpu.devices",
                f'must be a list of indices or UUIDs like [0, "GPU-..."], got {devices!r}',
            )
        devices = tuple(devices)
    estimates = merged["vram_estimates"]
    if not isinstance(estimates, dict) or not all(
        isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v > 0
        for k, v in estimates.items()
    ):
        raise ConfigError(
            source, "gpu.vram_estimates", f'must be a table like {{"70b" = 20000}}, got {estimates!r}'
        )
    default_mib = int_in(merged, "vram_default_mib", 1, 1 << 24, "gpu", source)
    return GpuSettings(
        enabled=merged["enabled"],
        devices=devices,
        select=choice(merged, "select", SELECTS, "gpu", source),
        cushion_mib=int_in(merged, "cushion_mib", 0, 1 << 20, "gpu", source),
        vram_estimates={k.lower(): v for k, v in estimates.items()},
        vram_default_mib=default_mib,
    )


def build_residents(table: Mapping[str, Any], source: str) -> dict[str, Resident]:
    residents = {}
    for name, raw in table.items():
        where = f"residents.{name}"
        if not isinstance(raw, dict):
            raise ConfigError(source, where, "must be a table")
        check_keys(raw, set(RESIDENT_DEFAULTS), where, source)
        merged = {**RESIDENT_DEFAULTS, **raw}
        vram = opt_int(merged, "vram_mib", 1, 1 << 24, where, source)
        if vram is None:
            raise ConfigError(source, f"{where}.vram_mib", "is required: the MiB the service keeps resident")
        for action in ("unload", "load", "status"):
            _check_action(merged[action], f"{where}.{action}", source)
        process = merged["process"]
        if process is not None and (not isinstance(process, str) or not process.strip() or "\0" in process):
            raise ConfigError(
                source,
                f"{where}.process",
                f'must be a process name or pattern like "ollama", got {process!r}',
            )
        coexist = merged["coexist"]
        if not isinstance(coexist, list) or not all(isinstance(c, str) for c in coexist):
            raise ConfigError(source, f"{where}.coexist", f"must be a list of profile names, got {coexist!r}")
        for flag in ("managed",):
            if not isinstance(merged[flag], bool):
                raise ConfigError(source, f"{where}.{flag}", f"must be true or false, got {merged[flag]!r}")
        lazy = merged["lazy"]
        if (
            lazy is None
        ):  # the heuristic of the eviction scheduler we grew from: unload-only services load lazily
            lazy = merged["unload"] is not None and merged["load"] is None and not merged["managed"]
        if not isinstance(lazy, bool):
            raise ConfigError(source, f"{where}.lazy", f"must be true or false, got {lazy!r}")
        residents[name] = Resident(
            name=name,
            vram_mib=vram,
            unload=merged["unload"],
            load=merged["load"],
            coexist=tuple(coexist),
            managed=merged["managed"],
            lazy=lazy,
            device=merged["device"],
            timeout_s=duration(merged, "timeout", where, source),
            process=process,
            status=merged["status"],
        )
    return residents


def _check_action(action: object, where: str, source: str) -> None:
    if action is None:
        return
    shape = '{ http = "METHOD URL", body = "..." } or { command = ["argv", ...] }'
    if not isinstance(action, dict) or not (set(action) <= {"http", "body", "command", "headers"}):
        raise ConfigError(source, where, f"must be {shape}, got {action!r}")
    if ("http" in action) == ("command" in action):
        raise ConfigError(source, where, f"needs exactly one of http or command: {shape}")
    if "http" in action:
        method, _, url = str(action["http"]).partition(" ")
        if not method.isalpha() or not url.startswith(("http://", "https://")):
            raise ConfigError(
                source,
                where,
                'http must be "METHOD URL" like "POST http://127.0.0.1:11434/api/generate", '
                f"got {action['http']!r}",
            )
        if "body" in action and not isinstance(action["body"], str):
            raise ConfigError(source, f"{where}.body", "must be a string (JSON text)")
    else:
        command = action["command"]
        if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
            raise ConfigError(
                source, f"{where}.command", f'must be a list like ["systemctl", "stop", "x"], got {command!r}'
            )


def build_backend(table: Mapping[str, Any], source: str) -> Backend:
    check_keys(table, set(BACKEND_DEFAULTS), "backend", source)
    merged = {**BACKEND_DEFAULTS, **table}
    kind = choice(merged, "kind", ("local", "slurm"), "backend", source)
    slurm = merged["slurm"]
    if not isinstance(slurm, dict):
        raise ConfigError(source, "backend.slurm", "must be a table")
    check_keys(slurm, set(SLURM_DEFAULTS), "backend.slurm", source)
    slurm = {**SLURM_DEFAULTS, **slurm}
    for key in ("partition", "account", "time"):
        if slurm[key] is not None and (not isinstance(slurm[key], str) or not slurm[key]):
            raise ConfigError(
                source, f"backend.slurm.{key}", f"must be a non-empty string, got {slurm[key]!r}"
            )
    if not isinstance(slurm["srun_args"], list) or not all(isinstance(a, str) for a in slurm["srun_args"]):
        raise ConfigError(source, "backend.slurm.srun_args", "must be a list of strings")
    return Backend(
        kind=kind,
        slurm=SlurmSettings(
            partition=slurm["partition"],
            account=slurm["account"],
            srun_args=tuple(slurm["srun_args"]),
            time=slurm["time"],
            srun=string(slurm, "srun", "backend.slurm", source),
        ),
    )
