"""Replay of a busy GPU box (issue 15): the same workload through three routers, one table.

    .venv/bin/python benchmarks/replay_busy_box.py [--jobs N] [--quick] [--seed S] [--json]

Stdlib only; needs GNU parallel and ffmpeg/ffprobe (`scripts/setup test` installs both). It runs on a
CPU-only machine: the GPU is the contract's device file (`GPUROUTER_NVML_FILE`, one 16376 MiB
device), which every simulated GPU user rewrites under one flock (`update_devices`, the protocol of
tests/standins.py: read, change, atomic replace, all under `DEVICE_FILE.lock`).

The box
-------
* **Jobs**: `--jobs` (80) "whisper-like" jobs pushed through `parallel -j 6`. Each input is a real WAV
  made with ffmpeg (`-f lavfi -i anullsrc -t SECONDS`), a mix of durations: ~70 % tiny (5-30 s),
  ~20 % medium (45-110 s), ~10 % large (300-600 s). The job binary is `fake-whisper INPUT
  --device cuda|cpu` (this file, `fake_whisper`): the route comes from the args the router appended.
  On the GPU route it allocates its need, `need_mib(d) = 1000 + 25 x d` MiB (d = seconds of audio),
  in two steps (half at once, the rest 0.15 s later, as a model then its buffers load), each step
  under the device-file lock: if the device's used memory + the step exceeds its total, that is a
  real OOM: it prints `RuntimeError: CUDA out of memory ...` on stderr and exits 1 (what it had
  allocated is freed). Then it "transcribes" for `gpu_s(d) = 0.2 + d / 150` s (CPU route: `cpu_s(d)
  = 0.5 + d / 100`, no device memory), frees its memory and writes `INPUT.txt` beside the input.
  Every run appends one JSON line to the events file (input, route, need, start, end, outcome, the
  device's free memory when the run started).
* **Runner**: each parallel job is `REPLAY_T0=$(date +%s.%N) runner.sh INPUT`; runner.sh runs
  `ROUTER INPUT` (`gpurouter run -- fake-whisper INPUT`, or `bash_router.sh INPUT` with
  `WORKLOAD_BINARY=fake-whisper`) and, on the router's "retry later" exit status, sleeps 0.3 s and
  runs it again (up to 200 attempts), like a runner configured for it (GitLab `retry: exit_codes`, systemd
  `RestartForceExitStatus`). Any other status is final. That status is 75 for gpurouter; the runbook's
  bash router says "exit 1 # Caller should retry later" for a busy slot, so its runner retries on 1
  (which also retries its GPU OOMs: the runner cannot tell them apart).
* **Trainer**: a process that, every `trainer_off_s` (3 s), grabs 6144 MiB for `trainer_on_s` (2 s).
  It is another user outside any router: when the device lacks 6144 MiB free it does not over-commit
  but tries again every 0.25 s (its own OOM-and-restart), so it never causes a job's OOM by itself
  growing into memory it does not have.
* **Resident**: the ollama stand-in (tests/standins.py, 4500 MiB, frees 1 s after `keep_alive: 0`,
  its model held by a child runner listed in the device file). A "client" reloads it (`POST
  /api/generate`) every `client_every_s` (3 s) when it is not loaded, as chat users do behind the
  router's back. Real ollama only offloads to the GPU what fits, so the client reloads only when the
  device has 4500 MiB free, and holds a 4500 MiB placeholder under the device-file lock while the
  load is in flight (no over-commit by a race between its look and the load).

The set-ups (same workload, same box, run one after the other, each with fresh state)
-------------------------------------------------------------------------------------
1. `bash router`: benchmarks/bash_router.sh as the runbook wrote it: ffprobe, threshold 120 s,
   `--device cuda` / `--device cpu`, its own `flock --nonblock` slot files (1 GPU job, 1 CPU job: its
   lock works only for a limit of 1), exit 1 when busy.
2. `gpurouter threshold-only`: `probe = "duration"`, `threshold = "2m"`, `wait = "fail"`, gpu.slots 2,
   cpu.slots 1, no `vram_mib`.
3. `gpurouter full`: the same plus `gpu.vram_mib = 4000` (the need of the largest job under the
   threshold), `on_low_vram = "evict"`, `monitor = true`, `on_gpu_oom = "cpu"`, and
   `[residents.ollama]` with `vram_mib` and an `unload` (the natural configuration of
   tests/test_evidence.py: residency is seen in the device file's process list).

The columns
-----------
* `files lost`: inputs without an output file once parallel has finished.
* `GPU OOMs`: fake-whisper runs on the GPU route that died of a (simulated) CUDA OOM.
* `small on CPU, GPU had room`: jobs whose input is *small* (shorter than the threshold, so every
  set-up's threshold sends it to the GPU) that ran on the CPU route while the *GPU had room*: at the
  moment that CPU run started (a few ms after the router's decision), the device's free memory
  (total - used in the device file) was at least the job's own need `need_mib(d)`. The second
  figure in parentheses judges room by the full set-up's own measure, `vram_mib + cushion_mib`
  (4256 MiB): a job counted there was sent to the CPU although even the configured need fitted.
* `p95 wait`: over the jobs that produced their output, the 95th percentile (nearest rank) of the
  time from the runner's start (`REPLAY_T0`, set on parallel's command line) to the start of the
  fake-whisper run that produced the output: routing, slot waits, retries, evictions and failed
  (OOM) runs before it.
* `wall`: from parallel's start to its end.
* `GPU / CPU runs`: fake-whisper runs per route (an OOM'd run and its re-run count twice).
* `retries`: runner attempts beyond the first (busy slots: exit 75, or exit 1 for the bash router).
* `evictions`: the full set-up's journal `evict` records with `outcome` `evicted` (the other
  outcomes are listed under the table, with the stand-in's loads, the unload requests it received
  and how many times its model's memory really left the device, from the device-file log that a
  sampler child writes whenever device 0 changes).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STANDINS = ROOT / "tests" / "standins.py"
BASH_ROUTER = HERE / "bash_router.sh"

TOTAL_MIB = 16376
THRESHOLD_S = 120
GPU_SLOTS, CPU_SLOTS = 2, 1
VRAM_MIB = 4000  # need_mib(THRESHOLD_S): the most a job under the threshold needs
CUSHION_MIB = 256  # gpurouter's default
TRAINER_MIB = 6144
OLLAMA_MIB = 4500
RETRY_SLEEP_S = 0.3
MAX_ATTEMPTS = 200
SETUPS = ("bash router", "gpurouter threshold-only", "gpurouter full")


def need_mib(seconds: float) -> int:
    """VRAM a fake-whisper GPU run needs for `seconds` of audio."""
    return int(1000 + 25 * seconds)


def gpu_s(seconds: float, scale: float) -> float:
    return scale * (0.2 + seconds / 150)


def cpu_s(seconds: float, scale: float) -> float:
    return scale * (0.5 + seconds / 100)


# ---------------------------------------------------------------- the device file


def update_devices(path: Path, change: Callable[[list[dict[str, Any]]], Any]) -> Any:
    """Read-modify-write the device file under the flock tests/standins.py uses (atomic replace).

    Returns what `change` returns; a change that returns False leaves the file untouched.
    """
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        document = json.loads(path.read_text())
        result = change(document["devices"])
        if result is not False:
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(document))
            temporary.replace(path)
        return result


def _free_mib(device: dict[str, Any]) -> int:
    return int(device["memory_total_mib"]) - int(device["memory_used_mib"])


def grab(path: Path, pid: int, mib: int) -> bool:
    """Add `mib` to what `pid` holds on device 0 if it fits (False: it does not, nothing changed)."""

    def change(devices: list[dict[str, Any]]) -> bool:
        device = devices[0]
        if device["memory_used_mib"] + mib > device["memory_total_mib"]:
            return False
        processes = device["processes"]
        held = sum(p["used_mib"] for p in processes if p["pid"] == pid)
        device["processes"] = [p for p in processes if p["pid"] != pid] + [
            {"pid": pid, "used_mib": held + mib}
        ]
        device["memory_used_mib"] += mib
        return True

    return bool(update_devices(path, change))


def release(path: Path, pid: int) -> None:
    """Free whatever `pid` holds on device 0."""

    def change(devices: list[dict[str, Any]]) -> bool:
        device = devices[0]
        held = sum(p["used_mib"] for p in device["processes"] if p["pid"] == pid)
        if not held:
            return False
        device["processes"] = [p for p in device["processes"] if p["pid"] != pid]
        device["memory_used_mib"] = max(0, device["memory_used_mib"] - held)
        return True

    update_devices(path, change)


def free_now(path: Path) -> int:
    return _free_mib(json.loads(path.read_text())["devices"][0])


# ---------------------------------------------------------------- the simulated programs


def fake_whisper(argv: list[str]) -> int:
    """`fake-whisper INPUT --device cuda|cpu`: see the module docstring."""
    start = time.time()
    devices = Path(os.environ["REPLAY_DEVICES"])
    scale = float(os.environ.get("REPLAY_SCALE", "1"))
    device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
    source = next(a for a in argv if not a.startswith("-") and a not in ("cuda", "cpu"))
    with wave.open(source) as audio:
        seconds = audio.getnframes() / audio.getframerate()
    route = "gpu" if device == "cuda" else "cpu"
    need = need_mib(seconds)
    pid = os.getpid()
    event: dict[str, Any] = {
        "input": source,
        "route": route,
        "seconds": seconds,
        "need_mib": need,
        "t0": float(os.environ.get("REPLAY_T0") or start),
        "start": start,
        "free_at_start": free_now(devices),
        "pid": pid,
    }
    outcome = "ok"
    try:
        if route == "gpu":
            first = need // 2
            if not grab(devices, pid, first):
                outcome = "oom"
            else:
                time.sleep(0.15 * scale)
                if not grab(devices, pid, need - first):
                    outcome = "oom"
            if outcome == "oom":
                release(devices, pid)
                sys.stderr.write(
                    f"RuntimeError: CUDA out of memory. Tried to allocate {need} MiB "
                    f"(GPU 0; {TOTAL_MIB} MiB total capacity)\n"
                )
            else:
                time.sleep(gpu_s(seconds, scale))
                release(devices, pid)
        else:
            time.sleep(cpu_s(seconds, scale))
        if outcome == "ok":
            Path(source).with_suffix(".txt").write_text(f"transcript of {source} on {route}\n")
    finally:
        event.update(end=time.time(), outcome=outcome)
        line = (json.dumps(event) + "\n").encode()
        fd = os.open(os.environ["REPLAY_EVENTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    return 0 if outcome == "ok" else 1


def trainer(devices: Path, on_s: float, off_s: float, log: Path) -> None:
    """Grab TRAINER_MIB for `on_s` every `off_s`; when it does not fit, try again every 0.25 s."""
    pid, grabs, denied = os.getpid(), 0, 0
    while True:
        time.sleep(off_s)
        while not grab(devices, pid, TRAINER_MIB):
            denied += 1
            time.sleep(0.25)
        grabs += 1
        log.write_text(json.dumps({"grabs": grabs, "denied": denied}))
        time.sleep(on_s)
        release(devices, pid)


def client(devices: Path, url: str, every_s: float, log: Path) -> None:
    """Reload the resident every `every_s` when it is not loaded and its model fits (see docstring)."""
    pid, reloads, skipped = os.getpid(), 0, 0
    log.write_text(json.dumps({"pid": pid, "reloads": reloads, "skipped_no_room": skipped}))
    while True:
        time.sleep(every_s)
        with urllib.request.urlopen(url + "/api/ps", timeout=5) as answer:
            loaded = bool(json.loads(answer.read())["models"])
        if loaded:
            continue
        if not grab(devices, pid, OLLAMA_MIB):  # the placeholder: ollama's look at free VRAM
            skipped += 1
            log.write_text(json.dumps({"pid": pid, "reloads": reloads, "skipped_no_room": skipped}))
            continue
        try:
            body = json.dumps({"model": "llama3", "prompt": "hi"}).encode()
            request = urllib.request.Request(url + "/api/generate", data=body, method="POST")
            with urllib.request.urlopen(request, timeout=10) as answer:
                answer.read()
            reloads += 1
        finally:
            release(devices, pid)
        log.write_text(json.dumps({"pid": pid, "reloads": reloads, "skipped_no_room": skipped}))


def sampler(devices: Path, log: Path) -> None:
    """Append `time used pid:MiB ...` to `log` whenever device 0 changes (every 20 ms), for post-mortems."""
    last = ""
    with open(log, "a") as stream:
        while True:
            try:
                device = json.loads(devices.read_text())["devices"][0]
            except (OSError, ValueError):
                time.sleep(0.02)
                continue
            now = f"{device['memory_used_mib']} " + " ".join(
                f"{p['pid']}:{p['used_mib']}" for p in device["processes"]
            )
            if now != last:
                stream.write(f"{time.time():.3f} {now}\n")
                stream.flush()
                last = now
            time.sleep(0.02)


# ---------------------------------------------------------------- the replay


@dataclass
class Params:
    jobs: int = 80
    parallel_j: int = 6
    scale: float = 1.0  # multiplies every job's run time
    trainer_on_s: float = 2.0
    trainer_off_s: float = 3.0
    client_every_s: float = 3.0
    ollama_free_delay_s: float = 1.0
    seed: int = 15
    setup_timeout_s: float = 600.0
    durations: list[int] = field(default_factory=list)


@dataclass
class Row:
    setup: str
    files_lost: int
    gpu_ooms: int
    small_cpu_room: int
    small_cpu_room_vram: int
    p95_wait_s: float
    wall_s: float
    gpu_runs: int
    cpu_runs: int
    retries: int
    evictions: int | None
    evict_outcomes: dict[str, int]
    trainer: dict[str, int]
    client: dict[str, int]
    resident: dict[str, int]
    exit_statuses: dict[str, int]


def workload(jobs: int, seed: int) -> list[int]:
    """Durations (s) of `jobs` inputs: ~70 % tiny, ~20 % medium, ~10 % large, shuffled."""
    rng = random.Random(seed)
    tiny, medium, large = [5, 10, 15, 20, 30], [45, 60, 90, 110], [300, 450, 600]
    n_large = max(1, round(jobs * 0.1))
    n_medium = max(1, round(jobs * 0.2))
    picks = [rng.choice(large) for _ in range(n_large)] + [rng.choice(medium) for _ in range(n_medium)]
    picks += [rng.choice(tiny) for _ in range(jobs - len(picks))]
    rng.shuffle(picks)
    return picks


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


class Replay:
    """One temp dir, every child in its own session, everything killed and removed on exit."""

    def __init__(self, params: Params, keep: bool = False) -> None:
        self.params = params
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="gpurouter-replay-"))
        self.marker = f"REPLAY_ROOT={self.root}"
        self.children: list[subprocess.Popen[bytes]] = []
        bindir = Path(sys.executable).parent
        self.gpurouter = shutil.which("gpurouter", path=str(bindir)) or shutil.which("gpurouter")
        if self.gpurouter is None:
            raise SystemExit("replay: gpurouter is not installed (scripts/setup test makes .venv)")
        self.bin = self.root / "bin"
        self.bin.mkdir()
        self.masters = self.root / "media"
        self.masters.mkdir()
        fake = self.bin / "fake-whisper"
        fake.write_text(
            f"#!{sys.executable} -I\nimport sys\nsys.path.insert(0, {str(HERE)!r})\n"
            "from replay_busy_box import fake_whisper\nsys.exit(fake_whisper(sys.argv[1:]))\n"
        )
        fake.chmod(0o755)

    # -- processes

    def spawn(self, argv: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, env=env, start_new_session=True, **kwargs)
        self.children.append(proc)
        return proc

    def _ours(self) -> list[int]:
        """Pids of every live process started under this replay (its marker is in their environment)."""
        found, needle = [], self.marker.encode() + b"\0"
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as handle:
                    if needle in handle.read():
                        found.append(int(name))
            except OSError:
                pass
        return found

    def kill_all(self) -> None:
        """Kill the process groups this replay started, then any straggler that left its group."""
        for proc in self.children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for _ in range(3):
            pids = self._ours()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for proc in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.children.clear()

    def close(self) -> None:
        self.kill_all()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- set-up

    def make_media(self, durations: list[int]) -> None:
        for seconds in sorted(set(durations)):
            target = self.masters / f"{seconds}s.wav"
            subprocess.run(
                [
                    *("ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono"),
                    *("-t", str(seconds), "-c:a", "pcm_u8", str(target)),
                ],
                check=True,
                timeout=60,
            )

    def _device_file(self, path: Path) -> None:
        device = {
            "index": 0,
            "uuid": "GPU-6f1c2a00-0000-0000-0000-000000000000",
            "name": "NVIDIA RTX A4000",
            "memory_total_mib": TOTAL_MIB,
            "memory_used_mib": 0,
            "utilization_percent": 50,
            "processes": [],
        }
        path.write_text(json.dumps({"devices": [device]}))

    def _config(self, setup: str, work: Path, url: str) -> Path:
        config = work / "config.toml"
        text = f"""
lock_dir = "{work / "locks"}"
journal = "{work / "locks" / "journal.jsonl"}"

[profiles.fake-whisper]
probe = "duration"
threshold = "{THRESHOLD_S}s"
wait = "fail"
"""
        if setup == "gpurouter full":
            text += 'monitor = true\non_gpu_oom = "cpu"\n'
        text += f"""
[profiles.fake-whisper.gpu]
args = ["--device", "cuda"]
slots = {GPU_SLOTS}
"""
        if setup == "gpurouter full":
            text += f'vram_mib = {VRAM_MIB}\non_low_vram = "evict"\n'
        text += f"""
[profiles.fake-whisper.cpu]
args = ["--device", "cpu"]
slots = {CPU_SLOTS}
"""
        if setup == "gpurouter full":
            text += f"""
[gpu]
cushion_mib = {CUSHION_MIB}

[residents.ollama]
vram_mib = {OLLAMA_MIB}
unload = {{ http = "POST {url}/api/generate", body = '{{"model": "llama3", "keep_alive": 0}}' }}
timeout = "5s"
"""
        config.write_text(text)
        return config

    def _runner(self, setup: str, work: Path) -> Path:
        if setup == "bash router":
            router, retry_on = [str(BASH_ROUTER)], 1  # WORKLOAD_BINARY=fake-whisper in its environment
        else:
            assert self.gpurouter is not None
            router, retry_on = [self.gpurouter, "run", "--", "fake-whisper"], 75
        runner = work / "runner.sh"
        runner.write_text(
            f"""#!/bin/bash
# A runner that retries on the router's "retry later" status ({retry_on}) after a short sleep.
input=$1
for ((attempt = 1; ; attempt++)); do
    {" ".join(router)} "$input" >>"{work}/jobs.out" 2>>"{work}/jobs.err"
    status=$?
    echo "$input $attempt $status" >>"{work}/attempts.log"
    if ((status == {retry_on} && attempt < {MAX_ATTEMPTS})); then
        sleep {RETRY_SLEEP_S}
        continue
    fi
    exit $status
done
"""
        )
        runner.chmod(0o755)
        return runner

    def run_setup(self, setup: str, durations: list[int]) -> Row:
        p = self.params
        slug = setup.replace(" ", "-")
        work = self.root / slug
        (work / "in").mkdir(parents=True)
        (work / "locks").mkdir(mode=0o1777)
        inputs = []
        for number, seconds in enumerate(durations):
            target = work / "in" / f"job{number:03d}-{seconds}s.wav"
            os.link(self.masters / f"{seconds}s.wav", target)
            inputs.append(target)
        devices = work / "devices.json"
        self._device_file(devices)
        env = {
            "PATH": f"{self.bin}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
            + os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work / "home"),
            "XDG_CONFIG_HOME": str(work / "xdg-config"),
            "XDG_CACHE_HOME": str(work / "xdg-cache"),
            "LANG": "C.UTF-8",
            "REPLAY_ROOT": str(self.root),
            "REPLAY_DEVICES": str(devices),
            "REPLAY_EVENTS": str(work / "events.jsonl"),
            "REPLAY_SCALE": str(p.scale),
            "GPUROUTER_NVML_FILE": str(devices),
            # the bash router's inputs (benchmarks/bash_router.sh)
            "WORKLOAD_BINARY": "fake-whisper",
            "THRESHOLD_VALUE": str(THRESHOLD_S),
            "MAX_GPU_JOBS": "1",
            "MAX_CPU_JOBS": "1",
            "GPU_ARGS": "--device cuda",
            "CPU_ARGS": "--device cpu",
            "ROUTER_LOGFILE": str(work / "router.log"),
            "ROUTER_GPU_LOCK": str(work / "locks" / "gpu.lock"),
            "ROUTER_CPU_LOCK": str(work / "locks" / "cpu.lock"),
        }
        standin = self.spawn(
            [
                *(sys.executable, str(STANDINS), "ollama", str(devices), "0", str(OLLAMA_MIB)),
                *(str(work / "ollama.calls"), str(p.ollama_free_delay_s)),
            ],
            env,
            stdout=subprocess.PIPE,
        )
        assert standin.stdout is not None
        url = f"http://127.0.0.1:{standin.stdout.readline().decode().strip()}"
        env["GPUROUTER_CONFIG"] = str(self._config(setup, work, url))
        runner = self._runner(setup, work)
        me = [sys.executable, "-I", str(Path(__file__).resolve())]
        # the resident is loaded when the day starts; the client reloads it after each unload
        body = json.dumps({"model": "llama3", "prompt": "hi"}).encode()
        request = urllib.request.Request(url + "/api/generate", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()
        self.spawn([*me, "trainer", str(devices), str(p.trainer_on_s), str(p.trainer_off_s),
                    str(work / "trainer.json")], env)  # fmt: skip
        self.spawn([*me, "client", str(devices), url, str(p.client_every_s), str(work / "client.json")], env)
        self.spawn([*me, "sampler", str(devices), str(work / "devices.log")], env)
        listing = work / "inputs.txt"
        listing.write_text("".join(f"{path}\n" for path in inputs))
        started = time.monotonic()
        done = self.spawn(
            [
                "parallel",
                "--will-cite",
                "-j",
                str(p.parallel_j),
                "-a",
                str(listing),
                f"REPLAY_T0=$(date +%s.%N) exec {runner} {{}}",
            ],
            env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "parallel.err", "wb"),  # noqa: SIM115 (closed with the replay dir)
        )
        try:
            done.wait(timeout=p.setup_timeout_s)
        except subprocess.TimeoutExpired:
            _say(f"{setup}: parallel still running after {p.setup_timeout_s:g} s: killed, measured as is")
        wall = time.monotonic() - started
        self.kill_all()
        return self._measure(setup, work, inputs, wall)

    # -- measures

    def _measure(self, setup: str, work: Path, inputs: list[Path], wall: float) -> Row:
        events = [json.loads(line) for line in _lines(work / "events.jsonl")]
        lost = [path for path in inputs if not path.with_suffix(".txt").exists()]
        finishing = {e["input"]: e for e in events if e["outcome"] == "ok"}
        waits = [e["start"] - e["t0"] for e in finishing.values()]
        small_room, small_room_vram = set(), set()
        for e in events:
            if e["route"] == "cpu" and e["seconds"] < THRESHOLD_S:
                if e["free_at_start"] >= e["need_mib"]:
                    small_room.add(e["input"])
                if e["free_at_start"] >= VRAM_MIB + CUSHION_MIB:
                    small_room_vram.add(e["input"])
        attempts = [line.split() for line in _lines(work / "attempts.log")]
        retries = sum(1 for a in attempts if a[1] != "1")
        statuses = Counter(a[2] for a in attempts)
        journal = [json.loads(line) for line in _lines(work / "locks" / "journal.jsonl")]
        outcomes = Counter(r.get("outcome", "?") for r in journal if r.get("event") == "evict")
        client = _json_or_empty(work / "client.json")
        return Row(
            setup=setup,
            files_lost=len(lost),
            gpu_ooms=sum(1 for e in events if e["outcome"] == "oom"),
            small_cpu_room=len(small_room),
            small_cpu_room_vram=len(small_room_vram),
            p95_wait_s=percentile(waits, 95),
            wall_s=wall,
            gpu_runs=sum(1 for e in events if e["route"] == "gpu"),
            cpu_runs=sum(1 for e in events if e["route"] == "cpu"),
            retries=retries,
            evictions=outcomes.get("evicted", 0) if setup == "gpurouter full" else None,
            evict_outcomes=dict(outcomes),
            trainer=_json_or_empty(work / "trainer.json"),
            client=client,
            resident=_resident_figures(work, client.get("pid")),
            exit_statuses=dict(statuses),
        )


def _resident_figures(work: Path, client_pid: int | None) -> dict[str, int]:
    """The stand-in's loads and unload requests (its call log), and how many times its model's
    memory really left the device (a runner holding OLLAMA_MIB gone from the device-file log)."""
    calls = _lines(work / "ollama.calls")
    freed, holders = 0, set[str]()
    for line in _lines(work / "devices.log"):
        now = {
            entry.split(":")[0]
            for entry in line.split()[2:]
            if entry.endswith(f":{OLLAMA_MIB}") and entry.split(":")[0] != str(client_pid)
        }
        freed += len(holders - now)
        holders = now
    return {
        "loads": sum('"prompt"' in line for line in calls),
        "unload_requests": sum('"keep_alive": 0' in line for line in calls),
        "freed": freed,
    }


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _json_or_empty(path: Path) -> dict[str, int]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def replay(params: Params, setups: tuple[str, ...] = SETUPS, keep: bool = False) -> list[Row]:
    """Run the workload through each set-up; the temp dir and every child are gone on return."""
    if shutil.which("parallel") is None or shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise SystemExit("replay: needs GNU parallel, ffmpeg and ffprobe (scripts/setup test installs them)")
    durations = workload(params.jobs, params.seed)
    params.durations = durations
    box = Replay(params, keep=keep)
    _say(f"working in {box.root}")
    try:
        box.make_media(durations)
        rows = []
        for setup in setups:
            _say(f"replaying {len(durations)} jobs through {setup} ...")
            rows.append(box.run_setup(setup, durations))
            _say(f"  done in {rows[-1].wall_s:.1f} s")
        return rows
    finally:
        box.close()
        if keep:
            _say(f"kept {box.root}")


def _say(message: str) -> None:
    sys.stderr.write(f"replay: {message}\n")
    sys.stderr.flush()


def render(rows: list[Row], params: Params) -> str:
    """The Markdown table, the parameters and the notes."""
    small = sum(1 for d in params.durations if d < THRESHOLD_S)
    out = [
        "| set-up | files lost | GPU OOMs | small on CPU, GPU had room | p95 wait | wall | GPU / CPU runs "
        "| retries | evictions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.setup} | {r.files_lost} | {r.gpu_ooms} | {r.small_cpu_room} ({r.small_cpu_room_vram}) "
            f"| {r.p95_wait_s:.1f} s | {r.wall_s:.1f} s | {r.gpu_runs} / {r.cpu_runs} | {r.retries} "
            f"| {'-' if r.evictions is None else r.evictions} |"
        )
    out += [
        "",
        f"Parameters: {params.jobs} jobs ({small} under the {THRESHOLD_S} s threshold, "
        f"{params.jobs - small} over; durations {dict(sorted(Counter(params.durations).items()))}), "
        f"parallel -j {params.parallel_j}, one {TOTAL_MIB} MiB device, job need 1000 + 25 x d MiB "
        f"(gpurouter full: vram_mib {VRAM_MIB} + cushion {CUSHION_MIB}), run time x{params.scale} "
        f"(GPU 0.2 + d/150 s, CPU 0.5 + d/100 s), trainer {TRAINER_MIB} MiB {params.trainer_on_s:g} s on / "
        f"{params.trainer_off_s:g} s off, ollama stand-in {OLLAMA_MIB} MiB (frees "
        f"{params.ollama_free_delay_s:g} s after an unload) reloaded every {params.client_every_s:g} s "
        f"when unloaded and it fits, gpurouter gpu.slots {GPU_SLOTS} / cpu.slots {CPU_SLOTS} wait = fail, "
        f"bash router 1 GPU / 1 CPU flock slot, runner retry after {RETRY_SLEEP_S} s "
        f"(on 75; on 1 for the bash router), seed {params.seed}.",
        "",
    ]
    for r in rows:
        notes = [f"exit statuses {r.exit_statuses}", f"trainer {r.trainer}", f"client {r.client}"]
        notes.append(
            f"ollama {r.resident['loads']} loads, {r.resident['unload_requests']} unload requests, "
            f"memory freed {r.resident['freed']} times"
        )
        if r.evict_outcomes:
            notes.insert(0, f"evict outcomes {r.evict_outcomes}")
        out.append(f"- {r.setup}: " + "; ".join(notes))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=None, help="number of jobs (80; --quick: 16)")
    parser.add_argument("--quick", action="store_true", help="a smoke version of ~10-20 s")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON after the table")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (for a post-mortem)")
    options = parser.parse_args(argv)
    if options.quick:
        params = Params(jobs=16, scale=0.5, trainer_on_s=1.0, trainer_off_s=1.5, client_every_s=1.5)
        params.ollama_free_delay_s = 0.5
    else:
        params = Params()
    if options.jobs is not None:
        params.jobs = options.jobs
    params.seed = options.seed
    rows = replay(params, keep=options.keep)
    print(render(rows, params))
    if options.json:
        print(json.dumps([r.__dict__ for r in rows]))
    return 0


def _exit_on_signals() -> None:
    """SIGTERM/SIGINT/SIGHUP raise SystemExit, so the `finally:` of `replay` kills and removes."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, handler)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "trainer":
        _exit_on_signals()
        trainer(Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), Path(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        _exit_on_signals()
        client(Path(sys.argv[2]), sys.argv[3], float(sys.argv[4]), Path(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "sampler":
        _exit_on_signals()
        sampler(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        _exit_on_signals()
        sys.exit(main())
