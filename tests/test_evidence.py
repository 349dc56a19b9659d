"""GPU decisions from evidence (issue 15): full slots are a slot wait, residents seen in NVML's
process list or their own status API, victims only where they make room, evictions in flight,
remembered OOMs, honest counters, and PID namespaces. Resident services are played by real
HTTP servers on 127.0.0.1 that speak the documented APIs and list their memory in the device file."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest

from conftest import Box, wait_for
from test_gpus import Devices, FakeService, comm, device

HOLDER = ["sh", "-c", "exec sleep 30"]


@pytest.fixture
def gpus(box: Box) -> Devices:
    devices = Devices(box.root / "devices.json")
    box.env["GPUROUTER_NVML_FILE"] = str(devices.path)
    return devices


def starts(box: Box) -> list[dict[str, Any]]:
    return [r for r in box.records() if r["event"] == "start"]


@pytest.mark.parametrize("policy", ["cpu", "evict"])
def test_a_job_finding_every_gpu_slot_held_waits_for_a_slot_and_never_takes_the_low_vram_action(
    box: Box, gpus: Devices, policy: str
) -> None:
    service = FakeService(gpus, 8000)
    try:
        gpus.write(device(0, used=1200))  # 15176 free: two 5000 MiB claims leave 5176 < 5000 + 256
        box.write_config(f"""
            [profiles.sh]
            wait = "{{wait}}"
            [profiles.sh.gpu]
            vram_mib = 5000
            slots = 2
            on_low_vram = "{policy}"
            [profiles.sh.cpu]
            args = ["cpu-route"]
            [residents.ollama]
            vram_mib = 8000
            lazy = false
            unload = {{ http = "POST {service.url}/api/generate", body = '{{"model": "llama3", "keep_alive": 0}}' }}
            timeout = "2s"
        """.replace("{wait}", "fail"))
        holders = [box.start("run", "--", *HOLDER) for _ in range(2)]
        assert wait_for(lambda: all(comm(h.pid) == "sleep" for h in holders))
        done = box.run("run", "--", "sh", "-c", 'echo "$0"')
        assert done.returncode == 75, done.stderr
        assert "slot" in done.stderr and "VRAM" not in done.stderr
        assert done.stdout == ""  # not the CPU route
        box.write_config(box.config.read_text().replace('wait = "fail"', 'wait = "block"').split("\n", 2)[2])
        waiter = box.start("run", "--", "sh", "-c", 'echo "gpu:$CUDA_VISIBLE_DEVICES"')
        assert wait_for(lambda: sum(r["event"] == "wait" for r in box.records()) == 1)
        time.sleep(0.5)
        assert waiter.poll() is None  # waiting for a slot, not sent to the CPU
        holders[0].send_signal(signal.SIGKILL)
        out, err = waiter.communicate(timeout=15)
        assert waiter.returncode == 0, err
        assert out.startswith("gpu:GPU-")
        assert service.calls == []  # nothing was evicted for a job that lacked a slot, not memory
        assert not [r for r in box.records() if r["event"] == "evict"]
    finally:
        service.shutdown()
        service.server_close()
