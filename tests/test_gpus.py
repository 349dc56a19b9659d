"""GPU awareness through the contract's device file: free-VRAM routing, the pick, the
measure-then-start race, several GPUs per job, and eviction of resident services played
by real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import Box, wait_for

LONG_JOB = ["sh", "-c", "exec sleep 30"]


def device(
    index: int, used: int, total: int = 16376, util: int = 0, processes: Sequence[dict[str, int]] | None = ()
) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-{index:08d}-0000-0000-0000-000000000000",
        "name": "NVIDIA RTX A4000",
        "memory_total_mib": total,
        "memory_used_mib": used,
        "utilization_percent": util,
        "processes": None if processes is None else list(processes),
    }


class Devices:
    """The device file gpurouter reads instead of NVML; rewritten atomically by tests and servers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()

    def write(self, *devices: dict[str, Any]) -> None:
        with self.lock:
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps({"devices": list(devices)}))
            temporary.replace(self.path)

    def read(self) -> list[dict[str, Any]]:
        return json.loads(self.path.read_text())["devices"]

    def free_on(self, index: int, mib: int) -> None:
        current = self.read()
        for entry in current:
            if entry["index"] == index:
                entry["memory_used_mib"] = max(0, entry["memory_used_mib"] - mib)
        self.write(*current)


@pytest.fixture
def gpus(box: Box) -> Devices:
    devices = Devices(box.root / "devices.json")
    box.env["GPUROUTER_NVML_FILE"] = str(devices.path)
    return devices


def visible_devices(pid: int) -> str | None:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
    return env.get("CUDA_VISIBLE_DEVICES")


def comm(pid: int) -> str:
    """The program name once execve has finished (comm changes before the new environ is in place)."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        return name if Path(f"/proc/{pid}/environ").read_bytes() else ""
    except OSError:
        return ""


VRAM_PROFILE = """
[profiles.sh.gpu]
vram_mib = 3700
slots = 2
on_low_vram = "{policy}"
[profiles.sh.cpu]
args = ["cpu-route"]
"""


def test_a_device_with_enough_free_vram_gets_the_job_and_its_uuid(box: Box, gpus: Devices) -> None:
    gpus.write(device(0, used=1200))
    box.write_config(VRAM_PROFILE.format(policy="cpu"))
    done = box.run("run", "--", "sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES"')
    assert done.returncode == 0, done.stderr
    assert done.stdout == "GPU-00000000-0000-0000-0000-000000000000\n"
    start = box.records()[-1]
    assert (start["route"], start["gpus"], start["slot"]) == ("gpu", [0], "gpu0.0")


@pytest.mark.parametrize(("policy", "code", "out"), [("cpu", 0, "cpu-route\n"), ("busy", 75, "")])
def test_too_little_free_vram_applies_on_low_vram(
    box: Box, gpus: Devices, policy: str, code: int, out: str
) -> None:
    gpus.write(device(0, used=16376 - 3700))  # 3700 free, but the cushion (256) does not fit
    box.write_config(VRAM_PROFILE.format(policy=policy))
    done = box.run("run", "--", "sh", "-c", 'echo "$0"')
    assert (done.returncode, done.stdout) == (code, out)
    assert "not enough free VRAM" in (box.records()[-1]["reason"] if code == 0 else done.stderr)


def test_the_best_scoring_device_of_four_is_picked(box: Box, gpus: Devices) -> None:
    gpus.write(
        device(0, used=9000, util=90),
        device(1, used=2000, util=10),
        device(2, used=2000, util=80),
        device(3, used=15000),
    )
    box.write_config(VRAM_PROFILE.format(policy="busy"))
    job = box.start("run", "--", *LONG_JOB)
    assert wait_for(lambda: comm(job.pid) == "sleep")
    assert visible_devices(job.pid) == "GPU-00000001-0000-0000-0000-000000000000"


def test_two_callers_never_spend_the_same_free_mib(box: Box, gpus: Devices) -> None:
    gpus.write(device(0, used=16376 - 6000))  # room for one 3700 MiB job, not two
    box.write_config(VRAM_PROFILE.format(policy="busy"))
    first = box.start("run", "--", *LONG_JOB)
    assert wait_for(lambda: comm(first.pid) == "sleep")
    second = box.run(
        "run", "--", "sh", "-c", "true"
    )  # NVML still shows 6000 free: the first has not allocated yet
    assert second.returncode == 75 and "3700 promised" in second.stderr
    first.kill()
    first.wait()
    assert box.run("run", "--", "sh", "-c", "true").returncode == 0  # the claim died with its holder


def test_racing_callers_on_one_device_are_placed_one_at_a_time(box: Box, gpus: Devices) -> None:
    gpus.write(device(0, used=16376 - 6000))
    box.write_config(VRAM_PROFILE.format(policy="busy"))
    jobs = [box.start("run", "--", *LONG_JOB) for _ in range(6)]
    assert wait_for(lambda: sum(job.poll() is not None for job in jobs) == 5)
    assert sorted(job.poll() for job in jobs if job.poll() is not None) == [75] * 5


def test_a_vram_wait_starts_the_job_when_memory_frees(box: Box, gpus: Devices) -> None:
    gpus.write(device(0, used=15000))
    box.write_config(VRAM_PROFILE.format(policy="wait") + '[profiles.sh]\nwait = "30s"\n')
    job = box.start("run", "--", "sh", "-c", "echo started")
    assert wait_for(lambda: any(r["event"] == "wait" for r in box.records()))
    time.sleep(0.5)
    assert job.poll() is None
    gpus.free_on(0, 10000)
    began = time.monotonic()
    assert job.wait(timeout=10) == 0
    assert time.monotonic() - began < 3.5  # re-checked within the bounded interval (2 s)


MULTI_PROFILE = """
[profiles.vllm]
binary = "/bin/sh"
wait = "{wait}"
[profiles.vllm.gpu]
gpus = "auto"
vram_mib = 4000
"""


@pytest.mark.parametrize(
    ("args", "count"),
    [
        (["--tensor-parallel-size", "2"], 2),
        (["--tp", "2", "--pp", "2"], 4),
        (["--tensor-parallel-size=4"], 4),
        (["--tp_size=2", "--dp", "2"], 4),
        ([], 1),
    ],
    ids=["tp-2", "tp2-pp2", "tp-equals-4", "tp2-dp2", "no-flags-1"],
)
def test_gpus_auto_reads_the_world_size_from_the_jobs_flags(
    box: Box, gpus: Devices, args: list[str], count: int
) -> None:
    gpus.write(*(device(i, used=1000) for i in range(4)))
    box.write_config(MULTI_PROFILE.format(wait="fail"))
    done = box.run("run", "--profile", "vllm", "--", "sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES"', "sh", *args)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().split(",")) == count
    assert box.records()[-1]["gpus"] == list(range(count))


def test_an_impossible_8_gpu_job_is_refused_at_once(box: Box, gpus: Devices) -> None:
    gpus.write(*(device(i, used=1000) for i in range(4)))
    box.write_config(MULTI_PROFILE.format(wait="block"))
    began = time.monotonic()
    done = box.run("run", "--profile", "vllm", "--", "true", "--tp", "8")
    assert done.returncode == 125 and "asks for 8 GPUs but this box has 4" in done.stderr
    assert time.monotonic() - began < 5


def test_two_3_gpu_jobs_on_a_4_gpu_box_run_one_after_the_other_never_half_started(
    box: Box, gpus: Devices
) -> None:
    gpus.write(*(device(i, used=1000) for i in range(4)))
    box.write_config(MULTI_PROFILE.format(wait="block"))
    first = box.start("run", "--profile", "vllm", "--", "sh", "-c", "sleep 1", "sh", "--tp", "3")
    assert wait_for(lambda: any(r["event"] == "start" for r in box.records()))
    second = box.start("run", "--profile", "vllm", "--", "true", "--tp", "3")
    assert wait_for(lambda: any(r["event"] == "wait" for r in box.records()))
    status = box.run("status", "--json").stdout
    held = [json.loads(line) for line in status.splitlines()]
    assert (
        sum(1 for row in held if row["holder"] and row["pool"].startswith("gpu")) == 3
    )  # the waiter holds none
    assert first.wait(timeout=20) == 0 and second.wait(timeout=20) == 0
    starts = [r for r in box.records() if r["event"] == "start"]
    assert [len(r["gpus"]) for r in starts] == [3, 3]


class FakeService(http.server.ThreadingHTTPServer):
    """A resident service on 127.0.0.1 (plays ollama or ComfyUI): records unloads, frees VRAM."""

    def __init__(self, devices: Devices, frees_mib: int, status: int = 200, delay_s: float = 0.0) -> None:
        self.devices, self.frees_mib, self.status, self.delay_s = devices, frees_mib, status, delay_s
        self.calls: list[tuple[str, str, str]] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeService

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self.server.calls.append(("POST", self.path, body))
        time.sleep(self.server.delay_s)
        self.send_response(self.server.status)
        self.end_headers()
        self.wfile.write(b"{}")
        if self.server.status == 200:
            # like ollama's keep_alive: 0, the memory is released a little after the answer
            threading.Timer(0.3, self.server.devices.free_on, (0, self.server.frees_mib)).start()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def services(gpus: Devices) -> Iterator[dict[str, FakeService]]:
    made = {"ollama": FakeService(gpus, 8000), "comfyui": FakeService(gpus, 6000)}
    yield made
    for server in made.values():
        server.shutdown()
        server.server_close()


def resident_config(services: dict[str, FakeService], extra: str = "") -> str:
    return f"""
        [profiles.sh.gpu]
        vram_mib = 5000
        on_low_vram = "evict"
        [profiles.sh.cpu]
        args = ["cpu-route"]

        [residents.ollama]
        vram_mib = 8000
        unload.http = "POST {services["ollama"].url}/api/generate"
        unload.body = '{{"model": "llama3", "keep_alive": 0}}'
        lazy = false
        timeout = "3s"

        [residents.comfyui]
        vram_mib = 6000
        unload = {{ http = "POST {services["comfyui"].url}/free", body = '{{"unload_models": true}}' }}
        timeout = "3s"

        [residents.whisper-server]
        vram_mib = 2000
        managed = true
        {extra}
    """


def test_the_least_recently_used_resident_is_evicted_and_the_job_gets_the_gpu(
    box: Box, gpus: Devices, services: dict[str, FakeService]
) -> None:
    gpus.write(device(0, used=16000, processes=None))  # processes unknown: residents.state decides
    box.write_config(resident_config(services))
    state = box.lock_dir / "residents.state"
    box.lock_dir.mkdir(mode=0o1777, exist_ok=True)
    state.write_text(
        json.dumps(
            {"ollama": {"loaded": True, "last_used": 200.0}, "comfyui": {"loaded": True, "last_used": 100.0}}
        )
    )
    done = box.run("run", "--", "sh", "-c", 'echo "gpu:$CUDA_VISIBLE_DEVICES"')
    assert done.returncode == 0, done.stderr
    assert [c[1] for c in services["comfyui"].calls] == ["/free"] and services["ollama"].calls == []
    evict = next(r for r in box.records() if r["event"] == "evict")
    assert (evict["victim"], evict["ok"]) == ("comfyui", True)
    assert evict["free_mib_after"] > evict["free_mib_before"]
    assert done.stdout.startswith(
        "gpu:GPU-"
    )  # 376 + 6000 freed >= 5000 + 256 cushion: one eviction was enough
    assert json.loads(state.read_text())["comfyui"]["loaded"] is False


def test_coexisting_and_managed_residents_are_never_evicted(
    box: Box, gpus: Devices, services: dict[str, FakeService]
) -> None:
    gpus.write(device(0, used=16000, processes=None))
    box.write_config(
        resident_config(services).replace(
            'timeout = "3s"\n\n        [residents.comfyui]',
            'timeout = "3s"\n        coexist = ["sh"]\n\n        [residents.comfyui]',
        )
    )
    box.lock_dir.mkdir(mode=0o1777, exist_ok=True)
    (box.lock_dir / "residents.state").write_text(
        json.dumps(
            {"ollama": {"loaded": True, "last_used": 1.0}, "comfyui": {"loaded": True, "last_used": 9.0}}
        )
    )
    done = box.run("run", "--", "sh", "-c", 'echo "$0"')
    assert services["ollama"].calls == []  # coexists with the job's profile
    victims = [r["victim"] for r in box.records() if r["event"] == "evict"]
    assert "whisper-server" not in victims and "ollama" not in victims
    assert victims[0] == "comfyui"
    assert done.returncode == 0


@pytest.mark.parametrize("failure", ["http-500", "timeout"])
def test_an_unload_that_fails_or_hangs_falls_back_cleanly(box: Box, gpus: Devices, failure: str) -> None:
    bad = (
        FakeService(gpus, 8000, status=500) if failure == "http-500" else FakeService(gpus, 8000, delay_s=10)
    )
    try:
        gpus.write(device(0, used=16000, processes=None))
        box.write_config(f"""
            [profiles.sh.gpu]
            vram_mib = 9000
            on_low_vram = "evict"
            [profiles.sh.cpu]
            args = ["cpu-route"]
            [residents.ollama]
            vram_mib = 8000
            unload = {{ http = "POST {bad.url}/api/generate" }}
            timeout = "1s"
        """)
        began = time.monotonic()
        done = box.run("run", "--", "sh", "-c", 'echo "$0"')
        assert (done.returncode, done.stdout) == (0, "cpu-route\n")
        assert time.monotonic() - began < 8
        evict = next(r for r in box.records() if r["event"] == "evict")
        assert evict["ok"] is False and evict["problem"]
    finally:
        bad.shutdown()
        bad.server_close()


def test_the_state_file_survives_kill_9_of_callers_mid_eviction(
    box: Box, gpus: Devices, services: dict[str, FakeService]
) -> None:
    import signal

    gpus.write(device(0, used=16000, processes=None))
    box.write_config(resident_config(services))
    for delay in (0.05, 0.1, 0.15, 0.2, 0.3):
        job = box.start("run", "--", "sh", "-c", "true")
        time.sleep(delay)
        job.send_signal(signal.SIGKILL)
        job.wait()
        gpus.write(device(0, used=16000, processes=None))
    from gpurouter.gpu.residents import read_state
    from gpurouter.job import config

    settings = config.load(str(box.config))
    state_file = box.lock_dir / "residents.state"
    if state_file.exists():
        json.loads(state_file.read_text())  # whole, never torn
    assert set(read_state(settings)) == {"ollama", "comfyui", "whisper-server"}


def test_gpus_command_shows_devices_scores_and_residents(
    box: Box, gpus: Devices, services: dict[str, FakeService]
) -> None:
    gpus.write(
        device(0, used=1200, util=5, processes=None), device(1, used=8000, util=50, processes=None)
    )  # belief decides
    box.write_config(resident_config(services))
    view = json.loads(box.run("gpus", "--json").stdout)
    assert [d["index"] for d in view["devices"]] == [0, 1]
    assert view["devices"][0]["score"] > view["devices"][1]["score"]
    assert {r["name"]: r["loaded"] for r in view["residents"]} == {
        "ollama": True,
        "comfyui": False,
        "whisper-server": True,
    }  # comfyui is lazy
    text = box.run("gpus").stdout
    assert "resident ollama" in text and "[1] NVIDIA RTX A4000" in text


def test_config_check_works_the_budget_with_the_boxs_figures(box: Box, gpus: Devices) -> None:
    gpus.write(device(0, used=0, total=8192))
    box.write_config(
        "[profiles.w.gpu]\nvram_mib = 3700\nslots = 3\n[profiles.w.cpu]\nram_mib = 1000\nslots = 2\n"
    )
    done = box.run("config", "--check")
    assert done.returncode == 1
    assert "lower gpu.slots of pool gpu to 2" in done.stdout
    box.write_config("[profiles.w.gpu]\nvram_mib = 3700\nslots = 2\n")
    assert box.run("config", "--check").returncode == 0
