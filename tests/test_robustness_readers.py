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
from test_hardening_hostile import SharedBox, shared, users  # noqa: F401  (the two-user fixtures)
from test_hardening_support import assert_no_traceback, assert_one_line_error

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


# ---------------------------------------------------------------- item 5: the config search


@pytest.mark.parametrize("mode", [0o000, 0o600], ids=["mode-000", "readable-not-searchable"])
def test_an_unreadable_config_directory_is_a_config_error_not_the_defaults(shared: SharedBox, mode: int) -> None:
    a = shared.users.a
    xdg = shared.tmp / "xdg-a"
    (xdg / "gpurouter").mkdir(parents=True)
    (xdg / "gpurouter" / "config.toml").write_text('lock_dir = "/nonexistent/never-used"\n')
    for path in (xdg, xdg / "gpurouter", xdg / "gpurouter" / "config.toml"):
        os.chown(path, a.uid, a.gid)
    (xdg / "gpurouter").chmod(mode)
    done = shared.run(a, "run", "--", "transcribe", "x", env={"GPUROUTER_CONFIG": "", "XDG_CONFIG_HOME": str(xdg)})
    assert done.returncode == 78
    assert_one_line_error(done.stderr, f"{xdg}/gpurouter/config.toml: cannot be looked up: Permission denied")
    assert not shared.journal.exists()  # no slot, no record: nothing ran under the built-in defaults


def test_a_config_named_inside_an_unreadable_directory_says_why_it_cannot_be_read(shared: SharedBox) -> None:
    a = shared.users.a
    closed = shared.tmp / "closed-a"
    closed.mkdir(mode=0o700)
    closed.chmod(0o000)
    os.chown(closed, a.uid, a.gid)
    done = shared.run(a, "run", "--", "true", env={"GPUROUTER_CONFIG": str(closed / "config.toml")})
    assert done.returncode == 78
    assert_one_line_error(done.stderr, f"{closed}/config.toml: cannot be looked up: Permission denied")


def test_a_missing_config_directory_still_means_the_built_in_defaults(box: Box) -> None:
    done = box.run("config", "--json", env={"GPUROUTER_CONFIG": "", "XDG_CONFIG_HOME": str(box.root / "none"),
                                            "HOME": str(box.root / "no-home")})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_no_traceback(done.stderr)
