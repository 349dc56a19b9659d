"""The GPU view: devices with metrics and scores, promised VRAM, and the residents' state."""

from __future__ import annotations

from gpurouter.gpu import nvml, selection

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

    from gpurouter.job.config import Settings


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
    state = residents.read_state(settings) if settings.residents else {}
    resident_rows = [
        {"name": r.name, "vram_mib": r.vram_mib, "loaded": state[r.name]["loaded"],
         "last_used": state[r.name]["last_used"] or None, "managed": r.managed, "lazy": r.lazy,
         "coexist": list(r.coexist), "device": r.device}
        for r in settings.residents.values()
    ]  # fmt: skip
    return {"source": query.source, "message": query.message, "devices": rows, "residents": resident_rows}
