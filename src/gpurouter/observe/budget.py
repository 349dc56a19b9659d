"""The runbook's memory budget worksheet, with this box's real figures.

GPU: for each device, slots × vram_mib of every GPU route must fit in its total VRAM
(headroom > 0). CPU: CPU slots × ram_mib must fit in system RAM less a reserve.
"""

from __future__ import annotations

from gpurouter.gpu import nvml

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from gpurouter.job.settings import Settings

RAM_RESERVE_FRACTION = 0.1  # left to the OS, page cache and everything not routed by gpurouter
RAM_RESERVE_MIN_MIB = 2048


def total_ram_mib() -> int | None:
    """MemTotal from /proc/meminfo (psutil would cost its import for one number)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return None


def check(settings: Settings) -> dict[str, Any]:
    """Rows for each GPU pool and CPU pool, with headroom and what to change when it does not fit."""
    rows: list[dict[str, Any]] = []
    pools: dict[str, dict[str, Any]] = {}
    for profile in settings.profiles.values():
        for spec in (profile.gpu, profile.cpu):
            entry = pools.setdefault(
                f"{spec.name}:{spec.pool}",
                {
                    "route": spec.name,
                    "pool": spec.pool,
                    "slots": 0,
                    "vram_mib": 0,
                    "ram_mib": 0,
                    "profiles": [],
                },
            )
            entry["slots"] = max(entry["slots"], spec.slots)
            if isinstance(spec.vram_mib, int):
                entry["vram_mib"] = max(entry["vram_mib"], spec.vram_mib)
            if spec.ram_mib:
                entry["ram_mib"] = max(entry["ram_mib"], spec.ram_mib)
            entry["profiles"].append(profile.name)
    query = nvml.query_gpus()
    ram = total_ram_mib()
    ok = True
    for entry in pools.values():
        if entry["route"] == "gpu" and entry["vram_mib"]:
            need = entry["slots"] * entry["vram_mib"]
            for gpu in query.gpus or []:
                total = gpu.memory_total_mib
                headroom = None if total is None else total - need - settings.gpu.cushion_mib
                fits = headroom is not None and headroom > 0
                ok &= fits
                rows.append(
                    {
                        "check": f"GPU {gpu.index} ({gpu.name}) pool {entry['pool']}",
                        "need_mib": need,
                        "have_mib": total,
                        "headroom_mib": headroom,
                        "ok": fits,
                        "advice": None if fits else _gpu_advice(entry, total, settings.gpu.cushion_mib),
                    }
                )
            if not query.gpus:
                rows.append(
                    {
                        "check": f"pool {entry['pool']}",
                        "need_mib": need,
                        "have_mib": None,
                        "headroom_mib": None,
                        "ok": None,
                        "advice": f"no GPU to check against ({query.message})",
                    }
                )
        if entry["ram_mib"] and ram is not None:
            reserve = max(RAM_RESERVE_MIN_MIB, int(ram * RAM_RESERVE_FRACTION))
            need = entry["slots"] * entry["ram_mib"]
            headroom = ram - reserve - need
            fits = headroom > 0
            ok &= fits
            rows.append(
                {
                    "check": f"RAM for {entry['route']} pool {entry['pool']}",
                    "need_mib": need,
                    "have_mib": ram - reserve,
                    "headroom_mib": headroom,
                    "ok": fits,
                    "advice": None
                    if fits
                    else f"lower {entry['route']}.slots to "
                    f"{max(0, (ram - reserve) // entry['ram_mib'])} or ram_mib, or add RAM",
                }
            )
    return {"ok": ok, "gpu_source": query.source, "ram_mib": ram, "rows": rows}


def _gpu_advice(entry: dict[str, Any], total: int | None, cushion: int) -> str:
    if total is None:
        return "the device does not report its memory"
    fitting = max(0, (total - cushion) // entry["vram_mib"])
    return (
        f"lower gpu.slots of pool {entry['pool']} to {fitting}, or vram_mib, "
        f"or lower the threshold so fewer large jobs reach the GPU"
    )
