#!/usr/bin/env bash
# The latency the Slurm backend adds per job on the single-node cluster, beside the local path's.
#
#   benchmarks/slurm_latency.sh [RUNS]      # default 20 runs per row; ~15 s; needs root (slurm-up)
#
# Every row runs a no-op job (`bash -c 'echo $EPOCHREALTIME'`) RUNS times, one after another on
# an idle cluster, and reports medians (p90 in brackets) of:
#   to start  = the moment the caller spawned the command -> the job's first instruction
#   to exit   = the moment the caller spawned the command -> the caller saw the exit status
# Rows: the bare job; `gpurouter run` with the local backend (flock slot + exec); bare
# `srun --gres=gpu:1` (what Slurm itself costs: allocation, step launch, teardown); and
# `gpurouter run` with the Slurm backend (probe/route + srun + prolog report + journal).
# "added by Slurm" = Slurm backend minus local backend, i.e. the cost of going through the
# scheduler for each job (srun start to job start, and the teardown on the way out).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
python=.venv/bin/python
[ -x "$python" ] || { echo "slurm_latency: run scripts/setup first (.venv missing)" >&2; exit 1; }
scripts/slurm-up >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat > "$work/local.toml" <<EOF
lock_dir = "$work/locks"
journal = "$work/local.jsonl"
[profiles.bench]
wait = "block"
EOF
cat > "$work/slurm.toml" <<EOF
lock_dir = "$work/locks"
journal = "$work/slurm.jsonl"
[backend]
kind = "slurm"
[profiles.bench]
wait = "block"
EOF

RUNS=$runs WORK=$work "$python" - <<'PY'
import os, statistics, subprocess, sys, time

sys.path.insert(0, "tests")
import slurm_cluster  # noqa: E402  (the driver used until the runner calls the Slurm backend)

runs, work = int(os.environ["RUNS"]), os.environ["WORK"]
gpurouter = os.path.join(os.path.dirname(sys.executable), "gpurouter")
job = ["bash", "-c", "echo $EPOCHREALTIME"]
env = {**os.environ, "HOME": work, "XDG_CACHE_HOME": f"{work}/cache", "XDG_CONFIG_HOME": f"{work}/xdg",
       "GPUROUTER_ROUTE": "gpu"}


def gpurouter_run(config: str) -> list[str]:
    return ["run", "--config", config, "--profile", "bench", "--", *job]


rows = [
    ("bare job", job),
    ("gpurouter, local backend", [gpurouter, *gpurouter_run(f"{work}/local.toml")]),
    ("bare srun --gres=gpu:1", ["srun", "--quiet", "--gres=gpu:1", "--", *job]),
    ("gpurouter, Slurm backend", slurm_cluster.gpurouter_command(gpurouter, *gpurouter_run(f"{work}/slurm.toml"))),
]


def measure(argv: list[str]) -> tuple[float, float]:
    began = time.time()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    ended = time.time()
    if done.returncode != 0:
        sys.exit(f"slurm_latency: {argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
    return float(done.stdout.split()[-1]) - began, ended - began


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return f"{statistics.median(values) * 1000:7.1f} ms ({p90 * 1000:.1f})"


results = {}
for name, argv in rows:
    measure(argv)  # warm-up: page cache, config memo, slurmctld's first RPCs
    samples = [measure(argv) for _ in range(runs)]
    results[name] = ([s[0] for s in samples], [s[1] for s in samples])
    print(f"  measured {name}", file=sys.stderr)

print(f"\nSlurm backend latency, {runs} sequential no-op jobs per row, medians (p90)")
print(f"runner wired: {slurm_cluster.RUNNER_WIRED} (False: run_slurm driven by tests/slurm_cluster.py's DRIVER)\n")
print(f"| {'path':<28} | {'to job start':>22} | {'to exit seen':>22} |")
print(f"|{'-' * 30}|{'-' * 24}|{'-' * 24}|")
for name, (start, done) in results.items():
    print(f"| {name:<28} | {summary(start):>22} | {summary(done):>22} |")
local, slurm = results["gpurouter, local backend"], results["gpurouter, Slurm backend"]
added_start = statistics.median(slurm[0]) - statistics.median(local[0])
added_exit = statistics.median(slurm[1]) - statistics.median(local[1])
bare = results["bare job"]
srun_start = statistics.median(results["bare srun --gres=gpu:1"][0]) - statistics.median(bare[0])
print(f"\nadded by the Slurm backend per job: {added_start * 1000:.1f} ms to job start, "
      f"{added_exit * 1000:.1f} ms to exit seen (local backend: "
      f"{statistics.median(local[0]) * 1000:.1f} ms to job start)")
print(f"of which Slurm itself (bare srun - bare job): {srun_start * 1000:.1f} ms to job start")
PY
