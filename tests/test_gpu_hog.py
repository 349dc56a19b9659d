"""examples/bin/gpu-hog without a GPU: usage, no driver, and a stand-in libcuda.so.1 for its CUDA calls.

The stand-in is a real shared library compiled here with the driver API's C signatures; it
answers like a 1000 MiB device, so the hog's ctypes calls, its UUID text and its OOM line
(matched by gpurouter's default `oom_patterns`) run for real. The real device is tests/test_gpu_real.py's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Box

from gpurouter.job.settings import DEFAULT_OOM_PATTERNS

HOG = Path(__file__).resolve().parent.parent / "examples" / "bin" / "gpu-hog"

FAKE_LIBCUDA = r"""
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
typedef int CUresult; typedef int CUdevice; typedef void *CUcontext; typedef unsigned long long CUdeviceptr;
static size_t used, total = 1000ull << 20;
CUresult cuInit(unsigned flags) { const char *t = getenv("FAKE_CUDA_MIB");
                                  if (t) total = strtoull(t, 0, 10) << 20;
                                  return flags ? 1 : (total ? 0 : 100); }
CUresult cuDeviceGet(CUdevice *d, int ordinal) { if (ordinal) return 101; *d = 0; return 0; }
CUresult cuDeviceGetName(char *name, int len, CUdevice d) { strncpy(name, "Fake GPU", len); return 0; }
CUresult cuDeviceGetUuid_v2(unsigned char *u, CUdevice d) { for (int i = 0; i < 16; i++) u[i] = i * 17;
                                                            return 0; }
CUresult cuCtxCreate_v2(CUcontext *c, unsigned flags, CUdevice d) { *c = (void *)8; return 0; }
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t bytes) { if (used + bytes > total) return 2;
                                                       used += bytes; *p = 4096 + used; return 0; }
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { return p ? 0 : 1; }
CUresult cuCtxSynchronize(void) { return 0; }
CUresult cuMemFree_v2(CUdeviceptr p) { return 0; }
CUresult cuCtxDestroy_v2(CUcontext c) { return c ? 0 : 201; }
CUresult cuGetErrorName(CUresult e, const char **s) {
    *s = e == 2 ? "CUDA_ERROR_OUT_OF_MEMORY" : e == 100 ? "CUDA_ERROR_NO_DEVICE"
       : e == 101 ? "CUDA_ERROR_INVALID_DEVICE" : "CUDA_ERROR_UNKNOWN"; return 0; }
CUresult cuGetErrorString(CUresult e, const char **s) {
    *s = e == 2 ? "out of memory" : e == 100 ? "no CUDA-capable device is detected"
       : "invalid device ordinal";
    return 0; }
"""


@pytest.fixture(scope="module")
def fake_cuda(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a stand-in libcuda.so.1 (for LD_LIBRARY_PATH)."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler for the stand-in libcuda.so.1")
    folder = tmp_path_factory.mktemp("fake-cuda")
    (folder / "fake.c").write_text(FAKE_LIBCUDA)
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(folder / "libcuda.so.1"), str(folder / "fake.c")],
        check=True,
        capture_output=True,
    )
    return folder


def hog(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HOG), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "gpu-hog: --mib is required", id="nothing"),
        pytest.param(["--mib"], "gpu-hog: --mib needs a value", id="no-value"),
        pytest.param(["--mib", "lots"], "gpu-hog: --mib: not a number: 'lots'", id="not-a-number"),
        pytest.param(
            ["--mib", "-3"], "gpu-hog: --mib: expected a finite number >= 0, got '-3'", id="negative"
        ),
        pytest.param(
            ["--mib=1", "--hold-s", "inf"],
            "gpu-hog: --hold-s: expected a finite number >= 0, got 'inf'",
            id="infinite-hold",
        ),
        pytest.param(
            ["--mib", "1", "--chunk-mib", "0"], "gpu-hog: --chunk-mib: expected a number > 0", id="zero-chunk"
        ),
        pytest.param(["--mib", "1", "--fast"], "gpu-hog: unknown argument '--fast'", id="unknown"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_the_usage(args: list[str], message: str) -> None:
    done = hog(*args)

    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [message, done.stderr.splitlines()[1]]
    assert done.stderr.splitlines()[1].startswith("usage: gpu-hog --mib N")


def test_without_libcuda_the_hog_exits_3_with_one_line_saying_so(tmp_path: Path) -> None:
    done = hog("--mib", "64", env={"LD_LIBRARY_PATH": str(tmp_path)})
    if done.returncode != 3 and "libcuda.so.1" not in done.stderr:
        pytest.skip(f"this box has a CUDA driver: {done.stderr.strip() or done.stdout.strip()}")

    assert (done.returncode, done.stdout, done.stderr.count("\n")) == (3, "", 1)
    assert done.stderr.startswith("gpu-hog: no CUDA driver: cannot load libcuda.so.1 (")


def test_the_cpu_route_allocates_nothing_and_needs_no_driver() -> None:
    done = hog("--cpu", "--hold-s", "0.1")

    assert (done.returncode, done.stderr) == (0, "")
    assert re.fullmatch(r"gpu-hog: cpu route, no GPU memory, pid \d+, holding 0.1 s\n", done.stdout)


def test_the_hog_allocates_in_chunks_and_prints_the_device_and_its_uuid(fake_cuda: Path) -> None:
    done = hog(
        "--mib", "300", "--chunk-mib", "128", "--ramp-s", "0.2", env={"LD_LIBRARY_PATH": str(fake_cuda)}
    )

    assert (done.returncode, done.stderr) == (0, "")
    assert re.fullmatch(
        r'gpu-hog: holding 300 MiB on device 0 "Fake GPU" '
        r"GPU-00112233-4455-6677-8899-aabbccddeeff pid \d+ for 0 s\n",
        done.stdout,
    )


def test_asking_more_than_the_device_has_exits_5_with_the_cuda_error_name_gpurouter_matches(
    fake_cuda: Path,
) -> None:
    done = hog("--mib", "1500", "--chunk-mib", "256", env={"LD_LIBRARY_PATH": str(fake_cuda)})

    assert (done.returncode, done.stdout) == (5, "")
    assert done.stderr == (
        "gpu-hog: cuMemAlloc_v2 failed after 768 of 1500 MiB: CUDA_ERROR_OUT_OF_MEMORY (out of memory)\n"
    )
    assert [p for p in DEFAULT_OOM_PATTERNS if p in done.stderr] == ["CUDA_ERROR_OUT_OF_MEMORY"]


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        pytest.param(
            ["--mib", "1"],
            {"FAKE_CUDA_MIB": "0"},
            "gpu-hog: cuInit failed: CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected)",
            id="no-device",
        ),
        pytest.param(
            ["--mib", "1", "--device", "3"],
            {},
            "gpu-hog: cuDeviceGet failed: CUDA_ERROR_INVALID_DEVICE (invalid device ordinal)",
            id="bad-ordinal",
        ),
    ],
)
def test_other_cuda_errors_exit_4_with_the_call_and_the_error_name(
    fake_cuda: Path, args: list[str], env: dict[str, str], line: str
) -> None:
    done = hog(*args, env={"LD_LIBRARY_PATH": str(fake_cuda), **env})

    assert (done.returncode, done.stdout, done.stderr) == (4, "", line + "\n")


def test_a_monitored_hog_that_runs_out_of_gpu_memory_runs_again_on_the_cpu_route(
    box: Box, fake_cuda: Path
) -> None:
    shutil.copy(HOG, box.bin / "gpu-hog")
    box.write_config("""
        [profiles.gpu-hog]
        monitor = true
        on_gpu_oom = "cpu"
        [profiles.gpu-hog.gpu]
        args = ["--gpu"]
        [profiles.gpu-hog.cpu]
        args = ["--cpu"]
    """)

    done = box.run("run", "--", "gpu-hog", "--mib", "2000", env={"LD_LIBRARY_PATH": str(fake_cuda)})

    assert done.returncode == 0, done.stderr
    assert "CUDA_ERROR_OUT_OF_MEMORY" in done.stderr
    assert done.stdout.startswith("gpu-hog: cpu route, no GPU memory")
    events = [(r["event"], r["route"]) for r in box.records()]
    assert events == [("start", "gpu"), ("end", "gpu"), ("oom", "gpu"), ("start", "cpu"), ("end", "cpu")]
    assert box.records()[2]["pattern"] == "CUDA_ERROR_OUT_OF_MEMORY"
