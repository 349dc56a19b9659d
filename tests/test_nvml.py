"""The NVML seam: the device file, the real NVML path on a box without a driver, and fault
tolerance against a whole-module `pynvml` stand-in replaying gpustat-style scenarios."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpurouter.gpu import nvml
from gpurouter.gpu.nvml import GpuQuery, GpuSnapshot, ProcessUse, describe, query_gpus

MIB = 1048576

# --- device-file scenarios (the format of docs/gpus.md, "The device file: GPUROUTER_NVML_FILE") ---

IDLE = {
    "index": 0,
    "uuid": "GPU-00000000-0000-0000-0000-000000000000",
    "name": "NVIDIA RTX A4000",
    "memory_total_mib": 16376,
    "memory_used_mib": 1200,
    "utilization_percent": 5,
    "temperature_c": 41,
    "power_w": 35.5,
    "processes": [{"pid": 1234, "used_mib": 1100}],
}
BUSY = {
    "index": 1,
    "uuid": "GPU-11111111-1111-1111-1111-111111111111",
    "name": "NVIDIA GeForce RTX 3090",
    "memory_total_mib": 24576,
    "memory_used_mib": 20000,
    "utilization_percent": 98,
    "temperature_c": 80,
    "power_w": 340,
    "processes": [{"pid": 2000, "used_mib": 19000}, {"pid": 2001}],
}
LOW_VRAM = {
    "index": 2,
    "uuid": "GPU-22222222-2222-2222-2222-222222222222",
    "name": "Quadro P400",
    "memory_total_mib": 2048,
    "memory_used_mib": 1900,
    "utilization_percent": 0,
    "temperature_c": 35,
    "power_w": 4,
    "processes": [],
}
MISSING_FIELDS = {
    "index": 3,
    "uuid": "GPU-33333333-3333-3333-3333-333333333333",
    "name": "Tesla T4",
    "memory_total_mib": 15360,
    "memory_used_mib": 0,
}


def write_devices(path: Path, *devices: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"devices": list(devices)}))
    return path


def query_file(path: Path) -> GpuQuery:
    return query_gpus({"GPUROUTER_NVML_FILE": str(path)})


def test_a_one_device_file_gives_its_snapshot_with_free_memory_as_total_minus_used(tmp_path: Path) -> None:
    query = query_file(write_devices(tmp_path / "gpus.json", IDLE))

    assert query == GpuQuery(
        source="file",
        message=None,
        gpus=[
            GpuSnapshot(
                index=0,
                uuid="GPU-00000000-0000-0000-0000-000000000000",
                name="NVIDIA RTX A4000",
                memory_total_mib=16376,
                memory_used_mib=1200,
                memory_free_mib=15176,
                utilization_percent=5,
                temperature_c=41,
                power_w=35.5,
                processes=(ProcessUse(pid=1234, used_mib=1100),),
            )
        ],
    )


@pytest.mark.parametrize(
    ("devices", "indexes", "free_mib"),
    [
        pytest.param([IDLE], [0], [15176], id="1-gpu-idle"),
        pytest.param([BUSY, IDLE], [0, 1], [15176, 4576], id="2-gpus-listed-out-of-order-come-back-by-index"),
        pytest.param(
            [MISSING_FIELDS, LOW_VRAM, BUSY, IDLE],
            [0, 1, 2, 3],
            [15176, 4576, 148, 15360],
            id="4-gpus-busy-idle-low-vram-missing-fields",
        ),
    ],
)
def test_every_device_in_the_file_is_reported_in_index_order(
    tmp_path: Path, devices: list[dict[str, Any]], indexes: list[int], free_mib: list[int]
) -> None:
    query = query_file(write_devices(tmp_path / "gpus.json", *devices))

    assert ([g.index for g in query.gpus], [g.memory_free_mib for g in query.gpus]) == (indexes, free_mib)
    assert (query.source, query.message) == ("file", None)


def test_fields_absent_from_the_file_are_unknown_not_zero(tmp_path: Path) -> None:
    [gpu] = query_file(write_devices(tmp_path / "gpus.json", MISSING_FIELDS)).gpus

    assert (gpu.utilization_percent, gpu.temperature_c, gpu.power_w, gpu.processes) == (
        None,
        None,
        None,
        None,
    )
    assert gpu.memory_free_mib == 15360


def test_an_empty_process_list_means_no_process_and_a_missing_figure_stays_unknown(tmp_path: Path) -> None:
    busy, low = query_file(write_devices(tmp_path / "gpus.json", LOW_VRAM, BUSY)).gpus  # by index: 1, 2

    assert busy.processes == (ProcessUse(pid=2000, used_mib=19000), ProcessUse(pid=2001, used_mib=None))
    assert low.processes == ()


def test_only_the_index_is_required_of_a_device(tmp_path: Path) -> None:
    [gpu] = query_file(write_devices(tmp_path / "gpus.json", {"index": 5})).gpus

    assert gpu == GpuSnapshot(index=5)


def test_the_file_is_read_afresh_at_every_query(tmp_path: Path) -> None:
    path = write_devices(tmp_path / "gpus.json", IDLE)
    first = query_file(path)
    write_devices(path, {**IDLE, "memory_used_mib": 16000, "utilization_percent": 100}, BUSY)
    second = query_file(path)
    path.write_text("{not json")
    third = query_file(path)
    write_devices(tmp_path / "next.json", LOW_VRAM)
    os.replace(tmp_path / "next.json", path)  # how a rehearsal swaps it atomically
    fourth = query_file(path)

    assert [g.memory_free_mib for g in first.gpus] == [15176]
    assert [g.memory_free_mib for g in second.gpus] == [376, 4576]
    assert third.gpus == []
    assert [g.index for g in fourth.gpus] == [2]


def test_query_gpus_reads_the_process_environment_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUROUTER_NVML_FILE", str(write_devices(tmp_path / "gpus.json", BUSY)))

    assert [g.index for g in query_gpus().gpus] == [1]


def test_a_file_listing_no_device_is_no_gpu_with_a_message(tmp_path: Path) -> None:
    query = query_file(write_devices(tmp_path / "gpus.json"))

    assert (query.gpus, query.source, query.message) == (
        [],
        "file",
        f"{tmp_path / 'gpus.json'}: lists no device",
    )


def _make_fifo(path: Path) -> None:
    os.mkfifo(path)


BAD_FILES: list[Any] = [
    pytest.param(None, "does not exist", id="missing"),
    pytest.param("", "is not valid JSON", id="empty"),
    pytest.param('{"devices": [{"index": 0,', "is not valid JSON", id="truncated-json"),
    pytest.param("[" * 200000, "is nested too deeply to be a device file", id="absurdly-nested"),
    pytest.param(b"\xff\xfe\x00garbage", "is not UTF-8 text", id="binary-garbage"),
    pytest.param("[]", 'expected a JSON object {"devices": [...]}', id="top-level-list"),
    pytest.param('{"gpus": []}', 'expected a JSON object {"devices": [...]}', id="no-devices-key"),
    pytest.param(
        '{"devices": [3]}', "devices[0]: expected an object, got a number", id="device-not-an-object"
    ),
    pytest.param(
        '{"devices": [{"name": "x"}]}',
        "devices[0].index: expected a whole number >= 0, got nothing",
        id="index-missing",
    ),
    pytest.param(
        '{"devices": [{"index": 0}, {"index": 0}]}', "devices[1].index: 0 appears twice", id="duplicate-index"
    ),
    pytest.param(
        '{"devices": [{"index": 0, "memory_total_mib": "16G"}]}',
        "devices[0].memory_total_mib: expected a whole number of MiB >= 0, got '16G'",
        id="memory-as-a-string",
    ),
    pytest.param(
        '{"devices": [{"index": 0, "memory_total_mib": 100, "memory_used_mib": 101}]}',
        "devices[0]: memory_used_mib 101 exceeds memory_total_mib 100",
        id="used-exceeds-total",
    ),
    pytest.param(
        '{"devices": [{"index": 0, "utilization_percent": 140}]}',
        "devices[0].utilization_percent: expected a number 0-100, got 140",
        id="utilization-over-100",
    ),
    pytest.param(
        '{"devices": [{"index": 0, "processes": {"pid": 1}}]}',
        "devices[0].processes: expected a list, got an object",
        id="processes-not-a-list",
    ),
    pytest.param(
        '{"devices": [{"index": 0, "processes": [{"used_mib": 5}]}]}',
        "devices[0].processes[0].pid: expected a whole number >= 0, got nothing",
        id="process-without-pid",
    ),
    pytest.param(_make_fifo, "is a FIFO, not a regular file", id="fifo-does-not-hang"),
    pytest.param(os.mkdir, "is a directory, not a regular file", id="directory"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("content", "problem"), BAD_FILES)
def test_a_file_that_is_missing_or_malformed_is_no_gpu_with_one_line_saying_why(
    tmp_path: Path, content: str | bytes | Callable[[Path], None] | None, problem: str
) -> None:
    path = tmp_path / "gpus.json"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        content(path)

    query = query_file(path)

    assert (query.gpus, query.source) == ([], "file")
    assert query.message is not None and query.message.startswith(f"{path}: {problem}")
    assert "\n" not in query.message


def test_a_symlink_to_a_device_file_is_followed(tmp_path: Path) -> None:
    (tmp_path / "gpus.json").symlink_to(write_devices(tmp_path / "real.json", IDLE))

    assert [g.index for g in query_file(tmp_path / "gpus.json").gpus] == [0]


# --- describe -----------------------------------------------------------------------------------


def test_describe_gives_one_line_per_device_with_unknowns_as_question_marks(tmp_path: Path) -> None:
    text = describe(query_file(write_devices(tmp_path / "gpus.json", IDLE, MISSING_FIELDS)))

    assert text.splitlines() == [
        "[0] NVIDIA RTX A4000 | 41C, 5 % | 1200 / 16376 MiB (15176 free) | 36 W | 1234(1100M) "
        "| GPU-00000000-0000-0000-0000-000000000000",
        "[3] Tesla T4 | ?C, ? % | 0 / 15360 MiB (15360 free) | ? W | processes ? "
        "| GPU-33333333-3333-3333-3333-333333333333",
    ]


def test_describe_without_a_gpu_says_why(tmp_path: Path) -> None:
    text = describe(query_file(tmp_path / "absent.json"))

    assert text == f"no GPU (file): {tmp_path / 'absent.json'}: does not exist"


# --- the real NVML path on this box ---------------------------------------------------------------


def test_without_a_driver_the_real_nvml_path_is_no_gpu_with_a_clear_message() -> None:
    query = query_gpus({})
    if query.source == "nvml":
        pytest.skip("NVML initialised: this box has an NVIDIA driver")

    assert (query.gpus, query.source) == ([], "none")
    assert query.message in (
        "no NVIDIA driver (libnvidia-ml.so not found)",
        "the NVIDIA driver is not loaded (nvmlInit: Driver Not Loaded)",
    )


def test_an_empty_device_file_variable_means_nvml() -> None:
    assert query_gpus({"GPUROUTER_NVML_FILE": ""}).source in ("none", "nvml")


def test_the_real_nvml_path_prints_no_traceback_in_a_fresh_process() -> None:
    code = "from gpurouter.gpu.nvml import describe, query_gpus; print(describe(query_gpus({})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if done.stdout.startswith("["):
        pytest.skip("NVML initialised: this box has an NVIDIA driver")

    assert (done.returncode, done.stderr, done.stdout.count("\n")) == (0, "", 1)
    assert done.stdout.startswith("no GPU (none): ")


def test_without_nvidia_ml_py_there_is_no_gpu_and_the_message_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError

    assert query_gpus({}, full=True) == GpuQuery(
        gpus=[], source="none", message="nvidia-ml-py is not installed"
    )


def test_importing_the_nvml_module_loads_neither_pynvml_nor_other_heavy_modules() -> None:
    code = (
        "import sys; import gpurouter.gpu.nvml, gpurouter.gpu.selection; print(' '.join(sorted(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy = {"pynvml", "json", "re", "typing", "dataclasses", "subprocess", "threading", "enum"}

    assert sorted(heavy & set(done.stdout.split())) == []


# --- a whole-module pynvml stand-in, by scenario (gpustat's test_gpustat.py) -----------------------


class FakeDriver:
    """What a fake `pynvml` module answers: devices as dicts of NVML values or exceptions."""

    def __init__(
        self,
        devices: list[dict[str, Any]] | str,
        init_error: str | None = None,
        missing_calls: tuple[str, ...] = (),
    ) -> None:
        self.devices = devices  # a str: nvmlDeviceGetCount raises that error
        self.init_error = init_error
        self.missing_calls = missing_calls  # the driver has no such symbol
        self.init_calls = 0
        self.calls: list[str] = []
        self.atexit: list[tuple[Any, ...]] = []  # what query_gpus registered with atexit


def make_fake_pynvml(driver: FakeDriver, absent: tuple[str, ...] = ()) -> types.ModuleType:
    """A module shaped like nvidia-ml-py's `pynvml`, answering from `driver`; `absent` attributes
    are left out (bindings older than the call)."""
    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        def __init__(self, value: int = 999) -> None:
            super().__init__(value)
            self.value = value

        def __str__(self) -> str:
            return type(self).__name__.removeprefix("NVMLError_").replace("_", " ") or "Unknown"

    module.NVMLError = NVMLError  # type: ignore[attr-defined]
    mismatch = type("NVMLLibraryMismatchError", (Exception,), {})  # not an NVMLError, as in the real bindings
    module.NVMLLibraryMismatchError = mismatch  # type: ignore[attr-defined]
    for name in (
        "LibraryNotFound",
        "DriverNotLoaded",
        "NoPermission",
        "NotSupported",
        "GpuIsLost",
        "Unknown",
        "FunctionNotFound",
        "InvalidArgument",
    ):
        setattr(module, f"NVMLError_{name}", type(f"NVMLError_{name}", (NVMLError,), {}))
    module.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]

    def error(name: str) -> Exception:
        return getattr(module, f"NVMLError_{name}")()  # type: ignore[no-any-return]

    def init() -> None:
        driver.init_calls += 1
        if driver.init_error:
            raise error(driver.init_error)

    def count() -> int:
        if isinstance(driver.devices, str):  # the count itself fails with this error
            raise error(driver.devices)
        return len(driver.devices)

    def handle_by_index(index: int) -> dict[str, Any]:
        device = driver.devices[index]
        if "handle" in device:
            raise error(device["handle"])
        return device

    def answer(key: str) -> Callable[..., Any]:
        def call(handle: dict[str, Any], *args: Any) -> Any:
            driver.calls.append(key)
            if key in driver.missing_calls:
                raise error("FunctionNotFound")
            value = handle.get(key)
            if isinstance(value, str) and value.startswith("raise "):
                raise error(value.removeprefix("raise "))
            return value

        return call

    module.nvmlInit = init  # type: ignore[attr-defined]
    module.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = count  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = handle_by_index  # type: ignore[attr-defined]
    for call in (
        "nvmlDeviceGetName",
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetTemperatureV",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetComputeRunningProcesses_v2",
        "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v2",
        "nvmlDeviceGetGraphicsRunningProcesses",
    ):
        if call not in absent:
            setattr(module, call, answer(call))
    for name in absent:
        if hasattr(module, name):
            delattr(module, name)
    return module


def memory(total_mib: int, used_mib: int) -> types.SimpleNamespace:
    """nvmlMemory_t in bytes, with stray bytes that integer division by 1048576 must drop."""
    total, used = total_mib * MIB + 4321, used_mib * MIB + 1234
    return types.SimpleNamespace(total=total, used=used, free=total - used)


def process(pid: int, used_mib: int | None) -> types.SimpleNamespace:
    return types.SimpleNamespace(pid=pid, usedGpuMemory=None if used_mib is None else used_mib * MIB)


def nvml_device(
    name: str,
    uuid: str,
    total_mib: int,
    used_mib: int,
    util: int,
    temp: int,
    mw: int,
    compute: list[Any],
    graphics: list[Any] | None = None,
) -> dict[str, Any]:
    procs = {
        f"nvmlDeviceGet{kind}RunningProcesses{version}": listed
        for kind, listed in (("Compute", compute), ("Graphics", graphics or []))
        for version in ("_v3", "_v2", "")
    }
    return {
        "nvmlDeviceGetName": name,
        "nvmlDeviceGetUUID": uuid,
        "nvmlDeviceGetMemoryInfo": memory(total_mib, used_mib),
        "nvmlDeviceGetUtilizationRates": types.SimpleNamespace(gpu=util, memory=0),
        "nvmlDeviceGetTemperature": temp,
        "nvmlDeviceGetTemperatureV": temp,
        "nvmlDeviceGetPowerUsage": mw,
        **procs,
    }


def a4000() -> dict[str, Any]:
    return nvml_device("NVIDIA RTX A4000", "GPU-aaaa", 16376, 1200, 5, 41, 35500, [process(1234, 1100)])


def rtx3090() -> dict[str, Any]:
    return nvml_device(
        "NVIDIA GeForce RTX 3090",
        "GPU-bbbb",
        24576,
        20000,
        98,
        80,
        340000,
        [process(2000, 19000)],
        [process(2000, 19000), process(3000, 300)],
    )


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeDriver]:
    """Install a fake `pynvml` for one scenario; atexit registrations are recorded, not made."""
    monkeypatch.setattr(nvml, "_sessions", [])
    drivers: list[FakeDriver] = []
    monkeypatch.setattr("atexit.register", lambda *args: drivers[-1].atexit.append(args))

    def install(
        devices: Any,
        init_error: str | None = None,
        missing_calls: tuple[str, ...] = (),
        absent: tuple[str, ...] = (),
    ) -> FakeDriver:
        driver = FakeDriver(devices, init_error, missing_calls)
        drivers.append(driver)
        monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(driver, absent))
        return driver

    return install


def test_healthy_gpus_are_read_in_mib_and_watts_with_compute_and_graphics_processes_merged(
    fake_nvml: Callable[..., FakeDriver],
) -> None:
    fake_nvml([a4000(), rtx3090()])

    query = query_gpus({}, full=True)

    assert (query.source, query.message) == ("nvml", None)
    assert query.gpus == [
        GpuSnapshot(
            index=0,
            uuid="GPU-aaaa",
            name="NVIDIA RTX A4000",
            memory_total_mib=16376,
            memory_used_mib=1200,
            memory_free_mib=15176,
            utilization_percent=5,
            temperature_c=41,
            power_w=35.5,
            processes=(ProcessUse(pid=1234, used_mib=1100),),
        ),
        GpuSnapshot(
            index=1,
            uuid="GPU-bbbb",
            name="NVIDIA GeForce RTX 3090",
            memory_total_mib=24576,
            memory_used_mib=20000,
            memory_free_mib=4576,
            utilization_percent=98,
            temperature_c=80,
            power_w=340.0,
            processes=(ProcessUse(pid=2000, used_mib=19000), ProcessUse(pid=3000, used_mib=300)),
        ),
    ]


def test_nvml_is_initialised_once_and_shutdown_is_registered_only_after_it_succeeded(
    fake_nvml: Callable[..., FakeDriver],
) -> None:
    driver = fake_nvml([a4000()])

    query_gpus({}, full=True)
    query_gpus({}, full=True)

    assert driver.init_calls == 1
    assert driver.atexit == [(nvml._shutdown, sys.modules["pynvml"])]


@pytest.mark.parametrize(
    ("init_error", "message"),
    [
        pytest.param("LibraryNotFound", "no NVIDIA driver (libnvidia-ml.so not found)", id="no-library"),
        pytest.param(
            "DriverNotLoaded",
            "the NVIDIA driver is not loaded (nvmlInit: Driver Not Loaded)",
            id="driver-not-loaded",
        ),
        pytest.param(
            "NoPermission",
            "no permission to use NVML (nvmlInit: Insufficient Permissions)",
            id="no-permission",
        ),
        pytest.param("Unknown", "NVML failed to initialise: Unknown", id="any-other-nvml-error"),
    ],
)
def test_a_failed_init_is_no_gpu_registers_nothing_and_is_retried_next_time(
    fake_nvml: Callable[..., FakeDriver], init_error: str, message: str
) -> None:
    driver = fake_nvml([a4000()], init_error=init_error)

    first = query_gpus({}, full=True)
    second = query_gpus({}, full=True)

    assert first == second == GpuQuery(gpus=[], source="none", message=message)
    assert (driver.init_calls, driver.atexit) == (2, [])


def test_a_driver_that_sees_no_device_is_no_gpu_from_nvml(fake_nvml: Callable[..., FakeDriver]) -> None:
    fake_nvml([])

    assert query_gpus({}, full=True) == GpuQuery(gpus=[], source="nvml", message="NVML sees no GPU")


def test_a_failing_device_count_is_no_gpu_with_the_reason(fake_nvml: Callable[..., FakeDriver]) -> None:
    fake_nvml("Unknown")

    assert query_gpus({}, full=True) == GpuQuery(
        gpus=[], source="nvml", message="NVML could not count the GPUs: Unknown"
    )


def test_one_field_nvml_refuses_is_unknown_and_the_others_still_count(
    fake_nvml: Callable[..., FakeDriver],
) -> None:
    no_power = {**a4000(), "nvmlDeviceGetPowerUsage": "raise NotSupported"}
    no_utilization = {
        **rtx3090(),
        "nvmlDeviceGetUtilizationRates": "raise Unknown",
        "nvmlDeviceGetTemperatureV": "raise NoPermission",
    }
    fake_nvml([no_power, no_utilization])

    query = query_gpus({}, full=True)
    first, second = query.gpus

    assert first == GpuSnapshot(
        index=0,
        uuid="GPU-aaaa",
        name="NVIDIA RTX A4000",
        memory_total_mib=16376,
        memory_used_mib=1200,
        memory_free_mib=15176,
        utilization_percent=5,
        temperature_c=41,
        power_w=None,
        processes=(ProcessUse(pid=1234, used_mib=1100),),
    )
    assert (second.utilization_percent, second.temperature_c, second.memory_free_mib) == (None, None, 4576)
    assert query.message is None


@pytest.mark.parametrize(
    "lost_at",
    [
        pytest.param({"handle": "GpuIsLost"}, id="no-handle"),
        pytest.param({"nvmlDeviceGetMemoryInfo": "raise GpuIsLost"}, id="lost-while-reading-memory"),
        pytest.param(
            {"nvmlDeviceGetComputeRunningProcesses_v3": "raise GpuIsLost"}, id="lost-while-listing-processes"
        ),
    ],
)
def test_a_lost_gpu_is_skipped_with_a_note_and_the_others_are_still_reported(
    fake_nvml: Callable[..., FakeDriver], lost_at: dict[str, str]
) -> None:
    fake_nvml([a4000(), {**rtx3090(), **lost_at}, a4000()])

    query = query_gpus({}, full=True)

    assert [g.index for g in query.gpus] == [0, 2]
    assert query.message == "GPU 1 skipped: GpuIsLost"


def test_a_driver_without_the_v3_process_calls_falls_back_to_v2(fake_nvml: Callable[..., FakeDriver]) -> None:
    driver = fake_nvml(
        [rtx3090()],
        missing_calls=(
            "nvmlDeviceGetComputeRunningProcesses_v3",
            "nvmlDeviceGetGraphicsRunningProcesses_v3",
            "nvmlDeviceGetTemperatureV",
        ),
    )

    [gpu] = query_gpus({}, full=True).gpus

    assert gpu.processes == (ProcessUse(pid=2000, used_mib=19000), ProcessUse(pid=3000, used_mib=300))
    assert gpu.temperature_c == 80
    assert "nvmlDeviceGetComputeRunningProcesses_v2" in driver.calls


def test_bindings_without_the_versioned_process_calls_use_the_plain_ones(
    fake_nvml: Callable[..., FakeDriver],
) -> None:
    versioned = tuple(
        f"nvmlDeviceGet{kind}RunningProcesses_{v}" for kind in ("Compute", "Graphics") for v in ("v3", "v2")
    )
    fake_nvml([a4000()], absent=(*versioned, "nvmlDeviceGetTemperatureV"))

    [gpu] = query_gpus({}, full=True).gpus

    assert (gpu.processes, gpu.temperature_c) == ((ProcessUse(pid=1234, used_mib=1100),), 41)


def test_processes_are_unknown_when_no_process_list_can_be_read(fake_nvml: Callable[..., FakeDriver]) -> None:
    refused = {
        f"nvmlDeviceGet{kind}RunningProcesses{v}": "raise NoPermission"
        for kind in ("Compute", "Graphics")
        for v in ("_v3", "_v2", "")
    }
    fake_nvml([{**a4000(), **refused}])

    [gpu] = query_gpus({}, full=True).gpus

    assert (gpu.processes, gpu.memory_free_mib) == (None, 15176)


def test_a_process_whose_memory_nvml_cannot_report_is_kept_without_a_figure(
    fake_nvml: Callable[..., FakeDriver],
) -> None:
    raw_not_available = types.SimpleNamespace(pid=7, usedGpuMemory=2**64 - 1)  # as older bindings pass it
    fake_nvml([nvml_device("T4", "GPU-cccc", 15360, 10, 0, 30, 9000, [process(5, None), raw_not_available])])

    [gpu] = query_gpus({}, full=True).gpus

    assert gpu.processes == (ProcessUse(pid=5, used_mib=None), ProcessUse(pid=7, used_mib=None))


def test_names_and_uuids_as_bytes_from_old_bindings_are_decoded(fake_nvml: Callable[..., FakeDriver]) -> None:
    fake_nvml([{**a4000(), "nvmlDeviceGetName": b"Tesla K80", "nvmlDeviceGetUUID": b"GPU-kkkk"}])

    [gpu] = query_gpus({}, full=True).gpus

    assert (gpu.name, gpu.uuid) == ("Tesla K80", "GPU-kkkk")


def test_describe_of_a_partly_lost_box_lists_the_good_gpus_and_notes_the_lost_one(
    fake_nvml: Callable[..., FakeDriver],
) -> None:
    fake_nvml([{**a4000(), "handle": "GpuIsLost"}, rtx3090()])

    lines = describe(query_gpus({}, full=True)).splitlines()

    assert [line.split(" | ")[0] for line in lines] == [
        "[1] NVIDIA GeForce RTX 3090",
        "note (nvml): GPU 0 skipped: GpuIsLost",
    ]
