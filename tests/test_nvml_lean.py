"""The lean ctypes NVML binding: its layouts against nvidia-ml-py's, and its answer without a driver."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pynvml  # type: ignore[import-untyped, unused-ignore]
import pytest

from gpurouter import nvml, nvml_lean
from gpurouter.nvml import GpuQuery, query_gpus


def layout(structure: type[ctypes.Structure]) -> list[tuple[str, int, int, str]]:
    """(name, offset, size, ctypes type) per field, and the whole size last."""
    fields = [(name, getattr(structure, name).offset, getattr(structure, name).size, kind.__name__)
              for name, kind in structure._fields_]  # type: ignore[misc]  # fmt: skip
    return [*fields, ("sizeof", 0, ctypes.sizeof(structure), "")]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        pytest.param(nvml_lean.c_nvmlProcessInfo_v2_t, "c_nvmlProcessInfo_v2_t", id="process-info-v2"),
        pytest.param(nvml_lean.c_nvmlProcessInfo_v3_t, "c_nvmlProcessInfo_v3_t", id="process-info-v3"),
        pytest.param(nvml_lean.c_nvmlProcessInfo_v3_t, "c_nvmlProcessInfo_t", id="process-info-current"),
        pytest.param(nvml_lean.c_nvmlMemory_t, "c_nvmlMemory_t", id="memory"),
        pytest.param(nvml_lean.c_nvmlUtilization_t, "c_nvmlUtilization_t", id="utilization"),
    ],
)
def test_the_lean_structures_have_the_field_layout_of_nvidia_ml_py(
    ours: type[ctypes.Structure], theirs: str
) -> None:
    assert layout(ours) == layout(getattr(pynvml, theirs))


def test_the_v1_process_layout_is_the_v2_layout_without_the_instance_ids() -> None:
    # nvidia-ml-py 12+ dropped its v1 class; nvml.h's nvmlProcessInfo_v1_t is {pid, usedGpuMemory}.
    theirs = getattr(pynvml, "c_nvmlProcessInfo_v1_t", None)
    v1 = layout(nvml_lean.c_nvmlProcessInfo_v1_t)
    if theirs is not None:
        assert v1 == layout(theirs)
    assert v1[:2] == layout(pynvml.c_nvmlProcessInfo_v2_t)[:2]
    assert v1[2] == ("sizeof", 0, 16, "")


def test_the_lean_return_codes_are_nvidia_ml_py_s() -> None:
    codes = {name: value for name, value in vars(nvml_lean).items()
             if name.startswith("NVML_ERROR_") or name.startswith("NVML_DEVICE_") or name == "NVML_SUCCESS"}  # fmt: skip
    assert codes == {name: getattr(pynvml, name) for name in codes}


def test_the_lean_binding_offers_every_call_the_reader_makes_on_the_decision_path() -> None:
    wanted = ["nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID",
              "nvmlDeviceGetName", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates",
              *nvml._COMPUTE_CALLS, *nvml._GRAPHICS_CALLS, "NVMLError", "NVMLError_GpuIsLost",
              "NVMLError_LibraryNotFound", "NVMLError_FunctionNotFound"]  # fmt: skip
    assert [name for name in wanted if not hasattr(nvml_lean, name)] == []


def test_without_a_driver_the_lean_path_says_what_the_nvidia_ml_py_path_says() -> None:
    lean, full = query_gpus({}), query_gpus({}, full=True)
    if lean.source == "nvml" or full.source == "nvml":
        pytest.skip(f"NVML initialised: this box has an NVIDIA driver ({lean.source}, {full.source})")

    assert lean == full == GpuQuery(gpus=[], source="none", message="no NVIDIA driver (libnvidia-ml.so not found)")


def test_the_lean_path_works_without_nvidia_ml_py_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError

    query = query_gpus({})

    assert query.message != "nvidia-ml-py is not installed"
    assert query.source in ("none", "nvml")


def test_a_lean_decision_never_imports_nvidia_ml_py_in_a_fresh_process() -> None:
    code = ("import sys; from gpurouter.nvml import query_gpus; q = query_gpus({}); "
            "print('pynvml' in sys.modules, 'ctypes' in sys.modules, q.source)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)

    loaded_pynvml, loaded_ctypes, _source = done.stdout.split()
    assert (loaded_pynvml, loaded_ctypes, done.stderr) == ("False", "True", "")
