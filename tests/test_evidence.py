"""GPU decisions from evidence (issue 15): full slots are a slot wait, residents seen in NVML's
process list or their own status API, victims only where they make room, evictions in flight,
remembered OOMs, honest counters, and PID namespaces. Resident services are played by real
HTTP servers on 127.0.0.1 that speak the documented APIs and list their memory in the device file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Box, wait_for
from test_gpus import Devices, FakeService, comm, device

HOLDER = ["sh", "-c", "exec sleep 30"]
STANDINS = Path(__file__).resolve().parent / "standins.py"


class Standin:
    """A stand-in resident service process (see standins.py)."""

    def __init__(self, kind: str, devices: Path, index: int, mib: int, log: Path, delay_s: float) -> None:
        self.kind, self.log = kind, log
        self.process = subprocess.Popen(
            [sys.executable, str(STANDINS), kind, str(devices), str(index), str(mib), str(log), str(delay_s)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = f"http://127.0.0.1:{self.process.stdout.readline().strip()}"

    def client_uses_it(self) -> None:
        """A client loads the model behind gpurouter's back (a chat, a prompt)."""
        path, body = (
            ("/api/generate", {"model": "llama3", "prompt": "hi"})
            if self.kind == "ollama"
            else ("/prompt", {"prompt": {}})
        )
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            answer.read()

    def calls(self, method_path: str) -> int:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return sum(line.startswith(method_path + " ") for line in lines)

    def unloads(self) -> int:
        if self.kind == "ollama":
            return (
                sum('"keep_alive": 0' in line for line in self.log.read_text().splitlines())
                if self.log.exists()
                else 0
            )
        return self.calls("POST /free")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def standin(box: Box) -> Iterator[Callable[..., Standin]]:
    made: list[Standin] = []

    def start(kind: str, index: int = 0, mib: int = 8000, delay_s: float = 0.3) -> Standin:
        made.append(Standin(kind, box.root / "devices.json", index, mib, box.root / f"{kind}.calls", delay_s))
        return made[-1]

    yield start
    for service in made:
        service.stop()


def used(box: Box, index: int = 0) -> int:
    return int(
        next(
            d for d in json.loads((box.root / "devices.json").read_text())["devices"] if d["index"] == index
        )["memory_used_mib"]
    )


def evicts(box: Box) -> list[dict[str, Any]]:
    return [r for r in box.records() if r["event"] == "evict"]


JOB_PROFILE = """
[profiles.sh]
wait = "{wait}"
[profiles.sh.gpu]
vram_mib = 5000
slots = 2
on_low_vram = "evict"
[profiles.sh.cpu]
args = ["cpu-route"]
"""

OLLAMA = """
[residents.ollama]
vram_mib = 8000
unload = {{ http = "POST {url}/api/generate", body = '{{"model": "llama3", "keep_alive": 0}}' }}
timeout = "5s"
"""


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
        box.write_config(
            f"""
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
            unload.http = "POST {service.url}/api/generate"
            unload.body = '{{"model": "llama3", "keep_alive": 0}}'
            timeout = "2s"
        """.replace("{wait}", "fail")
        )
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


def test_the_natural_ollama_config_is_evicted_whenever_its_clients_have_loaded_it_again(
    box: Box, gpus: Devices, standin: Callable[..., Standin]
) -> None:
    gpus.write(device(0, used=4000))
    ollama = standin("ollama")
    box.write_config(
        JOB_PROFILE.format(wait="fail") + OLLAMA.format(url=ollama.url)
    )  # vram_mib and unload only
    for round_ in range(2):
        ollama.client_uses_it()
        assert used(box) == 12000  # 4376 free: no room for 5000 + 256
        done = box.run("run", "--", "sh", "-c", 'echo "gpu:$CUDA_VISIBLE_DEVICES"')
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("gpu:GPU-"), done.stdout
        assert ollama.unloads() == round_ + 1
    records = [r for r in evicts(box) if r["outcome"] == "evicted"]
    assert [(r["victim"], r["source"], r["victim_mib"]) for r in records] == [("ollama", "nvml", 8000)] * 2


def test_an_unloaded_service_seen_in_nvml_is_not_evicted_even_if_believed_loaded(
    box: Box, gpus: Devices, standin: Callable[..., Standin]
) -> None:
    gpus.write(device(0, used=14000))  # someone else's memory, not ollama's
    ollama = standin("ollama")
    box.write_config(JOB_PROFILE.format(wait="fail") + OLLAMA.format(url=ollama.url) + "lazy = false\n")
    done = box.run("run", "--", "sh", "-c", 'echo "$0"')
    assert (done.returncode, done.stdout) == (0, "cpu-route\n")
    assert ollama.unloads() == 0
    (record,) = evicts(box)
    assert record["outcome"] == "no_victim" and "ollama unloaded 0 MiB (nvml)" in record["problem"]


def test_the_status_answer_decides_when_the_driver_lists_no_processes(
    box: Box, gpus: Devices, standin: Callable[..., Standin]
) -> None:
    gpus.write(device(0, used=4000, processes=None))
    ollama = standin("ollama")
    box.write_config(
        JOB_PROFILE.format(wait="fail")
        + OLLAMA.format(url=ollama.url)
        + f'status = {{ http = "GET {ollama.url}/api/ps" }}\n'
    )
    ollama.client_uses_it()
    done = box.run("run", "--", "sh", "-c", 'echo "gpu:$CUDA_VISIBLE_DEVICES"')
    assert done.stdout.startswith("gpu:GPU-"), done.stderr
    assert ollama.calls("GET /api/ps") >= 1 and ollama.unloads() == 1
    assert [r["source"] for r in evicts(box) if r["outcome"] == "evicted"] == ["status"]


def test_a_victim_is_only_chosen_where_unloading_it_makes_room(
    box: Box, gpus: Devices, standin: Callable[..., Standin]
) -> None:
    gpus.write(device(0, used=7000), device(1, used=11200))
    ollama = standin("ollama", index=1, mib=4000)  # the least recently used, but GPU 1 stays short without it
    comfy = standin("comfyui", index=0, mib=6000)
    box.write_config(
        JOB_PROFILE.format(wait="fail")
        + OLLAMA.format(url=ollama.url).replace("8000", "4000")
        + f"""
        [residents.comfyui]
        vram_mib = 6000
        unload = {{ http = "POST {comfy.url}/free", body = '{{"unload_models": true, "free_memory": true}}' }}
        process = "*standins.py comfyui*"
        timeout = "5s"
    """
    )
    ollama.client_uses_it()
    comfy.client_uses_it()  # GPU 0: 16376 - 13300 = 3076 free; GPU 1: 1176 free (+ 4000 < 5256)
    box.lock_dir.mkdir(mode=0o1777, exist_ok=True)
    (box.lock_dir / "residents.state").write_text(
        json.dumps(
            {"ollama": {"loaded": True, "last_used": 1.0}, "comfyui": {"loaded": True, "last_used": 2.0}}
        )
    )
    done = box.run("run", "--", "sh", "-c", 'echo "gpu:$CUDA_VISIBLE_DEVICES"')
    assert done.stdout == "gpu:GPU-00000000-0000-0000-0000-000000000000\n", done.stderr
    assert ollama.unloads() == 0 and comfy.unloads() == 1
    (record,) = [r for r in evicts(box) if r["outcome"] == "evicted"]
    assert (record["victim"], record["device"], record["source"]) == ("comfyui", 0, "nvml")


def test_a_job_arriving_during_an_eviction_waits_for_the_memory_being_freed(
    box: Box, gpus: Devices, standin: Callable[..., Standin]
) -> None:
    gpus.write(device(0, used=4000))
    ollama = standin("ollama", mib=10000, delay_s=2.5)  # frees 2.5 s after answering: room for both jobs then
    box.write_config(JOB_PROFILE.format(wait="fail") + OLLAMA.format(url=ollama.url))
    ollama.client_uses_it()
    first = box.start("run", "--", "sh", "-c", 'echo "gpu:$CUDA_VISIBLE_DEVICES"; exec sleep 5')
    assert wait_for(lambda: ollama.unloads() == 1)
    second = box.run("run", "--", "sh", "-c", 'echo "gpu:$CUDA_VISIBLE_DEVICES"')
    assert second.stdout.startswith("gpu:GPU-"), second.stderr  # not the CPU route
    assert ollama.unloads() == 1
    first.kill()
    outcomes = sorted(r["outcome"] for r in evicts(box))
    assert outcomes == ["evicted", "in_flight"]


def test_a_victim_still_letting_go_when_other_memory_frees_is_not_unloaded_again(
    box: Box, gpus: Devices, standin: Callable[..., Standin]
) -> None:
    from standins import update_devices

    gpus.write(device(0, used=4000))  # someone else's 4000 MiB, gone while ollama is still letting go
    ollama = standin("ollama", mib=10000, delay_s=2.5)
    box.write_config(JOB_PROFILE.format(wait="fail") + OLLAMA.format(url=ollama.url))
    ollama.client_uses_it()
    first = box.start("run", "--", "sh", "-c", 'echo "gpu:$CUDA_VISIBLE_DEVICES"; exec sleep 5')
    assert wait_for(lambda: ollama.unloads() == 1)

    def others_leave(devices: list[dict[str, Any]]) -> None:
        devices[0]["memory_used_mib"] -= 4000

    update_devices(box.root / "devices.json", others_leave)  # room for the first job before ollama frees
    assert wait_for(lambda: [r["outcome"] for r in evicts(box)] == ["evicted"])
    assert used(box) == 10000  # ollama's runner still holds its memory
    second = box.run("run", "--", "sh", "-c", 'echo "gpu:$CUDA_VISIBLE_DEVICES"')
    assert second.stdout.startswith("gpu:GPU-"), second.stderr
    assert ollama.unloads() == 1  # not asked again: its unload is still in flight
    first.kill()
    assert sorted(r["outcome"] for r in evicts(box)) == ["evicted", "in_flight"]


OOM_JOB = """#!/bin/sh
# a GPU job that runs out of memory on GPU args, and works on CPU args
for arg; do
  if [ "$arg" = "--cuda" ]; then
    echo "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" >&2; exit 1
  fi
done
echo "done on cpu"
"""


def test_an_input_that_ran_out_of_gpu_memory_goes_to_the_cpu_when_it_comes_back(
    box: Box, tmp_path: Path
) -> None:
    job = box.bin / "oomjob"
    job.write_text(OOM_JOB)
    job.chmod(0o755)
    talk = tmp_path / "talk.bin"
    talk.write_bytes(b"x" * 1000)
    box.write_config("""
        [profiles.oomjob]
        probe = "size"
        threshold = "1MiB"
        wait = "fail"
        monitor = true
        on_gpu_oom = "cpu"
        [profiles.oomjob.gpu]
        args = ["--cuda"]
        [profiles.oomjob.cpu]
        args = ["--cpu"]
        slots = 1
    """)
    holder = box.start(
        "run", "--profile", "oomjob", "--route", "cpu", "--", *HOLDER, start_new_session=True
    )  # monitored: its child holds the slot too
    assert wait_for(lambda: len(starts(box)) == 1)
    first = box.run("run", "--", "oomjob", str(talk))
    assert first.returncode == 75  # the CPU re-run follows wait = "fail": the CPU slot is busy
    assert "CPU re-run refused" in first.stderr
    retry = box.run("run", "--", "oomjob", str(talk))  # the runner's retry, CPU slot still busy
    assert retry.returncode == 75
    busy = [r for r in box.records() if r["event"] == "busy"][-1]
    assert busy["route"] == "cpu" and "GPU out of memory on this input before" in busy["reason"]
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    again = box.run("run", "--", "oomjob", str(talk))
    assert (again.returncode, again.stdout) == (0, "done on cpu\n"), again.stderr
    gpu_starts = [r for r in starts(box) if r["route"] == "gpu"]
    assert len(gpu_starts) == 1  # only the first run met the GPU
    other = tmp_path / "other.bin"
    other.write_bytes(b"y" * 1000)
    assert [r["route"] for r in starts(box)][-1] == "cpu"
    fresh = box.run("route", "--json", "--", "oomjob", str(other))
    assert json.loads(fresh.stdout)["route"] == "gpu"  # another input is not tainted


def test_stats_and_prometheus_tell_evictions_failed_unloads_and_attempts_with_no_victim_apart(
    tmp_path: Path,
) -> None:
    from journal_factory import T0, record, settings_for, write

    from gpurouter.observe import prometheus, stats

    records = [
        record("evict", "sh", at=T0, victim="ollama", ok=True, outcome="evicted"),
        record("evict", "sh", at=T0 + 1, victim="ollama", ok=False, outcome="failed", problem="HTTP 500"),
        record(
            "evict",
            "sh",
            at=T0 + 2,
            victim=None,
            ok=False,
            outcome="no_victim",
            problem="no eviction makes room",
        ),
        record("evict", "sh", at=T0 + 3, victim=None, ok=True, outcome="in_flight", problem=None),
        record(
            "evict", "sh", at=T0 + 4, victim=None, ok=False, problem="no resident may be evicted"
        ),  # an old record
    ]
    summary = stats.summarise(settings_for(tmp_path, "", write(tmp_path / "journal.jsonl", records)))
    assert summary["evictions"] == {"ollama": {"ok": 1, "failed": 1}}
    assert summary["eviction_attempts"] == {"evicted": 1, "failed": 1, "no_victim": 2, "in_flight": 1}
    text = prometheus.exposition(summary, [], [])
    assert 'gpurouter_evictions_total{victim="ollama"} 1' in text
    assert 'gpurouter_eviction_failures_total{victim="ollama"} 1' in text
    assert 'gpurouter_eviction_attempts_total{outcome="no_victim"} 2' in text


def test_gpus_shows_each_residents_measured_state_mib_and_source(
    box: Box, gpus: Devices, standin: Callable[..., Standin]
) -> None:
    gpus.write(device(0, used=1000))
    ollama = standin("ollama")
    comfy = standin("comfyui", mib=6000)
    box.write_config(
        OLLAMA.format(url=ollama.url)
        + f"""
        [residents.comfyui]
        vram_mib = 6000
        unload = {{ http = "POST {comfy.url}/free" }}
        status = {{ http = "GET {comfy.url}/system_stats" }}
        process = "no-such-comfyui-process"
        [residents.whisper-server]
        vram_mib = 2000
        lazy = false
    """
    )
    ollama.client_uses_it()
    comfy.client_uses_it()
    view = {r["name"]: r for r in json.loads(box.run("gpus", "--json").stdout)["residents"]}
    assert (view["ollama"]["state"], view["ollama"]["measured_mib"], view["ollama"]["source"]) == (
        "loaded",
        8000,
        "nvml",
    )
    assert (view["comfyui"]["state"], view["comfyui"]["measured_mib"], view["comfyui"]["source"]) == (
        "loaded",
        6000,
        "status",
    )
    assert (view["whisper-server"]["state"], view["whisper-server"]["source"]) == ("loaded", "belief")
    text = box.run("gpus").stdout
    assert "resident ollama: 8000 MiB, loaded (8000 MiB by nvml)" in text
    assert "resident whisper-server: 2000 MiB, loaded (2000 MiB by belief)" in text


def test_low_vram_reasons_never_show_negative_free_memory(box: Box, gpus: Devices) -> None:
    gpus.write(device(0, used=16376 - 6000))
    box.write_config(
        JOB_PROFILE.format(wait="fail").replace("evict", "busy").replace("vram_mib = 5000", "vram_mib = 3000")
    )
    holders = [box.start("run", "--", *HOLDER) for _ in range(1)]
    assert wait_for(lambda: comm(holders[0].pid) == "sleep")
    gpus.write(device(0, used=16376 - 2000))  # someone else took memory too: promised 3000 > 2000 free
    done = box.run("run", "--", "sh", "-c", "true")
    assert done.returncode == 75
    assert "GPU 0 0 MiB free (3000 promised)" in done.stderr, done.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/unshare").exists(), reason="needs root and unshare(1)"
)
@pytest.mark.parametrize("mount_proc", [True, False], ids=["own-proc", "host-proc"])
def test_in_a_pid_namespace_residents_fall_back_to_status_and_gpus_says_so(
    box: Box, gpus: Devices, standin: Callable[..., Standin], mount_proc: bool
) -> None:
    from conftest import GPUROUTER

    gpus.write(device(0, used=1000))
    ollama = standin("ollama")
    box.write_config(OLLAMA.format(url=ollama.url) + f'status = {{ http = "GET {ollama.url}/api/ps" }}\n')
    ollama.client_uses_it()
    unshare = ["unshare", "--pid", "--fork", *(["--mount-proc"] if mount_proc else [])]
    done = subprocess.run(
        [*unshare, GPUROUTER, "gpus", "--json"], env=box.env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert "PID namespace" in view["pid_namespace"] or "a PID namespace?" in view["pid_namespace"]
    (row,) = view["residents"]
    assert (row["state"], row["measured_mib"], row["source"]) == ("loaded", 8000, "status")
    text = subprocess.run(
        [*unshare, GPUROUTER, "gpus"], env=box.env, capture_output=True, text=True, timeout=30
    )
    assert "claims count in full, residents from status or belief" in text.stdout
    host = json.loads(box.run("gpus", "--json").stdout)
    assert host["pid_namespace"] is None and host["residents"][0]["source"] == "nvml"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_port_owner_is_found_by_sock_diag_as_the_proc_table_finds_it(host: str) -> None:
    # benchmark row (m): /proc/net/tcp formats every socket (4.3 ms with 267 of them); the
    # listeners alone come from sock_diag in 0.05 ms. Both must name the same socket.
    import socket

    from gpurouter.gpu import evidence

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener, socket.socket(family) as idle:
        listener.bind((host, 0))
        listener.listen()
        idle.bind((host, 0))  # bound, not listening: not the service
        port = listener.getsockname()[1]
        inode = os.fstat(listener.fileno()).st_ino
        assert evidence.listening_sockets(port) == {f"socket:[{inode}]".encode()}
        assert evidence._listening_by_proc(port) == {inode}
        assert evidence.listening_sockets(idle.getsockname()[1]) == set()
        owners, unreadable = evidence.socket_owners(
            evidence.listening_sockets(port), [os.getpid(), os.getppid()]
        )
        assert owners == {os.getpid()} and unreadable == 0
