"""The GPU view: devices with metrics and scores, promised VRAM, and the residents' state."""

from __future__ import annotations

from gpurouter.gpu import nvml, selection

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from gpurouter.job.settings import Settings


def view(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """{"source", "message", "devices": [...], "residents": [...]} as plain data."""
    from gpurouter.gpu import placement, residents

    query = nvml.query_gpus(environ, full=True)  # the operator sees temperature and power too
    allowed = {g.index for g in selection.eligible(query.gpus, settings.gpu.devices)}
    promised = placement.read_claims(settings.lock_dir, query.gpus, "gpu")
    rows = []
    for gpu in query.gpus:
        row = gpu.as_dict()
        row["processes"] = None if gpu.processes is None else [p.as_dict() for p in gpu.processes]
        row["promised_mib"] = promised.get(gpu.index, 0)
        row["score"] = round(selection.score(gpu, promised.get(gpu.index, 0)), 3)
        row["allowed"] = gpu.index in allowed
        rows.append(row)
    from gpurouter.gpu import evidence

    state = residents.read_state(settings) if settings.residents else {}
    foreign = evidence.foreign_pids(query)
    seen = evidence.observe(settings.residents, query, state, foreign) if settings.residents else {}
    resident_rows = []
    for r in settings.residents.values():
        look = seen[r.name]
        unloading = state[r.name].get("unloading")
        resident_rows.append(
            {
                "name": r.name,
                "vram_mib": r.vram_mib,
                "loaded": look.loaded,
                "state": "unloading" if unloading else "loaded" if look.loaded else "unloaded",
                "measured_mib": look.mib,
                "source": look.source,
                "measured_device": look.device,
                "source_note": look.note or None,
                "believed_loaded": state[r.name]["loaded"],
                "last_used": state[r.name]["last_used"] or None,
                "managed": r.managed,
                "lazy": r.lazy,
                "coexist": list(r.coexist),
                "device": r.device,
            }
        )
    return {
        "source": query.source,
        "message": query.message,
        "devices": rows,
        "residents": resident_rows,
        "pid_namespace": foreign,
    }
