"""Print the benchmark table from the result files run.sh collected.

    report.py RESULTS_DIR

Reads hyperfine's --export-json files (NAME.ROUND.json for NAME in a, b_wav, b_ogg_first,
b_ogg_cached: the times of all rounds are pooled per command), handoff.json, waiters.json
and facts.json; prints ONE markdown table on stdout, then a few notes (sample sizes, what
was subtracted, cross-checks).
"""

from __future__ import annotations

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import percentile  # noqa: E402


def load(directory: str, name: str) -> dict:
    with open(os.path.join(directory, name)) as handle:
        return json.load(handle)


def hyperfine_medians(directory: str, name: str) -> tuple[dict[str, float], dict[str, int]]:
    """command name -> median in ms over the pooled times of all rounds NAME.*.json, and -> n."""
    pooled: dict[str, list[float]] = {}
    rounds = sorted(f for f in os.listdir(directory) if f.startswith(name + ".") and f.endswith(".json"))
    if not rounds:
        raise SystemExit(f"report.py: no {name}.*.json in {directory}")
    for round_file in rounds:
        for result in load(directory, round_file)["results"]:
            pooled.setdefault(result["command"], []).extend(result["times"])
    medians = {command: statistics.median(times) * 1000.0 for command, times in pooled.items()}
    return medians, {command: len(times) for command, times in pooled.items()}


def ms(value: float) -> str:
    if value != value:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f} ms"
    if abs(value) >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str, str]] = []
        self.misses: list[str] = []

    def add(self, figure: str, ours: float, peer_name: str, peer: float, fmt, kind: str,
            target: float | None, floor: float = 0.0) -> None:  # fmt: skip
        """kind: 'ratio' (PASS if ours/peer <= target), 'abs' (PASS if ours <= target), 'info'.

        `floor`: a peer below it is ~0 and makes the ratio meaningless (shown as n/a).
        """
        ratio = ours / peer if peer > floor else float("nan")
        ratio_text = f"{ratio:.2f}x" if ratio == ratio else "n/a (peer ~0)"
        if kind == "ratio":
            target_text = f"<= {target:g}x"
            passed = None if ratio != ratio else ratio <= target  # no valid base: no verdict
        elif kind == "abs":
            target_text = f"<= {fmt(target)}"
            passed = ours <= target
        else:
            target_text, passed = "informational", None
        if passed is None:
            verdict = "info" if kind == "info" else "n/a (peer <= 0: see notes)"
        else:
            verdict = "PASS" if passed else "MISS"
        if passed is False:
            self.misses.append(figure)
        self.rows.append((figure, fmt(ours), f"{peer_name} {fmt(peer)}", ratio_text, target_text, verdict))

    def render(self) -> str:
        header = ("figure", "gpurouter", "peer", "ratio", "target", "verdict")
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def main() -> None:
    directory = sys.argv[1]
    facts = load(directory, "facts.json")
    table = Table()

    a, a_n = hyperfine_medians(directory, "a")
    figure = "(a) start-up: `run --route cpu -- /bin/true` vs `python -c pass`"
    table.add(f"{figure} (median of {a_n['gpurouter']})", a["gpurouter"], "python -c pass", a["python"], ms,
              "ratio", 1.5)  # fmt: skip
    table.add("(a) start-up vs the runbook's bash router, no input (no ffprobe)",
              a["gpurouter"], "bash router", a["bash router"], ms, "info", None)  # fmt: skip
    rows_b = (
        ("b_wav", "(b) end to end, probe=duration, 2 s WAV (native header)", 0.3),
        ("b_ogg_first", "(b) end to end, 2 s Ogg Vorbis, first call (probe_cache=false: ffprobe)", 1.2),
        ("b_ogg_cached", "(b) end to end, 2 s Ogg Vorbis, cached retry (probe cache warm)", 0.3),
    )
    for name, figure, target in rows_b:
        b, b_n = hyperfine_medians(directory, name)
        table.add(f"{figure} (median of {b_n['gpurouter']})", b["gpurouter"], "bash router", b["bash router"],
                  ms, "ratio", target)  # fmt: skip

    h = load(directory, "handoff.json")
    net, raw = h["net_ms"], h["raw_ms"]
    tools = ("gpurouter", "flock", "sem")
    med = {k: statistics.median(net[k]) for k in tools}
    p99 = {k: percentile(net[k], 99) for k in tools}
    n_main, n_sem = len(net["gpurouter"]), len(net["sem"])
    table.add(f"(c) blocking hand-off, median (n={n_main})", med["gpurouter"], "flock(1)", med["flock"], ms,
              "ratio", 1.5)  # fmt: skip
    table.add(f"(c) blocking hand-off, p99 (n={n_main})", p99["gpurouter"], "flock(1)", p99["flock"], ms,
              "abs", 10.0)  # fmt: skip
    table.add(f"(c) blocking hand-off, median vs sem (sem n={n_sem}, held {h['sem_hold_s']:g} s)",
              med["gpurouter"], "sem", med["sem"], ms, "info", None)  # fmt: skip
    table.add(f"(c) blocking hand-off, p99 vs sem (sem n={n_sem})", p99["gpurouter"], "sem", p99["sem"], ms,
              "info", None)  # fmt: skip

    w = load(directory, "waiters.json")
    waiters, seconds = w["waiters"], w["seconds"]
    cpu = {name: info["cpu_ms"] for name, info in waiters.items()}
    rss = {name: info["rss_kib"] for name, info in waiters.items()}
    floor = 0.05  # ms: below this a peer's CPU time is noise, not a base for a ratio
    table.add(f"(d) CPU burnt by a blocked waiter over {seconds:g} s, 1 slot (flock in main thread)",
              cpu["gpurouter-1"], "flock(1)", cpu["flock"], ms, "abs", 10.0, floor)  # fmt: skip
    table.add(f"(d) CPU burnt by a blocked waiter over {seconds:g} s, 2 slots both held (threads)",
              cpu["gpurouter-2"], "flock(1)", cpu["flock"], ms, "abs", 10.0, floor)  # fmt: skip
    table.add(f"(d) CPU over {seconds:g} s, 1 slot, vs a polling waiter",
              cpu["gpurouter-1"], "sem", cpu["sem"], ms, "info", None, floor)  # fmt: skip
    table.add("(e) RSS (VmRSS) of a blocked waiter, 1 slot", rss["gpurouter-1"], "flock(1)", rss["flock"],
              mib, "abs", 15 * 1024)  # fmt: skip
    table.add("(e) RSS of a blocked waiter, 2 slots (threads)", rss["gpurouter-2"], "flock(1)", rss["flock"],
              mib, "abs", 15 * 1024)  # fmt: skip
    table.add("(e) RSS of a blocked waiter, 1 slot, vs sem (perl; whole process tree)",
              rss["gpurouter-1"], "sem", waiters["sem"]["rss_tree_kib"], mib, "info", None)  # fmt: skip

    print(table.render())
    print()
    notes = [
        f"box: {facts['nproc']} CPUs, load average {facts['load_before']} before / {facts['load_after']} "
        f"after; {facts['python']}; {facts['hyperfine']}; {facts['parallel']}; {facts['flock']}",
        "(a) all medians: " + ", ".join(f"{k} {ms(v)}" for k, v in a.items())
        + f"; config memo present after warm-up: {facts['memo_warm']}",
        f"(c) hand-off = the job's clock read - the holder's T0 - the job's own start-up "
        f"(`{os.path.basename(h['job'])}`, {h['job_cost_method']}, sampled between rounds: "
        f"median {h['job_cost_median_ms']:.3f} ms); raw medians "
        + ", ".join(f"{k} {ms(statistics.median(raw[k]))}" for k in tools)
        + "; max " + ", ".join(f"{k} {ms(max(net[k]))}" for k in tools),
    ]  # fmt: skip
    for name in ("gpurouter-1", "gpurouter-2", "flock", "sem"):
        info = waiters[name]
        notes.append(f"(d/e) {name}: cpu {info['cpu_ms']:.3f} ms (schedstat) / {info['cpu_ticks_ms']:.0f} ms "
                     f"(utime+stime ticks), RSS {mib(info['rss_kib'])} (tree of {info['processes']}: "
                     f"{mib(info['rss_tree_kib'])}), flock waits in /proc/locks: {info['blocked_in_flock']}, "
                     f"threads {' '.join(info['threads'])}")  # fmt: skip
    if table.misses:
        notes.append("MISSED: " + "; ".join(table.misses))
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
