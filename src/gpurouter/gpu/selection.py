"""Which GPU(s) a job goes to: pure functions over `GpuSnapshot`s (no I/O, no clock).

Like nvitop's `select.py`, the choice is a plain function of the snapshots, so every rule
here is tested with hand-written snapshots and no NVML at all.

Choices, so that callers need not guess:

- `score` is `0.6 × free-memory fraction + 0.4 × idle fraction`, each part in [0, 1].
  Unknown memory (total or free is None, or total is 0) makes the memory part 0: a device
  we cannot measure never looks roomy. Unknown utilization makes the idle part
  `UNKNOWN_IDLE_FRACTION` (0.5): "as likely busy as idle", so a known-idle device beats it
  and a known-busy one loses to it, and a GPU whose driver does not report utilization
  (e.g. some MIG or older boards) is neither always first nor always last.
- `fits` is `free - promised >= need + cushion`; unknown free memory never fits.
- `need_mib=None` in `pick` means the job states no VRAM need: every eligible device is a
  candidate, even one whose memory is unknown, and the cushion is not applied.
- Memory promised to jobs that have started but not yet allocated (`promised`, by device
  index) counts as used, both for `fits` and for `score`.
- The devices `pick` returns are ordered by index, whatever order they were chosen in: a
  multi-GPU job locks its devices in that one global order, so two jobs never each hold
  one device while waiting for the other's.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Final

    from gpurouter.gpu.nvml import GpuSnapshot

MEMORY_WEIGHT: Final = 0.6
IDLE_WEIGHT: Final = 0.4
UNKNOWN_IDLE_FRACTION: Final = 0.5  # utilization unknown: counted as half busy
SELECT_MODES: Final = ("score", "first", "round-robin")


def score(gpu: GpuSnapshot, promised_mib: int = 0) -> float:
    """How attractive a device is, in [0, 1]: 0.6 × free-memory fraction + 0.4 × idle fraction.

    Args:
        gpu: The device.
        promised_mib: Memory already promised to other jobs on it, counted as used.

    Returns:
        The score; higher is better. Unknown memory scores 0 on the memory part, unknown
        utilization scores `UNKNOWN_IDLE_FRACTION` on the idle part.
    """
    total, free = gpu.memory_total_mib, gpu.memory_free_mib
    memory = 0.0 if total is None or free is None or total <= 0 else _clamp((free - promised_mib) / total)
    utilization = gpu.utilization_percent
    idle = UNKNOWN_IDLE_FRACTION if utilization is None else _clamp(1 - utilization / 100)
    return MEMORY_WEIGHT * memory + IDLE_WEIGHT * idle


def fits(gpu: GpuSnapshot, need_mib: int, cushion_mib: int, promised_mib: int = 0) -> bool:
    """Whether `need_mib` plus a safety cushion fits in the device's free memory.

    Args:
        gpu: The device.
        need_mib: What the job needs.
        cushion_mib: Head-room kept free on top of it (fragmentation, CUDA context).
        promised_mib: Memory already promised to other jobs on this device, counted as used.

    Returns:
        `free - promised >= need + cushion`; False when free memory is unknown.
    """
    free = gpu.memory_free_mib
    return free is not None and free - promised_mib >= need_mib + cushion_mib


def eligible(gpus: Iterable[GpuSnapshot], devices_filter: tuple[int | str, ...] | None) -> list[GpuSnapshot]:
    """The devices the configuration allows, in their given order.

    Args:
        gpus: The devices seen.
        devices_filter: `[gpu] devices`: None allows all. An int, or a string of digits,
            names a device by index; any other string names it by its exact UUID.

    Returns:
        The devices named by the filter (all of them if it is None).
    """
    if devices_filter is None:
        return list(gpus)
    indexes, uuids = set(), set()
    for entry in devices_filter:
        if isinstance(entry, int) and not isinstance(entry, bool):
            indexes.add(entry)
        elif isinstance(entry, str) and entry.isascii() and entry.isdigit():
            indexes.add(int(entry))
        elif isinstance(entry, str):
            uuids.add(entry)
    return [gpu for gpu in gpus if gpu.index in indexes or (gpu.uuid is not None and gpu.uuid in uuids)]


def pick(
    gpus: Iterable[GpuSnapshot],
    need_mib: int | None,
    cushion_mib: int,
    select: str,
    count: int = 1,
    promised: Mapping[int, int] | None = None,
    rotation: int = 0,
) -> list[GpuSnapshot] | None:
    """Choose `count` devices that each fit the job, all or nothing.

    Args:
        gpus: The eligible devices (see `eligible`).
        need_mib: VRAM the job needs on each device; None: no stated need, any device will do.
        cushion_mib: Head-room kept free on top of `need_mib`.
        select: "score" (best score first, ties to the lower index), "first" (lowest
            index first) or "round-robin" (in index order, starting at the device in
            position `rotation % len(gpus)` and wrapping around; devices that do not fit
            are passed over).
        count: How many devices the job needs.
        promised: MiB already promised to other jobs, by device index; counted as used.
        rotation: The round-robin turn (e.g. a counter the caller keeps); other modes ignore it.

    Returns:
        `count` distinct devices ordered by index (the global lock order), or None when
        fewer than `count` devices fit.

    Raises:
        ValueError: `select` is not one of `SELECT_MODES`, or `count` is negative.
    """
    if select not in SELECT_MODES:
        raise ValueError(f"select must be one of {', '.join(SELECT_MODES)}, not {select!r}")
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    owed = promised or {}
    by_index = sorted(gpus, key=lambda gpu: gpu.index)

    def usable(gpu: GpuSnapshot) -> bool:
        return need_mib is None or fits(gpu, need_mib, cushion_mib, owed.get(gpu.index, 0))

    if select == "score":
        ranked = sorted(by_index, key=lambda gpu: (-score(gpu, owed.get(gpu.index, 0)), gpu.index))
    elif select == "round-robin" and by_index:
        start = rotation % len(by_index)
        ranked = by_index[start:] + by_index[:start]
    else:
        ranked = by_index
    chosen = [gpu for gpu in ranked if usable(gpu)][:count]
    if len(chosen) < count:
        return None
    return sorted(chosen, key=lambda gpu: gpu.index)


def _clamp(fraction: float) -> float:
    return min(1.0, max(0.0, fraction))


def rank(
    gpus: Iterable[GpuSnapshot], select: str, promised: Mapping[int, int] | None = None, rotation: int = 0
) -> list[GpuSnapshot]:
    """All devices in preference order for `select` (the order `pick` tries them in)."""
    owed = promised or {}
    by_index = sorted(gpus, key=lambda gpu: gpu.index)
    if select == "score":
        return sorted(by_index, key=lambda gpu: (-score(gpu, owed.get(gpu.index, 0)), gpu.index))
    if select == "round-robin" and by_index:
        start = rotation % len(by_index)
        return by_index[start:] + by_index[:start]
    return by_index
