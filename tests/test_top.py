"""`gpurouter top`: one plain frame for scripts (`--once`), and a live view that quits cleanly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import GPUROUTER, wait_for
from journal_factory import T0, record, settings_for

from gpurouter.observe import status, top

DEVICE_FILE = {
    "devices": [
        {
            "index": 0,
            "uuid": "GPU-6f1c2a00-0000-0000-0000-000000000000",
            "name": "NVIDIA RTX A4000",
            "memory_total_mib": 16376,
            "memory_used_mib": 9200,
            "utilization_percent": 75,
            "temperature_c": 61,
            "power_w": 95.5,
        },
    ]
}
ONE_GPU_SLOT = """
[profiles.whisper.gpu]
slots = 1
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    devices = tmp_path / "devices.json"
    devices.write_text(json.dumps(DEVICE_FILE))
    settings_for(tmp_path, ONE_GPU_SLOT)
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "GPUROUTER_CONFIG": str(tmp_path / "config.toml"),
        "GPUROUTER_NVML_FILE": str(devices),
        "LANG": "C.UTF-8",
        "TERM": "xterm-256color",
    }


@pytest.fixture
def jobs(tmp_path: Path, env: dict[str, str]):  # type: ignore[no-untyped-def]
    """A real job holding the only GPU slot and a second one blocked waiting for it."""
    started = []
    try:
        holder = subprocess.Popen(
            [GPUROUTER, "run", "--profile", "whisper", "--route", "gpu", "--", "sleep", "60"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(holder)
        settings = settings_for(tmp_path, ONE_GPU_SLOT)
        assert wait_for(lambda: any(r.holder for r in status.slot_rows(settings) if r.pool == "gpu"))
        waiter = subprocess.Popen(
            [
                GPUROUTER,
                "run",
                "--profile",
                "whisper",
                "--route",
                "gpu",
                "--wait",
                "block",
                "--",
                "sleep",
                "60",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(waiter)
        assert wait_for(lambda: any(r.waiters for r in status.slot_rows(settings) if r.pool == "gpu"))
        yield holder, waiter
    finally:
        for process in started:
            process.kill()
            process.wait()


def test_once_prints_devices_holders_waiters_and_events_as_plain_text(env: dict[str, str], jobs) -> None:  # type: ignore[no-untyped-def]
    holder, waiter = jobs
    done = subprocess.run([GPUROUTER, "top", "--once"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout  # not a terminal: no escape codes
    lines = done.stdout.splitlines()
    assert lines[0].startswith("gpurouter top  ")
    device = next(line for line in lines if line.startswith("  [0] NVIDIA RTX A4000"))
    assert "9200/16376" in device and "free   7176" in device and "75%" in device and "61C" in device
    assert "96W" in device and "[" + "#" * 17 + "." * 13 + "]" in device  # 9200/16376 of a 30-wide bar
    assert "  gpu  1/1 held  1 waiting" in lines
    held = next(line for line in lines if line.startswith("    gpu.0"))
    assert (
        held.split()[1:4] == ["held", "pid", str(holder.pid)]
        and "whisper" in held
        and held.endswith("sleep 60")
    )
    waiting = next(line for line in lines if line.split()[:1] == ["wait"])
    assert waiting.split()[1:3] == ["pid", str(waiter.pid)]
    events = lines[lines.index(next(line for line in lines if line.startswith("LAST EVENTS"))) + 1 :]
    assert [line.split()[1] for line in events] == ["start", "wait"]


def test_once_without_a_gpu_says_so(tmp_path: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        [GPUROUTER, "top", "--once"],
        env={**env, "GPUROUTER_NVML_FILE": str(tmp_path / "none")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0
    assert any(
        line.startswith("  no GPU: ") and "does not exist" in line for line in done.stdout.splitlines()
    )
    assert "  none" in done.stdout.splitlines()  # no event yet


def test_a_frame_fits_the_terminal_keeping_the_newest_events() -> None:
    data = {
        "now": T0,
        "journal": "/j",
        "gpu_source": "file",
        "gpu_message": None,
        "devices": [],
        "residents": [],
        "slots": [],
        "events": [record("busy", f"p{i}", at=T0 + i) for i in range(50)],
    }
    lines = top.frame(data, width=40, height=20)
    assert len(lines) == 20 and all(len(line) <= 40 for line in lines)
    assert lines[-1].split()[2] == "p49"
    colored = top.frame(data, width=40, height=20, color=True)
    assert all(len(line.replace("\x1b[0m", "").replace("\x1b[1m", "")) <= 40 for line in colored)


def test_live_mode_needs_a_terminal(env: dict[str, str]) -> None:
    done = subprocess.run([GPUROUTER, "top"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--once" in done.stderr


class _Tmux:
    """A private tmux server (its own socket) running one command in a 120x40 pane."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.socket = str(root / "tmux.sock")
        self.env = env

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.socket, *args], env=self.env, capture_output=True, text=True, timeout=10
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (scripts/setup installs it)")
@pytest.mark.parametrize("key", ["q", "C-c"], ids=["q", "ctrl-c"])
def test_live_mode_refreshes_in_place_and_quits_cleanly(
    tmp_path: Path, env: dict[str, str], key: str
) -> None:
    status_file = tmp_path / "exit-status"
    tmux = _Tmux(tmp_path, env)
    command = f"{GPUROUTER} top --interval 0.3; echo $? > {status_file}; sleep 30"
    tmux("new-session", "-d", "-s", "top", "-x", "120", "-y", "40", command)
    try:
        assert wait_for(lambda: "NVIDIA RTX A4000" in tmux.screen(), timeout=15)
        first = tmux.screen().splitlines()[0]
        assert wait_for(
            lambda: tmux.screen().splitlines()[0] != first, timeout=10
        )  # the clock ticks in place
        assert tmux.screen().count("DEVICES") == 1  # redrawn over itself, not scrolled
        tmux("send-keys", "-t", "top", key)
        assert wait_for(status_file.exists, timeout=10)
        time.sleep(0.1)
        assert status_file.read_text().strip() == "0"
        assert "DEVICES" not in tmux.screen()  # the alternate screen is gone: the terminal is restored
    finally:
        subprocess.run(["tmux", "-S", tmux.socket, "kill-server"], env=env, capture_output=True, timeout=10)
