"""Turn core data (settings, slot rows, stats) into plain data and text for the CLI."""

from __future__ import annotations

from gpurouter.job import units
from gpurouter.job.settings import BUILTIN
from gpurouter.job.units import format_wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from gpurouter.job.settings import Guard, Profile, RouteSpec, Settings
    from gpurouter.observe.status import SlotRow
    from gpurouter.observe.tune import Proposal


def _guard_data(guard: Guard) -> dict[str, Any]:
    return guard.as_dict()


def _route_data(spec: RouteSpec) -> dict[str, Any]:
    return {
        "args": list(spec.args),
        "slots": spec.slots,
        "pool": spec.pool,
        "args_position": spec.args_position,
        "env": dict(spec.env),
        **_guard_data(spec.guard),
        "ram_mib": spec.ram_mib,
        "vram_mib": spec.vram_mib,
        "gpus": spec.gpus,
        "on_low_vram": spec.on_low_vram,
        "input_args": list(spec.input_args),
    }


def _profile_data(profile: Profile) -> dict[str, Any]:
    return {
        "binary": profile.binary,
        "probe": profile.probe,
        "probe_command": list(profile.probe_command) if profile.probe_command else None,
        "threshold": profile.threshold_text,
        "threshold_start": None
        if profile.threshold_start is None
        else units.format_metric(profile.threshold_start, profile.probe),
        "input": profile.input,
        "fallback": profile.fallback,
        "wait": format_wait(profile.wait_s),
        "max_wait": None if profile.max_wait_s is None else units.format_duration(profile.max_wait_s),
        "priority": profile.priority,
        "batch_yields": profile.batch_yields,
        "hours": profile.hours_text,
        "outside_hours": profile.outside_hours,
        "no_gpu": profile.no_gpu,
        "monitor": profile.monitor,
        "monitor_interval": units.format_duration(profile.monitor_interval_s),
        "on_gpu_oom": profile.on_gpu_oom,
        "oom_patterns": list(profile.oom_patterns),
        "no_input": profile.no_input,
        "gpu_when": profile.gpu_when,
        "on_gpu_error": profile.on_gpu_error,
        "gpu_error_patterns": [p for p, _ in profile.gpu_error_patterns],
        "gpu": _route_data(profile.gpu),
        "cpu": _route_data(profile.cpu),
        "escape": _guard_data(profile.escape),
    }


def effective_config(settings: Settings) -> dict[str, Any]:
    """The effective configuration with, for each value, the file that set it (or 'built-in')."""
    values: dict[str, Any] = {
        "lock_dir": settings.lock_dir,
        "journal": settings.journal or "",
        "busy_exit_code": settings.busy_exit_code,
        "ffprobe": settings.ffprobe,
        "probe_timeout": units.format_duration(settings.probe_timeout_s),
        "probe_cache": settings.probe_cache,
        "gpu": {
            **settings.gpu.as_dict(),
            "devices": list(settings.gpu.devices) if settings.gpu.devices else None,
        },
        "backend": {"kind": settings.backend.kind, "slurm": settings.backend.slurm.as_dict()},
        "residents": {
            name: {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.as_dict().items() if k != "name"}
            for name, r in sorted(settings.residents.items())
        },
        "profiles": {name: _profile_data(p) for name, p in sorted(settings.profiles.items())},
    }
    if "default" not in settings.profiles:
        values["profiles"]["default"] = _profile_data(settings.profile("default"))
    sources: dict[str, str] = {}

    def walk(prefix: str, node: dict[str, Any]) -> None:
        for key, value in node.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if (
                isinstance(value, dict)
                and (key in ("gpu", "cpu", "escape") or prefix in ("", "profiles"))
                and key not in ("env", "residents", "backend")
            ):
                walk(dotted, value)
            else:
                sources[dotted] = settings.sources.get(dotted, BUILTIN)

    walk("", values)
    return {"file": settings.path, "values": values, "sources": sources}


def config_text(document: dict[str, Any]) -> str:
    """`key = value    # source` lines, TOML-like."""
    lines = [f"# configuration file: {document['file'] or 'none (built-in defaults)'}"]
    for key, source in document["sources"].items():
        node: Any = document["values"]
        for part in _split_key(key):
            node = node[part]
        lines.append(f"{key} = {_toml_value(node)}    # {source}")
    return "\n".join(lines)


def _split_key(key: str) -> list[str]:
    parts = key.split(".")
    if parts[0] == "profiles" and len(parts) > 2:
        # profile names may contain dots: the last one or two parts are keys
        tail = parts[-2:] if parts[-2] in ("gpu", "cpu", "escape") else parts[-1:]
        return ["profiles", ".".join(parts[1 : len(parts) - len(tail)]), *tail]
    return parts


def _toml_value(value: Any) -> str:
    import json

    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def status_text(rows: Sequence[SlotRow]) -> str:
    """A table of slots, holders and waiters."""
    lines = [
        f"{'SLOT':<12}{'STATE':<7}{'PID':>8}  {'USER':<10}{'PROFILE':<20}{'ROUTE':<6}{'SINCE':<31}COMMAND"
    ]
    for row in rows:
        name = f"{row.pool}.{row.index}"
        if row.index < 0 and row.holder is not None:  # a priority gate of the pool
            for job in row.holder.get("realtime", []):
                lines.append(
                    f"{row.pool + ' rt':<12}{'rt':<7}{job['pid']:>8}  {job.get('user', '?')!s:<10}"
                    f"{job.get('profile') or '?'!s:<20}{'':<6}{job.get('ts') or '?'!s:<31}"
                    f"realtime {row.holder['gate'].split('-')[1]}"
                )
            for job in row.waiters:
                lines.append(
                    f"{row.pool + ' gate':<12}{'batch':<7}{job['pid']:>8}  {job.get('user', '?')!s:<10}"
                    f"{job.get('profile') or '?'!s:<20}{'':<6}{job.get('ts') or '?'!s:<31}"
                    "batch waiting for realtime jobs"
                )
            continue
        if row.holder is None:
            lines.append(f"{name:<12}free")
        else:
            h = row.holder
            command = " ".join(h.get("command") or [])[:60]
            lines.append(
                f"{name:<12}{'held':<7}{h['pid']:>8}  {h.get('user', '?')!s:<10}"
                f"{h.get('profile') or '?'!s:<20}{h.get('route') or '?'!s:<6}"
                f"{h.get('ts') or '?'!s:<31}{command}"
            )
        for w in row.waiters:
            command = " ".join(w.get("command") or [])[:60]
            lines.append(
                f"{'':<12}{'wait':<7}{w['pid']:>8}  {w.get('user', '?')!s:<10}"
                f"{w.get('profile') or '?'!s:<20}{'':<6}{w.get('ts') or '?'!s:<31}{command}"
            )
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def gpus_text(view: dict[str, Any]) -> str:
    """Devices and residents as a small table."""
    lines = [f"source: {view['source']}" + (f"  ({view['message']})" if view["message"] else "")]
    for d in view["devices"]:
        mem = f"{_q(d['memory_used_mib'])}/{_q(d['memory_total_mib'])} MiB"
        lines.append(
            f"[{d['index']}] {d['name'] or '?'}  {mem}  free {_q(d['memory_free_mib'])}"
            f" (promised {d['promised_mib']})  util {_q(d['utilization_percent'])}%"
            f"  {_q(d['temperature_c'])}C  {_q(d['power_w'])}W  score {d['score']}"
            f"{_nvenc(d)}{'' if d['allowed'] else '  (not allowed by [gpu] devices)'}  {d['uuid'] or ''}"
        )
    if view.get("pid_namespace"):
        lines.append(f"note: {view['pid_namespace']}: claims count in full, residents from status or belief")
    for r in view["residents"]:
        flags = [k for k in ("managed", "lazy") if r[k]]
        state = r.get("state") or ("loaded" if r["loaded"] else "unloaded")
        measured = f"{r['measured_mib']} MiB by {r['source']}" if r.get("source") else "?"
        lines.append(
            f"resident {r['name']}: {r['vram_mib']} MiB, {state} ({measured})"
            f"{', ' + ', '.join(flags) if flags else ''}, coexist {r['coexist'] or '-'}"
        )
    return "\n".join(lines)


def _nvenc(device: dict[str, Any]) -> str:
    """'  NVENC 3 sessions, 60% free' where NVML tells (issue 14); nothing where it does not."""
    sessions, capacity = device.get("encoder_sessions"), device.get("encoder_capacity_percent")
    if sessions is None and capacity is None:
        return ""
    return f"  NVENC {_q(sessions)} sessions" + ("" if capacity is None else f", {capacity}% capacity left")


def budget_text(report: dict[str, Any]) -> str:
    """The budget worksheet in words."""
    lines = [
        f"memory budget: {'fits' if report['ok'] else 'DOES NOT FIT'}  (GPUs from {report['gpu_source']},"
        f" RAM {report['ram_mib']} MiB)"
    ]
    for row in report["rows"]:
        verdict = "ok" if row["ok"] else ("?" if row["ok"] is None else "NO")
        lines.append(
            f"  [{verdict}] {row['check']}: need {row['need_mib']} MiB, have {_q(row['have_mib'])} MiB,"
            f" headroom {_q(row['headroom_mib'])} MiB" + (f" -> {row['advice']}" if row["advice"] else "")
        )
    return "\n".join(lines)


def _q(value: Any) -> str:
    return "?" if value is None else str(value)


def stats_report_text(summary: dict[str, Any]) -> str:
    """The full stats summary: profiles, pools, run times and peak VRAM, evictions, advice."""
    files = summary.get("files") or [summary["journal"] or "none"]
    more = f" (+{len(files) - 1} more)" if len(files) > 1 else ""
    lines = [
        f"journal: {files[-1]}{more}  lines: {summary['lines']}  records: {summary['records']}"
        f"  since: {summary['since'] or 'start'}"
        + (f"  ({summary['first']} .. {summary['last']})" if summary.get("first") else "")
    ]
    if not summary["profiles"]:
        lines.append("no jobs in the journal" + (" for this profile" if summary.get("profile") else ""))
    else:
        lines.append(
            f"{'PROFILE':<24}{'GPU':>7}{'CPU':>7}{'BUSY':>7}{'BUSY%':>7}{'WAIT p50':>10}{'WAIT p95':>10}"
            f"{'ESCAPED':>9}{'REFUSED':>9}{'OOM':>5}"
        )
        for name, row in summary["profiles"].items():
            lines.append(
                f"{name:<24}{row['gpu']:>7}{row['cpu']:>7}{row['busy']:>7}{row['busy_rate'] * 100:>6.1f}%"
                f"{_seconds(row['wait_p50_s']):>10}{_seconds(row['wait_p95_s']):>10}{row['escapes']:>9}"
                f"{row['refused']:>9}{row['oom']:>5}"
            )
    if summary["pools"]:
        lines.append("")
        lines.append(f"{'POOL':<16}{'ROUTE':<7}{'STARTS':>8}{'BUSY':>8}{'BUSY%':>7}")
        for name, pool in summary["pools"].items():
            lines.append(
                f"{name:<16}{pool['route'] or '?':<7}{pool['starts']:>8}{pool['busy']:>8}"
                f"{pool['busy_rate'] * 100:>6.1f}%"
            )
    timed = [
        (name, route, row["duration_s"][route], row)
        for name, row in summary["profiles"].items()
        for route in ("gpu", "cpu")
        if row["duration_s"][route]["n"]
    ]
    if timed:
        lines.append("")
        lines.append(
            f"{'RUN TIME':<24}{'ROUTE':<7}{'RUNS':>6}{'p50':>9}{'p95':>9}{'MAX':>9}{'PEAK VRAM p50/max':>20}"
        )
        for name, route, figures, row in timed:
            peak = row["peak_vram_mib"]
            vram = (
                f"{_q(_int(peak['p50']))}/{_q(_int(peak['max']))} MiB"
                if route == "gpu" and peak["n"]
                else "-"
            )
            lines.append(
                f"{name:<24}{route:<7}{figures['n']:>6}{_span(figures['p50']):>9}{_span(figures['p95']):>9}"
                f"{_span(figures['max']):>9}{vram:>20}"
            )
    ooms = [(name, row) for name, row in summary["profiles"].items() if row["oom"] or row["oom_retries"]]
    for name, row in ooms:
        lines.append(
            f"oom: {name}: {row['oom']} GPU run(s) out of memory, {row['oom_retries']} re-run on the CPU"
            f" ({row['oom_retries_ok']} succeeded)"
        )
    for victim, tally in summary["evictions"].items():
        lines.append(f"evictions: {victim}: {tally['ok']} ok, {tally['failed']} failed")
    attempts = summary.get("eviction_attempts") or {}
    if attempts.get("no_victim") or attempts.get("in_flight"):
        lines.append(
            f"evictions: {attempts.get('no_victim', 0)} attempt(s) found no victim that makes room, "
            f"{attempts.get('in_flight', 0)} waited for an eviction in flight"
        )
    if summary["advice"]:
        lines.append("")
    lines.extend(f"advice: {line}" for line in summary["advice"])
    return "\n".join(lines)


def _int(value: float | None) -> int | None:
    return None if value is None else round(value)


def _span(seconds: float | None) -> str:
    """12.3s, 4m05s, 2h07m: a run time at a glance."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def tune_text(result: Proposal) -> str:
    """The fit, the budget and the proposed threshold, with the evidence."""
    kind = result["kind"]
    fit = result["fit"]
    from gpurouter.job.units import format_coarse

    def shown(value: float | None) -> str:
        return format_coarse(value, kind)

    per = result["slope_per_unit"]
    lines = [
        f"profile {result['profile']}: {result['runs']} monitored GPU runs fitted"
        + (f" ({result['skipped']} failed or without a peak, left out)" if result["skipped"] else ""),
        f"fit:        peak VRAM = {fit['intercept']:.0f} MiB + {per['mib']:.1f} MiB per {per['unit']}"
        f"   (R² {fit['r2']:.3f})",
        f"residual:   the fit under-estimated a run by at most {fit['max_residual_mib']:.0f} MiB"
        " (kept as margin)",
        f"largest:    the largest run that fit was {shown(fit['max_metric'])}, "
        f"peak {fit['max_metric_peak_mib']:.0f} MiB (smallest {shown(fit['min_metric'])})",
        f"budget:     {result['budget_mib']:.0f} MiB per job = {result['budget_why']}",
    ]
    if result["ooms"]:
        lines.append(
            f"oom:        {len(result['ooms'])} GPU run(s) ran out of memory, "
            f"the smallest at {shown(result['ooms'][0])}"
        )
    current = result["current_text"] or "none"
    if result["threshold_text"] is None:
        verdict = (
            "every job fits whatever its metric: no threshold needed"
            if result["every_job_fits"]
            else "not even the smallest job fits the budget: route this profile to the CPU"
        )
        lines.append(f"threshold:  {verdict} (now {current})")
    else:
        lines.append(
            f"threshold:  {result['threshold_text']}   (now {current}; GPU when the metric is below it)"
        )
    lines.extend(f"note:       {note}" for note in result["notes"])
    return "\n".join(lines)
