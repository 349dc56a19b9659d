"""NVENC sessions in `gpurouter gpus` (issue 14): where NVML tells (encoder stats and capacity), the
view shows them; the device file may carry them for tests and rehearsals."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Box
from test_nvml import FakeDriver, a4000, fake_nvml  # noqa: F401 - the fixture is used by name

from gpurouter.gpu import nvml

DEVICE = {
    "index": 0,
    "uuid": "GPU-6f1c2a00-0000-0000-0000-000000000000",
    "name": "NVIDIA GeForce RTX 3060",
    "memory_total_mib": 12288,
    "memory_used_mib": 900,
    "encoder_sessions": 3,
    "encoder_capacity_percent": 40,
}


def test_gpus_shows_the_nvenc_sessions_a_device_file_gives(box: Box) -> None:
    devices = box.root / "devices.json"
    devices.write_text(json.dumps({"devices": [DEVICE]}))
    env = {"GPUROUTER_NVML_FILE": str(devices)}
    text = box.run("gpus", env=env)
    shown = box.run("gpus", "--json", env=env)
    assert text.returncode == 0 and "NVENC 3 sessions, 40% capacity left" in text.stdout, text.stderr
    row = json.loads(shown.stdout)["devices"][0]
    assert (row["encoder_sessions"], row["encoder_capacity_percent"]) == (3, 40)


def test_a_device_without_nvenc_figures_shows_none(box: Box) -> None:
    devices = box.root / "devices.json"
    devices.write_text(
        json.dumps({"devices": [{k: v for k, v in DEVICE.items() if not k.startswith("encoder")}]})
    )
    done = box.run("gpus", env={"GPUROUTER_NVML_FILE": str(devices)})
    assert done.returncode == 0 and "NVENC" not in done.stdout


def test_a_bad_nvenc_figure_in_the_device_file_is_no_gpu_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    path.write_text(json.dumps({"devices": [{**DEVICE, "encoder_sessions": -1}]}))
    query = nvml.query_gpus({"GPUROUTER_NVML_FILE": str(path)})
    assert query.gpus == [] and "devices[0].encoder_sessions" in (query.message or "")


def test_nvml_encoder_stats_and_capacity_become_sessions_and_percent(
    fake_nvml: Callable[..., FakeDriver],
) -> None:
    device: dict[str, Any] = {
        **a4000(),
        "nvmlDeviceGetEncoderStats": (5, 240, 1800),
        "nvmlDeviceGetEncoderCapacity": 37,
    }
    fake_nvml([device])
    module = sys.modules["pynvml"]
    module.nvmlDeviceGetEncoderStats = lambda handle: handle["nvmlDeviceGetEncoderStats"]  # type: ignore[attr-defined]
    module.nvmlDeviceGetEncoderCapacity = lambda handle, kind: handle["nvmlDeviceGetEncoderCapacity"]  # type: ignore[attr-defined]
    gpu = nvml.query_gpus({}, full=True).gpus[0]
    assert (gpu.encoder_sessions, gpu.encoder_capacity_percent) == (5, 37)


@pytest.mark.parametrize("refusal", ["NotSupported", "NoPermission"])
def test_an_encoder_nvml_refuses_is_unknown_and_the_device_still_reads(
    fake_nvml: Callable[..., FakeDriver],
    refusal: str,
) -> None:
    fake_nvml([a4000()])
    module = sys.modules["pynvml"]

    def refuse(*_: object) -> None:
        raise getattr(module, f"NVMLError_{refusal}")()

    module.nvmlDeviceGetEncoderStats = refuse  # type: ignore[attr-defined]
    module.nvmlDeviceGetEncoderCapacity = refuse  # type: ignore[attr-defined]
    gpu = nvml.query_gpus({}, full=True).gpus[0]
    assert (gpu.memory_total_mib, gpu.encoder_sessions, gpu.encoder_capacity_percent) == (16376, None, None)
