"""Issue 12 (robustness round 2), the reader side: pools matched exactly, an unreadable config
directory, a journal that any user can write to, monitored jobs that leave daemons behind, and
what `status` / `top` say about a broken lock dir and about waiters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Box, wait_for
from test_gpus import Devices, device

NESTED_UNDER_OWN_POOL = """
[profiles.outer.gpu]
pool = "gpu_small"
[profiles.sh.gpu]
vram_mib = 3700
on_low_vram = "busy"
"""


def test_a_nested_device_call_under_a_pool_that_starts_alike_takes_its_own_device(box: Box) -> None:
    devices = Devices(box.root / "devices.json")
    devices.write(device(0, used=1200))
    box.write_config(NESTED_UNDER_OWN_POOL)
    inner = 'gpurouter run -- sh -c \'echo "held=$GPUROUTER_HELD cuda=$CUDA_VISIBLE_DEVICES"\''
    done = box.run("run", "--profile", "outer", "--route", "gpu", "--", "sh", "-c", inner,
                   env={"GPUROUTER_NVML_FILE": str(devices.path)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "held=gpu_small,gpu,gpu0 cuda=GPU-00000000-0000-0000-0000-000000000000\n"
    starts = [r for r in box.records() if r["event"] == "start"]
    assert [(r["profile"], r["slot"]) for r in starts] == [("outer", "gpu_small.0"), ("sh", "gpu0.0")]


def test_a_nested_device_call_under_its_own_device_takes_no_second_slot(box: Box) -> None:
    devices = Devices(box.root / "devices.json")
    devices.write(device(0, used=1200))
    box.write_config(NESTED_UNDER_OWN_POOL)
    done = box.run("run", "--", "sh", "-c", 'echo "cuda=$CUDA_VISIBLE_DEVICES"',
                   env={"GPUROUTER_NVML_FILE": str(devices.path), "GPUROUTER_HELD": "gpu7"})  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "cuda=\n")
    assert box.records()[-1]["no_slot_because"] == "a gpu device is held by a parent gpurouter (GPUROUTER_HELD)"
