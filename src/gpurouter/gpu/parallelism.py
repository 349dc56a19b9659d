"""How many GPUs a job needs and how much VRAM on each, from the job's own arguments.

`gpus = "auto"`: world size = tp × pp × max(dp, dcp, cp), each read from the usual flag
spellings (`--tensor-parallel-size 2`, `--tp-size=2`, `--tp_size 2`, `--tp 2`, `tp=2`).
`vram_mib = "auto"`: MiB per device by the model size named in the arguments
(`[gpu] vram_estimates`, default 70B/65B 20000, 13B/7B 12000, else `vram_default_mib` 8000).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from gpurouter.job.settings import GpuSettings, RouteSpec

_SPELLINGS = {
    "tp": ("tensor-parallel-size", "tensor_parallel_size", "tp-size", "tp_size", "tp"),
    "pp": ("pipeline-parallel-size", "pipeline_parallel_size", "pp-size", "pp_size", "pp"),
    "dp": ("data-parallel-size", "data_parallel_size", "dp-size", "dp_size", "dp"),
    "dcp": ("decode-context-parallel-size", "decode_context_parallel_size", "dcp-size", "dcp_size", "dcp"),
    "cp": ("context-parallel-size", "context_parallel_size", "cp-size", "cp_size", "cp"),
}
_NAME_TO_AXIS = {name: axis for axis, names in _SPELLINGS.items() for name in names}


def parallel_sizes(args: Sequence[str]) -> dict[str, int]:
    """{axis: size} for the parallelism flags present in `args` (the last spelling wins)."""
    found: dict[str, int] = {}
    for position, arg in enumerate(args):
        name, value = arg, None
        for separator in ("=", ":"):
            if separator in arg:
                name, _, value = arg.partition(separator)
                break
        stripped = name.lstrip("-")
        axis = _NAME_TO_AXIS.get(stripped.lower())
        if axis is None or (stripped == name and value is None):
            continue  # a bare word like "tp" is a value, not a flag
        if value is None and position + 1 < len(args):
            value = args[position + 1]
        if value is not None and value.strip().isascii() and value.strip().isdigit() and int(value) >= 1:
            found[axis] = int(value)
    return found


def world_size(args: Sequence[str]) -> tuple[int, str]:
    """(devices, how it was found) = tp × pp × max(dp, dcp, cp)."""
    sizes = parallel_sizes(args)
    if not sizes:
        return 1, "no parallelism flags: 1"
    tp, pp = sizes.get("tp", 1), sizes.get("pp", 1)
    world = tp * pp * max(sizes.get("dp", 1), sizes.get("dcp", 1), sizes.get("cp", 1))
    shown = " ".join(f"{axis}={size}" for axis, size in sizes.items())
    return world, f"{shown} -> tp*pp*max(dp,dcp,cp) = {world}"


def estimate_vram(args: Sequence[str], gpu: GpuSettings) -> tuple[int, str]:
    """(MiB per device, why) from the first model-size marker (e.g. '70b') named in `args`."""
    lowered = [arg.lower() for arg in args]
    for marker, mib in gpu.vram_estimates.items():
        for arg in lowered:
            start = arg.find(marker)
            while start != -1:
                before = arg[start - 1] if start else ""
                after = arg[start + len(marker) : start + len(marker) + 1]
                if not (before.isdigit() or before == ".") and not after.isalnum():
                    return mib, f"{marker} in the arguments: {mib} MiB"
                start = arg.find(marker, start + 1)
    return gpu.vram_default_mib, f"no model size in the arguments: {gpu.vram_default_mib} MiB"


def requirements(spec: RouteSpec, args: Sequence[str], gpu: GpuSettings) -> tuple[int, int | None]:
    """(devices, MiB per device or None) for a device-aware GPU route."""
    count = world_size(args)[0] if spec.gpus == "auto" else int(spec.gpus or 1)
    if spec.vram_mib == "auto":
        need: int | None = estimate_vram(args, gpu)[0]
    else:
        need = spec.vram_mib if isinstance(spec.vram_mib, int) else None
    return count, need
