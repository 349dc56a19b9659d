"""Real-GPU benchmark rows: what asking NVML costs a job, lean (ctypes) against nvidia-ml-py.

    gpu_real.py [--runs 15] [--pause-s 0.5] [--json FILE]

Every figure is the median wall time of fresh processes (or of in-process calls), measured here
against a peer in the same run, the runs alternating:

  run plain            `gpurouter run --profile bench-plain -- true`: threshold profile, no NVML
  run vram (lean)      the same profile with `vram_mib`: the per-job NVML path (nvml_lean, ctypes)
  run vram (pynvml)    the same, with nvml.query_gpus forced to nvidia-ml-py (the path before issue 16)
  spaced, claim held   run vram (lean) with a claim held by another job, runs --pause-s apart (as
                       jobs arrive on a real box) against back to back (as hyperfine runs them): until
                       issue 16 the first read of /proc/locks after a pause waited for an RCU grace
                       period; claims are now judged by a flock probe (benchmarks/claims_spaced.py)
  query lean / pynvml  import + nvmlInit + one query, in a fresh interpreter
  monitor sample       one Sampler.sample() of a monitored run (nvidia-ml-py, every field), in process

Runs on a box without a GPU too (every query answers "no GPU" and the rows say so in
`source`): that is how tests/test_gpu_check.py checks the plumbing. Stdlib only; no network.
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

LAUNCH = r"""
import sys
if sys.argv[1] == "pynvml":  # force the operator's bindings onto the per-job path
    import functools
    from gpurouter.gpu import nvml
    nvml.query_gpus = functools.partial(nvml.query_gpus, full=True)
sys.argv = ["gpurouter", *sys.argv[2:]]
from gpurouter.__main__ import main
sys.exit(main())
"""

QUERY = r"""
import sys, time
began = time.perf_counter()
from gpurouter.gpu.nvml import query_gpus
query = query_gpus({}, full=sys.argv[1] == "pynvml")
print((time.perf_counter() - began) * 1000, query.source, len(query.gpus))
"""

SAMPLE = r"""
import os, sys, time
from gpurouter.backends import monitor
sampler = monitor.Sampler({})
sampler.sample(os.getpid())  # the first pays the import and nvmlInit
times = []
for _ in range(int(sys.argv[1])):
    began = time.perf_counter()
    sampler.sample(os.getpid())
    times.append((time.perf_counter() - began) * 1000)
times.sort()
print(times[len(times) // 2], sampler.samples)
"""


def config(work: Path) -> Path:
    path = work / "config.toml"
    path.write_text(f'''lock_dir = "{work}/locks"
journal = "{work}/locks/journal.jsonl"

[profiles.bench-plain]
probe = "duration"
threshold = "1h"
fallback = "gpu"

[profiles.bench-plain.gpu]
slots = 4

[profiles.bench-plain.cpu]
slots = 4

[profiles.bench-vram]
probe = "duration"
threshold = "1h"
fallback = "gpu"

[profiles.bench-vram.gpu]
slots = 4
vram_mib = 256
on_low_vram = "cpu"

[profiles.bench-vram.cpu]
slots = 4
''')
    return path


def timed(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    elapsed = (time.perf_counter() - began) * 1000
    if done.returncode != 0:
        raise SystemExit(f"gpu_real.py: {argv[2:]} exited {done.returncode}: {done.stderr.decode().strip()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--pause-s", type=float, default=0.5)
    parser.add_argument("--json", dest="json_out", help="write the rows here as JSON")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="gpurouter-gpu-bench.") as temp:
        work = Path(temp)
        (work / "launch.py").write_text(LAUNCH)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("GPUROUTER_", "CUDA_VISIBLE"))
        }
        env.update(
            GPUROUTER_CONFIG=str(config(work)),
            HOME=str(work),
            XDG_CACHE_HOME=str(work / "cache"),
            PYTHONPYCACHEPREFIX=str(work / "pycache"),
        )
        py, launch = sys.executable, str(work / "launch.py")

        def run(mode: str, profile: str) -> list[str]:
            return [py, launch, mode, "run", "--profile", profile, "--", "true"]

        kinds = {
            "run plain": run("lean", "bench-plain"),
            "run vram (lean)": run("lean", "bench-vram"),
            "run vram (pynvml)": run("pynvml", "bench-vram"),
        }
        samples: dict[str, list[float]] = {name: [] for name in kinds}
        for argv in kinds.values():  # warm-up: bytecode, the config memo, the page cache
            timed(argv, env)
        for _ in range(args.runs):
            for name, argv in kinds.items():
                samples[name].append(timed(argv, env))
        plain = statistics.median(samples["run plain"])
        for name, values in samples.items():
            median = statistics.median(values)
            rows.append(
                {
                    "row": name,
                    "median_ms": round(median, 2),
                    "vs": "run plain",
                    "ratio": round(median / plain, 3),
                }
            )

        # A claim held by another job: every device-aware decision then judges it (a flock probe of its slot).
        holder = subprocess.Popen(
            [*run("lean", "bench-vram")[:-1], "sleep", "600"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.0)
            spaced, back = [], []
            for _ in range(args.runs):
                time.sleep(args.pause_s)
                spaced.append(timed(kinds["run vram (lean)"], env))
                back.append(timed(kinds["run vram (lean)"], env))
        finally:
            holder.kill()
            holder.wait()
        back_ms = statistics.median(back)
        rows.append(
            {"row": "vram, claim held, back to back", "median_ms": round(back_ms, 2), "vs": "", "ratio": None}
        )
        rows.append(
            {
                "row": f"vram, claim held, {args.pause_s:g} s apart",
                "median_ms": round(statistics.median(spaced), 2),
                "vs": "back to back",
                "ratio": round(statistics.median(spaced) / back_ms, 3),
            }
        )

        queries: dict[str, list[float]] = {"lean": [], "pynvml": []}
        source = "?"
        for _ in range(max(3, args.runs // 2)):
            for mode in queries:
                done = subprocess.run(
                    [py, "-c", QUERY, mode], env=env, capture_output=True, text=True, timeout=60, check=True
                )
                ms, source, _count = done.stdout.split()
                queries[mode].append(float(ms))
        lean_ms = statistics.median(queries["lean"])
        for mode, values in queries.items():
            rows.append(
                {
                    "row": f"query {mode}: import + init + query",
                    "median_ms": round(statistics.median(values), 2),
                    "vs": "query lean",
                    "ratio": round(statistics.median(values) / lean_ms, 3),
                    "source": source,
                }
            )
        done = subprocess.run(
            [py, "-c", SAMPLE, str(max(10, args.runs))],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        sample_ms, counted = done.stdout.split()
        rows.append(
            {
                "row": "monitor: one sample (nvidia-ml-py)",
                "median_ms": round(float(sample_ms), 3),
                "vs": "",
                "ratio": None,
                "samples": int(counted),
            }
        )
    for row in rows:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}x {row['vs']}"
        print(f"{row['row']:<40} {row['median_ms']:>9} ms  {ratio}")
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"source": source, "runs": args.runs, "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
