"""(l) A device-mode decision as jobs really arrive: spaced runs against back-to-back ones.

    claims_spaced.py [--runs 12] [--burst 6] [--pause-s 0.5] [--out FILE]

hyperfine starts each run right after the last, which hides a cost that a job arriving on its
own pays: until issue 16 a device-aware decision judged the claims of other jobs by reading
/proc/locks, and the first read of it in a process waits for an RCU grace period (~10-15 ms)
unless another read just paid for one. This script times fresh `gpurouter run -- true` calls
with the device file (GPUROUTER_NVML_FILE) and a claim held by a live holder (another
`gpurouter run` of the vram profile, asleep on its device slot), two ways:

  spaced        each run --pause-s after the previous one ended (jobs as they arrive)
  back to back  bursts of --burst runs, one right after the other (as hyperfine runs them; the
                first run of each burst is dropped)

for three commands, the order rotating every round:

  plain         the threshold profile without vram_mib (no NVML, no placement): the peer
  vram          the same profile with vram_mib = 3700, as built (claims judged by a flock probe
                of the claimed slot, under the decide lock)
  vram, /proc/locks
                the same, with placement forced to judge claims from /proc/locks as before
                issue 16 (placement.read_claims called without decide_held). On a tree from
                before issue 16 this is the code as built.

Medians in ms and each against plain in the same mode. Stdlib only; everything lives in one
temp dir; the holder is killed on the way out (also on SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import Children, exit_on_signals, say

# Every variant goes through this one launcher, so that they differ only in the judging.
LAUNCH = r"""
import sys
if sys.argv[1] == "proc-locks":
    from gpurouter.gpu import placement
    if "decide_held" in placement.read_claims.__code__.co_varnames:
        as_built = placement.read_claims
        def read_claims(*args, **kwargs):
            kwargs["decide_held"] = False  # judged from /proc/locks: the decide lock is ours, so busy
            return as_built(*args, **kwargs)
        placement.read_claims = read_claims
sys.argv = ["gpurouter", *sys.argv[2:]]
from gpurouter.__main__ import main
sys.exit(main())
"""

DEVICES = """{"devices": [
  {"index": 0, "uuid": "GPU-6f1c2a00-0000-0000-0000-000000000000", "name": "NVIDIA RTX A4000",
   "memory_total_mib": 16376, "memory_used_mib": 1200, "utilization_percent": 5, "processes": []},
  {"index": 1, "uuid": "GPU-6f1c2a01-0000-0000-0000-000000000000", "name": "NVIDIA RTX A4000",
   "memory_total_mib": 16376, "memory_used_mib": 1200, "utilization_percent": 5, "processes": []}
]}
"""


def config(work: Path) -> Path:
    path = work / "config.toml"
    profile = 'probe = "duration"\nthreshold = "1h"\nfallback = "gpu"\n'
    path.write_text(
        f'lock_dir = "{work}/locks"\njournal = "{work}/locks/journal.jsonl"\n\n'
        f"[profiles.bench-plain]\n{profile}\n[profiles.bench-plain.gpu]\nslots = 4\n\n"
        f"[profiles.bench-vram]\n{profile}\n[profiles.bench-vram.gpu]\nslots = 4\nvram_mib = 3700\n"
        'on_low_vram = "cpu"\n'
    )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12, help="spaced runs per command")
    parser.add_argument(
        "--burst", type=int, default=6, help="runs per back-to-back burst (rounds = --runs / 2)"
    )
    parser.add_argument("--pause-s", type=float, default=0.5)
    parser.add_argument("--out", help="write the samples and medians here as JSON")
    args = parser.parse_args()
    exit_on_signals()
    children = Children()
    kinds = {
        "plain": ("as-built", "bench-plain"),
        "vram": ("as-built", "bench-vram"),
        "vram, /proc/locks": ("proc-locks", "bench-vram"),
    }
    spaced: dict[str, list[float]] = {name: [] for name in kinds}
    back: dict[str, list[float]] = {name: [] for name in kinds}
    with tempfile.TemporaryDirectory(prefix="gpurouter-claims-bench.") as temp:
        work = Path(temp)
        (work / "launch.py").write_text(LAUNCH)
        (work / "devices.json").write_text(DEVICES)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUROUTER_", "CUDA_VISIBLE"))}
        env.update(
            GPUROUTER_CONFIG=str(config(work)),
            GPUROUTER_NVML_FILE=str(work / "devices.json"),
            HOME=str(work),
            XDG_CACHE_HOME=str(work / "cache"),
            PYTHONPYCACHEPREFIX=str(work / "pycache"),
        )
        env.pop("PYTHONDONTWRITEBYTECODE", None)

        def argv(name: str, *command: str) -> list[str]:
            mode, profile = kinds[name]
            return [
                sys.executable,
                str(work / "launch.py"),
                mode,
                "run",
                "--profile",
                profile,
                "--",
                *(command or ("true",)),
            ]

        def timed(name: str) -> float:
            began = time.perf_counter()
            done = subprocess.run(
                argv(name), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60
            )
            elapsed = (time.perf_counter() - began) * 1000
            if done.returncode != 0:
                raise SystemExit(
                    f"claims_spaced.py: {name} exited {done.returncode}: {done.stderr.decode().strip()}"
                )
            return elapsed

        try:
            holder = children.spawn(argv("vram", "sleep", "600"), env=env, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 10
            while not list((work / "locks").glob("gpu*.claim")):
                if holder.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"claims_spaced.py: the holder wrote no claim (exit {holder.poll()})")
                time.sleep(0.01)
            for name in kinds:  # each must place the job on a device (or not, for plain)
                check = subprocess.run(
                    argv(name, "sh", "-c", 'echo "${CUDA_VISIBLE_DEVICES-}"'),
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                if check.returncode != 0 or bool(check.stdout.strip()) != (name != "plain"):
                    raise SystemExit(
                        f"claims_spaced.py: {name} placed wrongly: {check.stdout!r} {check.stderr!r}"
                    )
                timed(name)  # warm-up: bytecode, the config memo
            names = list(kinds)
            say(
                f"(l) {args.runs} spaced runs ({args.pause_s:g} s apart) and {args.runs // 2} bursts of "
                f"{args.burst} per command, a claim held by pid {holder.pid}"
            )
            for round_ in range(args.runs):
                order = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in order:
                    time.sleep(args.pause_s)
                    spaced[name].append(timed(name))
                if round_ % 2 == 0:
                    for name in order:
                        time.sleep(args.pause_s)
                        burst = [timed(name) for _ in range(args.burst)]
                        back[name].extend(burst[1:])
            if holder.poll() is not None:
                raise SystemExit("claims_spaced.py: the holder died during the run")
        finally:
            children.kill_all()
    medians = {
        mode: {name: statistics.median(samples[name]) for name in kinds}
        for mode, samples in (("spaced", spaced), ("back_to_back", back))
    }
    for mode, label in (("spaced", f"{args.pause_s:g} s apart"), ("back_to_back", "back to back")):
        for name in kinds:
            ratio = medians[mode][name] / medians[mode]["plain"]
            print(f"{name:<18} {label:<14} {medians[mode][name]:8.2f} ms  {ratio:.2f}x plain")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "pause_s": args.pause_s,
                    "runs": args.runs,
                    "burst": args.burst,
                    "medians_ms": medians,
                    "spaced_ms": spaced,
                    "back_to_back_ms": back,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
