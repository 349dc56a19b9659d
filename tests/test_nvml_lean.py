"""The lean ctypes NVML binding: its layouts against nvidia-ml-py's, and its answer without a driver."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pynvml  # type: ignore[import-untyped, unused-ignore]
import pytest

from gpurouter.gpu import nvml, nvml_lean
from gpurouter.gpu.nvml import GpuQuery, GpuSnapshot, ProcessUse, query_gpus


def layout(structure: type[ctypes.Structure]) -> list[tuple[str, int, int, str]]:
    """(name, offset, size, ctypes type) per field, and the whole size last."""
    fields = [
        (name, getattr(structure, name).offset, getattr(structure, name).size, kind.__name__)
        for name, kind in structure._fields_
    ]  # type: ignore[misc]
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
    codes = {
        name: value
        for name, value in vars(nvml_lean).items()
        if name.startswith(("NVML_ERROR_", "NVML_DEVICE_")) or name == "NVML_SUCCESS"
    }
    assert codes == {name: getattr(pynvml, name) for name in codes}


def test_the_lean_binding_offers_every_call_the_reader_makes_on_the_decision_path() -> None:
    wanted = [
        "nvmlInit",
        "nvmlShutdown",
        "nvmlDeviceGetCount",
        "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetName",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetUtilizationRates",
        *nvml._COMPUTE_CALLS,
        *nvml._GRAPHICS_CALLS,
        "NVMLError",
        "NVMLError_GpuIsLost",
        "NVMLError_LibraryNotFound",
        "NVMLError_FunctionNotFound",
    ]
    assert [name for name in wanted if not hasattr(nvml_lean, name)] == []


def test_without_a_driver_the_lean_path_says_what_the_nvidia_ml_py_path_says() -> None:
    lean, full = query_gpus({}), query_gpus({}, full=True)
    if lean.source == "nvml" or full.source == "nvml":
        pytest.skip(f"NVML initialised: this box has an NVIDIA driver ({lean.source}, {full.source})")

    assert (
        lean
        == full
        == GpuQuery(gpus=[], source="none", message="no NVIDIA driver (libnvidia-ml.so not found)")
    )


def test_the_lean_path_works_without_nvidia_ml_py_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError

    query = query_gpus({})

    assert query.message != "nvidia-ml-py is not installed"
    assert query.source in ("none", "nvml")


def test_a_lean_decision_never_imports_nvidia_ml_py_in_a_fresh_process() -> None:
    code = (
        "import sys; from gpurouter.gpu.nvml import query_gpus; q = query_gpus({}); "
        "print('pynvml' in sys.modules, 'ctypes' in sys.modules, q.source)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )

    loaded_pynvml, loaded_ctypes, _source = done.stdout.split()
    assert (loaded_pynvml, loaded_ctypes, done.stderr) == ("False", "True", "")


# --- both bindings against one stand-in libnvidia-ml.so.1 ------------------------------------------
# A real shared library compiled here with nvml.h's signatures: device 0 has seven compute
# processes (more than a first sizing call reports room for), device 1 is lost when
# STUB_NVML_LOST is set. Built without the _v3 process calls (-DNO_V3) it is a driver from
# before 510. It has no temperature or power call, so nvidia-ml-py reads those as unknown too.

FAKE_NVML = r"""
#include <stdlib.h>
#include <string.h>
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gi, ci; } info_v2;
typedef struct { unsigned long long total, free, used; } memory_t;
typedef struct { unsigned int gpu, memory; } rates_t;
static int devices[2] = {0, 1};
int nvmlInit_v2(void) { return getenv("STUB_NVML_NO_DRIVER") ? 9 : 0; }
int nvmlInitWithFlags(unsigned int flags) { return nvmlInit_v2(); }
int nvmlShutdown(void) { return 0; }
const char *nvmlErrorString(int code) {
    return code == 9 ? "Driver Not Loaded" : code == 15 ? "GPU is lost" : "Unknown Error"; }
int nvmlDeviceGetCount_v2(unsigned int *count) { *count = 2; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **handle) {
    if (index > 1) return 2;
    if (index == 1 && getenv("STUB_NVML_LOST")) return 15;
    *handle = &devices[index]; return 0; }
static int which(void *handle) { return *(int *)handle; }
int nvmlDeviceGetUUID(void *h, char *uuid, unsigned int size) {
    strncpy(uuid, which(h) ? "GPU-22222222-2222-2222-2222-222222222222"
                           : "GPU-11111111-1111-1111-1111-111111111111", size);
    return 0; }
int nvmlDeviceGetName(void *h, char *name, unsigned int size) {
    strncpy(name, which(h) ? "Stub B" : "Stub A", size); return 0; }
int nvmlDeviceGetMemoryInfo(void *h, memory_t *m) {
    m->total = (which(h) ? 24576ull : 40960ull) << 20; m->used = (which(h) ? 300ull : 5000ull) << 20;
    m->free = m->total - m->used; return 0; }
int nvmlDeviceGetUtilizationRates(void *h, rates_t *r) {
    if (which(h)) return 3; r->gpu = 42; r->memory = 7; return 0; }
static int fill(void *h, unsigned int *count, info_v2 *out) {
    unsigned int n = which(h) ? 0 : 7;
    if (!out || *count < n) { *count = n ? 4 : 0; return n ? 7 : 0; }
    for (unsigned int i = 0; i < n; i++) {
        out[i].pid = 100 + i; out[i].usedGpuMemory = i == 6 ? ~0ull : (i + 1ull) * (64ull << 20);
        out[i].gi = 0xffffffff; out[i].ci = 0xffffffff; }
    *count = n; return 0; }
#ifndef NO_V3
int nvmlDeviceGetComputeRunningProcesses_v3(void *h, unsigned int *c, info_v2 *o) { return fill(h, c, o); }
int nvmlDeviceGetGraphicsRunningProcesses_v3(void *h, unsigned int *c, info_v2 *o) { *c = 0; return 0; }
#endif
int nvmlDeviceGetComputeRunningProcesses_v2(void *h, unsigned int *c, info_v2 *o) { return fill(h, c, o); }
int nvmlDeviceGetGraphicsRunningProcesses_v2(void *h, unsigned int *c, info_v2 *o) { *c = 0; return 0; }
"""

READ_BOTH = (
    "from gpurouter.gpu.nvml import query_gpus; "
    "print(repr(query_gpus({}))); print(repr(query_gpus({}, full=True)))"
)


def fake_nvml_dir(tmp_path: Path, *defines: str) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler for the stand-in libnvidia-ml.so.1")
    (tmp_path / "fake.c").write_text(FAKE_NVML)
    subprocess.run(
        [
            "cc",
            "-shared",
            "-fPIC",
            *defines,
            "-o",
            str(tmp_path / "libnvidia-ml.so.1"),
            str(tmp_path / "fake.c"),
        ],
        check=True,
        capture_output=True,
    )
    return tmp_path


def read_both(library_dir: Path, **env: str) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", READ_BOTH],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "LD_LIBRARY_PATH": str(library_dir), **env},
    )
    assert done.stderr == ""
    lean, full = done.stdout.splitlines()
    return lean, full


def expected_device_0() -> GpuSnapshot:
    processes = tuple(ProcessUse(pid=100 + i, used_mib=None if i == 6 else (i + 1) * 64) for i in range(7))
    return GpuSnapshot(
        index=0,
        uuid="GPU-11111111-1111-1111-1111-111111111111",
        name="Stub A",
        memory_total_mib=40960,
        memory_used_mib=5000,
        memory_free_mib=35960,
        utilization_percent=42,
        temperature_c=None,
        power_w=None,
        processes=processes,
    )


@pytest.mark.parametrize(
    "defines", [pytest.param((), id="driver-with-v3"), pytest.param(("-DNO_V3",), id="driver-before-510")]
)
def test_the_lean_binding_reads_what_nvidia_ml_py_reads_from_the_same_library(
    tmp_path: Path, defines: tuple[str, ...]
) -> None:
    lean, full = read_both(fake_nvml_dir(tmp_path, *defines))

    assert lean == full
    device_1 = GpuSnapshot(
        index=1,
        uuid="GPU-22222222-2222-2222-2222-222222222222",
        name="Stub B",
        memory_total_mib=24576,
        memory_used_mib=300,
        memory_free_mib=24276,
        utilization_percent=None,
        temperature_c=None,
        power_w=None,
        processes=(),
    )
    assert lean == repr(GpuQuery(gpus=[expected_device_0(), device_1], source="nvml", message=None))


def test_a_lost_gpu_is_skipped_with_the_same_note_by_both_bindings(tmp_path: Path) -> None:
    lean, full = read_both(fake_nvml_dir(tmp_path), STUB_NVML_LOST="1")

    assert (
        lean
        == full
        == repr(GpuQuery(gpus=[expected_device_0()], source="nvml", message="GPU 1 skipped: GPU is lost"))
    )


def test_a_driver_that_is_not_loaded_gets_the_same_message_from_both_bindings(tmp_path: Path) -> None:
    lean, full = read_both(fake_nvml_dir(tmp_path), STUB_NVML_NO_DRIVER="1")

    assert (
        lean
        == full
        == repr(
            GpuQuery(
                gpus=[],
                source="none",
                message="the NVIDIA driver is not loaded (nvmlInit: Driver Not Loaded)",
            )
        )
    )
