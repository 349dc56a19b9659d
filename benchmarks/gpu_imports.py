"""Which imports an NVML-aware decision adds to `gpurouter run` (python -X importtime).

    gpu_imports.py --python PY --gpurouter PATH --out FILE [--runs 7]
                   --base "RUN OPTIONS" --aware "RUN OPTIONS" [-- COMMAND...]

Runs `PY -X importtime GPUROUTER run OPTIONS -- COMMAND` RUNS times for each of the two option
sets (alternating), in the caller's environment (run.sh sets GPUROUTER_NVML_FILE). Per module:
the median of its self and cumulative µs. The modules only the aware run imports are grouped
into subtrees: a root is such a module whose importer is not one (e.g. `json`, imported by
gpurouter.gpu.nvml to read the device file, with `json.decoder` -> `re` -> `enum` ... below it).
Written: the roots with their cumulative µs and their heaviest aware-only descendants, and the
sum of the roots (the import share of the added start-up; importtime's own bookkeeping
inflates it a little).

Also timed: the first read(2) of /proc/locks in a fresh process (the aware decision reads it
to judge claims), after a 0.3 s pause and back to back. On recent kernels that read takes
file_rwsem for writing, whose percpu_down_write waits for an RCU grace period unless one
just passed: milliseconds of sleep, cheap again when another process read it moments before
(as in hyperfine's back-to-back runs).

importtime cannot say who imported a module from inside a function (a deferred import shows
at the top level). So the aware command runs once more, untimed, under a meta-path finder that
logs, for each module imported, the first frame outside importlib (module.function:line); the
roots get that as their importer.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import tempfile
import time

# Runs the launcher (argv[1]) as __main__ with a finder that logs who imports each new module.
# The log is written line by line: the run ends in an exec.
TRACER = r"""
import os, sys
fd = os.open(os.environ["BENCH_IMPORT_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

class Who:
    @staticmethod
    def find_spec(name, path=None, target=None):
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
            frame = frame.f_back
        if frame is not None:
            where = f"{frame.f_globals.get('__name__')}.{frame.f_code.co_name}:{frame.f_lineno}"
            os.write(fd, f"{name}\t{where}\n".encode())
        return None

sys.meta_path.insert(0, Who)
sys.argv = sys.argv[1:]
with open(sys.argv[0]) as handle:
    code = compile(handle.read(), sys.argv[0], "exec")
exec(code, {"__name__": "__main__", "__file__": sys.argv[0]})
"""


PROC_LOCKS = """
import os, time
fd = os.open("/proc/locks", os.O_RDONLY)
began = time.perf_counter_ns()
os.read(fd, 1 << 20)
print((time.perf_counter_ns() - began) / 1e3)
"""


def proc_locks_first_read_us(python: str, pause_s: float, runs: int) -> list[float]:
    """µs of the first read of /proc/locks in a fresh `python -I -S`, `pause_s` after the last."""
    found = []
    for _ in range(runs):
        time.sleep(pause_s)
        argv = [python, "-I", "-S", "-c", PROC_LOCKS]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
        found.append(float(done.stdout))
    return found


def who_imports(python: str, gpurouter: str, options: list[str], command: list[str]) -> dict[str, str]:
    """module -> 'importer.function:line' for one traced (untimed) run."""
    with tempfile.TemporaryDirectory() as scratch:
        log = os.path.join(scratch, "imports.log")
        done = subprocess.run(
            [python, "-c", TRACER, gpurouter, "run", *options, "--", *command],
            env=dict(os.environ, BENCH_IMPORT_LOG=log),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0 or not os.path.exists(log):
            return {}
        found: dict[str, str] = {}
        with open(log) as handle:
            for line in handle:
                name, _, where = line.rstrip("\n").partition("\t")
                found.setdefault(name, where)
        return found


def parse(stderr: str) -> list[tuple[str, int, int, int]]:
    """(module, self µs, cumulative µs, depth) in importtime's order (a module after its imports)."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        try:
            own, cumulative, name = line[len("import time:") :].split("|", 2)
        except ValueError:
            continue
        depth = (len(name) - len(name.lstrip(" "))) // 2
        rows.append((name.strip(), int(own), int(cumulative), depth))
    return rows


def importers(rows: list[tuple[str, int, int, int]]) -> dict[str, str | None]:
    """module -> the module that imported it (the next row at a smaller depth)."""
    parent: dict[str, str | None] = {}
    for i, (name, _, _, depth) in enumerate(rows):
        parent[name] = next((later[0] for later in rows[i + 1 :] if later[3] < depth), None)
    return parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", required=True)
    parser.add_argument("--gpurouter", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--base", required=True)
    parser.add_argument("--aware", required=True)
    parser.add_argument("command", nargs="*", default=["/bin/true"])
    args = parser.parse_args()

    runs: dict[str, list[list[tuple[str, int, int, int]]]] = {"base": [], "aware": []}
    for i in range(args.runs * 2):
        which = ("base", "aware")[i % 2]
        options = shlex.split(args.base if which == "base" else args.aware)
        argv = [args.python, "-X", "importtime", args.gpurouter, "run", *options, "--", *args.command]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise SystemExit(
                f"gpu_imports.py: {shlex.join(argv)} exited {done.returncode}: {done.stderr[-400:]}"
            )
        runs[which].append(parse(done.stderr))

    def medians(which: str) -> dict[str, tuple[float, float]]:
        values: dict[str, list[tuple[int, int]]] = {}
        for rows in runs[which]:
            for name, own, cumulative, _ in rows:
                values.setdefault(name, []).append((own, cumulative))
        return {
            name: (statistics.median(v[0] for v in pairs), statistics.median(v[1] for v in pairs))
            for name, pairs in values.items()
        }

    base, aware = medians("base"), medians("aware")
    added = {name for name in aware if name not in base}
    parent = importers(runs["aware"][-1])
    roots = sorted((name for name in added if parent.get(name) not in added), key=lambda n: -aware[n][1])
    traced = who_imports(args.python, args.gpurouter, shlex.split(args.aware), args.command)
    paused = proc_locks_first_read_us(args.python, 0.3, 5)
    back_to_back = proc_locks_first_read_us(args.python, 0.0, 5)

    def descendants(root: str) -> list[str]:
        found = []
        for name in added:
            up = parent.get(name)
            while up is not None and up != root:
                up = parent.get(up)
            if up == root:
                found.append(name)
        return sorted(found, key=lambda n: -aware[n][1])

    result = {
        "runs": args.runs,
        "base_total_us": sum(v[0] for v in base.values()),
        "aware_total_us": sum(v[0] for v in aware.values()),
        "added_modules": len(added),
        "added_us": sum(aware[name][1] for name in roots),
        "proc_locks_read_us": {
            "paused": statistics.median(paused),
            "back_to_back": statistics.median(back_to_back),
        },
        "roots": [
            {
                "module": name,
                "importer": parent.get(name) or traced.get(name),
                "cumulative_us": aware[name][1],
                "heaviest_below": [[d, aware[d][1]] for d in descendants(name)[:4]],
            }
            for name in roots
        ],
    }
    with open(args.out, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
