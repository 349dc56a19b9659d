"""The library form: same decision and slots as the CLI, in-process, sync and asyncio."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import WHISPER_PROFILE, Box, wait_for


@pytest.fixture
def lib_env(box: Box, monkeypatch: pytest.MonkeyPatch) -> Box:
    for name, value in box.env.items():
        monkeypatch.setenv(name, value)
    return box


def test_decide_probes_and_routes_and_takes_nothing(lib_env: Box, media: dict[str, Path]) -> None:
    import gpurouter

    lib_env.write_config(WHISPER_PROFILE)
    decision = gpurouter.decide("transcribe", ["transcribe", str(media["wav8"])])
    assert (decision.route, decision.metric, decision.args) == ("cpu", 8.0, ["--device", "cpu"])
    assert decision.reason == "duration 8s >= threshold 5s"
    assert decision.argv[-2:] == ["--device", "cpu"]
    assert lib_env.records() == []


def test_a_library_slot_blocks_the_cli_and_is_released_on_exit(lib_env: Box) -> None:
    import gpurouter

    decision = gpurouter.decide("default", ["worker"])
    with gpurouter.slot(decision) as held:
        assert held.slots == ["gpu.0"] and held.env["GPUROUTER_HELD"] == "gpu"
        assert lib_env.run("run", "--", "true").returncode == 75
    assert lib_env.run("run", "--", "true").returncode == 0
    assert [r["event"] for r in lib_env.records()] == ["start", "busy", "end", "start"]


def test_busy_carries_the_pool_and_the_time_waited(lib_env: Box) -> None:
    import gpurouter

    decision = gpurouter.decide("default", ["worker"])
    holder = lib_env.start("run", "--", "sleep", "30")
    assert wait_for(lambda: len(lib_env.records()) == 1)
    with pytest.raises(gpurouter.Busy) as caught:
        gpurouter.slot(decision, wait=0.3)
    assert caught.value.pool == "gpu" and caught.value.waited_s >= 0.3
    holder.kill()


def test_the_slot_is_released_when_the_body_raises(lib_env: Box) -> None:
    import gpurouter

    decision = gpurouter.decide("default", ["worker"])
    with pytest.raises(RuntimeError), gpurouter.slot(decision):
        raise RuntimeError("model crashed")
    with gpurouter.slot(decision) as again:
        assert again.slots == ["gpu.0"]


WORKER = textwrap.dedent("""
    import sys, time, gpurouter
    decision = gpurouter.decide("default", ["worker"])
    try:
        with gpurouter.slot(decision, wait=float(sys.argv[1])) as held:
            print("held", flush=True)
            time.sleep(float(sys.argv[2]))
    except gpurouter.Busy:
        print("busy", flush=True)
        sys.exit(75)
""")


def test_library_processes_and_cli_callers_share_the_same_slots(lib_env: Box) -> None:
    lib_env.write_config("[profiles.default.gpu]\nslots = 2\n")
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, "0", "1"], stdout=subprocess.PIPE, text=True, env=lib_env.env
        )
        for _ in range(2)
    ]
    try:
        assert all(w.stdout is not None and w.stdout.readline() == "held\n" for w in workers)
        assert lib_env.run("run", "--", "true").returncode == 75
        cli = lib_env.start("run", "--wait", "block", "--", "sh", "-c", "sleep 1")
        assert wait_for(lambda: any(r["event"] == "wait" for r in lib_env.records()))
        late = subprocess.run(
            [sys.executable, "-c", WORKER, "0", "0"], env=lib_env.env, capture_output=True, text=True
        )
        assert late.returncode == 75
        assert cli.wait(timeout=10) == 0
    finally:
        for worker in workers:
            worker.kill()
            worker.communicate()


def test_kill_9_of_a_library_caller_frees_its_slot_at_once(lib_env: Box) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, "0", "60"], stdout=subprocess.PIPE, text=True, env=lib_env.env
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline() == "held\n"
        assert lib_env.run("run", "--", "true").returncode == 75
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        assert lib_env.run("run", "--", "true").returncode == 0
    finally:
        worker.communicate()


def test_asyncio_waiters_take_turns_without_a_thread_each(lib_env: Box) -> None:
    import gpurouter

    decision = gpurouter.decide("default", ["worker"])
    running, peak, order = [0], [0], []

    async def job(name: str) -> None:
        held = await gpurouter.aslot(decision, wait="block")
        with held:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            order.append(name)
            await asyncio.sleep(0.1)
            running[0] -= 1

    async def main() -> int:
        tasks = [asyncio.create_task(job(f"job{i}")) for i in range(4)]
        await asyncio.sleep(0.05)
        threads_while_waiting = threading.active_count()
        await asyncio.gather(*tasks)
        return threads_while_waiting

    threads_before = threading.active_count()
    threads_while_waiting = asyncio.run(main())
    assert sorted(order) == [f"job{i}" for i in range(4)] and peak[0] == 1
    assert threads_while_waiting == threads_before  # waiters park in the kernel, not in threads


def test_an_asyncio_bounded_wait_raises_busy(lib_env: Box) -> None:
    import gpurouter

    decision = gpurouter.decide("default", ["worker"])

    async def main() -> None:
        with gpurouter.slot(decision), pytest.raises(gpurouter.Busy):
            await gpurouter.aslot(decision, wait=0.3)

    asyncio.run(main())


def device_file(path: Path, *free: int) -> None:
    devices = [
        {
            "index": i,
            "uuid": f"GPU-{i}",
            "name": "T",
            "memory_total_mib": 16000,
            "memory_used_mib": 16000 - f,
            "utilization_percent": 0,
            "processes": [],
        }
        for i, f in enumerate(free)
    ]
    path.with_suffix(".tmp").write_text(json.dumps({"devices": devices}))
    path.with_suffix(".tmp").replace(path)


def test_wait_for_gpus_returns_when_memory_frees_and_times_out_otherwise(
    lib_env: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gpurouter

    devices = lib_env.root / "gpus.json"
    monkeypatch.setenv("GPUROUTER_NVML_FILE", str(devices))
    device_file(devices, 1000, 1000)
    with pytest.raises(gpurouter.GpuWaitTimeout):
        gpurouter.wait_for_gpus(1, 4000, timeout_s=0.5)
    threading.Timer(0.5, device_file, (devices, 1000, 9000)).start()
    began = time.monotonic()
    found = gpurouter.wait_for_gpus(1, 4000, timeout_s=10)
    assert [g.index for g in found] == [1] and time.monotonic() - began < 3.5


def test_await_gpus_and_gpus(lib_env: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    import gpurouter

    devices = lib_env.root / "gpus.json"
    monkeypatch.setenv("GPUROUTER_NVML_FILE", str(devices))
    device_file(devices, 9000, 9000, 9000, 9000)
    assert [g.index for g in gpurouter.gpus()] == [0, 1, 2, 3]
    found = asyncio.run(gpurouter.await_gpus(2, 4000, timeout_s=5))
    assert [g.index for g in found] == [0, 1]
    from gpurouter.gpu.placement import TooManyGpus

    with pytest.raises(TooManyGpus):
        gpurouter.wait_for_gpus(8, 100, timeout_s=60)


def test_a_device_aware_library_slot_sets_cuda_visible_devices(
    lib_env: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gpurouter

    devices = lib_env.root / "gpus.json"
    monkeypatch.setenv("GPUROUTER_NVML_FILE", str(devices))
    device_file(devices, 2000, 12000)
    lib_env.write_config('[profiles.llm.gpu]\nvram_mib = 8000\ngpus = "auto"\n')
    decision = gpurouter.decide("llm", ["vllm", "serve", "--tp", "1"])
    with gpurouter.slot(decision) as held:
        assert held.env["CUDA_VISIBLE_DEVICES"] == "GPU-1" and [g.index for g in held.devices] == [1]
        assert held.slots == ["gpu1.0"]


def test_a_low_vram_fallback_to_the_cpu_honours_the_callers_environ(
    lib_env: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gpurouter

    devices = lib_env.root / "gpus.json"
    monkeypatch.setenv("GPUROUTER_NVML_FILE", str(devices))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    device_file(devices, 500)
    lib_env.write_config(
        '[profiles.llm.gpu]\nvram_mib = 8000\non_low_vram = "cpu"\n[profiles.llm.cpu]\nthreads = 3\n'
    )
    caller = {**os.environ, "OMP_NUM_THREADS": "1"}  # the library caller's own setting, not this process's
    decision = gpurouter.decide("llm", ["llm"], environ=caller)
    with gpurouter.slot(decision, environ=caller) as held:
        assert held.route == "cpu" and held.slots == ["cpu.0"]
        assert "OMP_NUM_THREADS" not in held.env  # the caller's explicit 1 wins over the route's cap
        assert held.env["MKL_NUM_THREADS"] == "3"
