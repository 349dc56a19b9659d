"""(m) What reading a resident's evidence costs a decision, beside a plain VRAM decision's reads.

    evidence_cost.py [--n 300] [--out FILE]

A device-mode decision (vram_mib) reads the GPUs (here the device file, GPUROUTER_NVML_FILE) and
the claims of the jobs that have just started. Only when the job does not fit and
`on_low_vram = "evict"` may make room does it also read the residents' evidence (issue 15).
This script times, in one process, the plain reads and the plain reads plus the evidence for one
`[residents.ollama]`, found each way the product finds it:

  plain         nvml.query_gpus + placement.read_claims: what every device-mode decision reads
  port owner    + evidence.observe matching NVML's process list to the process that listens on the
                port of the resident's unload URL (/proc/net/tcp, then /proc/*/fd) and its children
  process       + the same with `process = "*standins.py ollama*"` (command-line pattern)
  status        + the service's own `GET /api/ps` over HTTP (what a PID namespace falls back to)
  port owner, /proc/net/tcp
                port owner with the listening socket found in /proc/net/tcp, as where sock_diag is
                refused (a seccomp profile) and as before row (m) was measured (then every
                /proc/*/fd was scanned too: 5.3 ms on the box of the issue-15 note)

The resident is the ollama stand-in of the tests (tests/standins.py), a real HTTP server on
127.0.0.1 whose loaded model is listed in the device file with its runner's pid. Medians in ms
over --n rounds, the order rotating every round, and each against plain. Stdlib + gpurouter;
everything lives in one temp dir; the stand-in is killed on the way out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import Children, exit_on_signals, say

ROOT = Path(__file__).resolve().parent.parent
STANDINS = ROOT / "tests" / "standins.py"
CONFIG = """
lock_dir = "{lock_dir}"
[profiles.job.gpu]
vram_mib = 5000
on_low_vram = "evict"
[residents.ollama]
vram_mib = 4600
{how}
"""
UNLOAD = 'unload = {{ http = "POST {url}/api/generate", body = \'{{"model": "llama3", "keep_alive": 0}}\' }}'
STATUS = 'status = {{ http = "GET {url}/api/ps" }}'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--out")
    options = parser.parse_args()
    exit_on_signals()
    children = Children()
    with tempfile.TemporaryDirectory(prefix="gpurouter-evidence.") as temp:
        work = Path(temp)
        devices = work / "devices.json"
        devices.write_text(
            json.dumps(
                {
                    "devices": [
                        {
                            "index": 0,
                            "uuid": "GPU-0",
                            "name": "bench",
                            "memory_total_mib": 16376,
                            "memory_used_mib": 900,
                            "processes": [],
                        }
                    ]
                }
            )
        )
        (work / "locks").mkdir(mode=0o1777)
        os.environ["GPUROUTER_NVML_FILE"] = str(devices)
        os.environ["XDG_CACHE_HOME"] = str(work / "cache")
        service = children.spawn(
            [sys.executable, str(STANDINS), "ollama", str(devices), "0", "4600", str(work / "calls"), "0.1"],
            stdout=-1,
        )
        try:
            assert service.stdout is not None
            url = f"http://127.0.0.1:{service.stdout.readline().decode().strip()}"
            request = urllib.request.Request(
                url + "/api/generate", data=b'{"model": "llama3", "prompt": "hi"}', method="POST"
            )
            urllib.request.urlopen(request, timeout=5).read()  # a client loads the model
            medians = measure(work, url, options.n)
        finally:
            children.kill_all()
    plain = medians["plain"]
    rows = {name: {"median_ms": ms, "ratio": ms / plain} for name, ms in medians.items()}
    for name, row in rows.items():
        say(f"{name:26} {row['median_ms']:.3f} ms  ({row['ratio']:.1f}x plain)")
    if options.out:
        Path(options.out).write_text(json.dumps({"n": options.n, "rows": rows}))
    else:
        print(json.dumps(rows))
    return 0


def measure(work: Path, url: str, n: int) -> dict[str, float]:
    from gpurouter.gpu import evidence, nvml, placement
    from gpurouter.job import config

    ways = {
        "port owner": UNLOAD.format(url=url),
        "process": UNLOAD.format(url=url) + '\nprocess = "*standins.py ollama*"',
        "status": STATUS.format(url=url),
    }
    settings = {}
    for name, how in ways.items():
        path = work / f"{name.replace(' ', '-')}.toml"
        path.write_text(CONFIG.format(lock_dir=work / "locks", how=how))
        settings[name] = config.load(str(path))
    lock_dir = str(work / "locks")

    def plain() -> nvml.GpuQuery:
        query = nvml.query_gpus()
        placement.read_claims(lock_dir, query.gpus, "gpu")
        return query

    def with_evidence(name: str) -> None:
        if name == "port owner, /proc/net/tcp":
            evidence._listening_by_netlink = refused  # type: ignore[assignment]
            try:
                return with_evidence("port owner")
            finally:
                evidence._listening_by_netlink = by_netlink  # type: ignore[assignment]
        query = plain()
        # status: as in a PID namespace, where NVML's pids cannot be matched and status answers
        foreign = "benchmark: status" if name == "status" else evidence.foreign_pids(query)
        seen = evidence.observe(settings[name].residents, query, {}, foreign)
        expected = "status" if name == "status" else "nvml"
        if seen["ollama"].source != expected or not seen["ollama"].loaded:
            raise SystemExit(f"evidence_cost.py: {name}: expected the model seen by {expected}, got {seen}")

    by_netlink = evidence._listening_by_netlink

    def refused(port: int) -> set[int]:
        raise OSError("benchmark: sock_diag refused")

    names_measured = [*ways, "port owner, /proc/net/tcp"]
    calls = {"plain": plain, **{name: (lambda name=name: with_evidence(name)) for name in names_measured}}
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for _ in range(10):  # warm-up: imports, the first /proc reads
        for call in calls.values():
            call()
    for round_number in range(n):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            began = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - began) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


if __name__ == "__main__":
    sys.exit(main())
