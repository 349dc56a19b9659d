"""Print the benchmark table from the result files run.sh collected.

    report.py RESULTS_DIR

Reads hyperfine's --export-json files (NAME.ROUND.json for NAME in a, b_wav, b_ogg_first,
b_ogg_cached, g, lib, j: the times of all rounds are pooled per command), handoff.json,
waiters.json, gpu_imports.json, claims_spaced.json, monitor.json, lib_roundtrip.json and facts.json, whichever
the groups run (`run.sh --only`) left; prints ONE markdown table on stdout, then a few notes
(sample sizes, what was subtracted, cross-checks).
"""

from __future__ import annotations

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import percentile


def have(directory: str, name: str) -> bool:
    """Did this run produce NAME (a file) or NAME.*.json (hyperfine rounds)?"""
    if os.path.exists(os.path.join(directory, name)):
        return True
    return any(f.startswith(name + ".") and f.endswith(".json") for f in os.listdir(directory))


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


def dur(value: float) -> str:
    """A duration given in ms, shown in µs below 1 ms."""
    if value == value and abs(value) < 1:
        return f"{value * 1000:.0f} µs"
    return ms(value)


def pct(value: float) -> str:
    return f"{value:.3f} %" if abs(value) < 0.1 else f"{value:.2f} %"


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str, str]] = []
        self.misses: list[str] = []

    def add(
        self,
        figure: str,
        ours: float,
        peer_name: str,
        peer: float,
        fmt,
        kind: str,
        target: float | None,
        floor: float = 0.0,
    ) -> None:
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


def rows_a(directory: str, facts: dict, table: Table, notes: list[str]) -> None:
    if not have(directory, "a"):
        return
    a, a_n = hyperfine_medians(directory, "a")
    figure = "(a) start-up: `run --route cpu -- /bin/true` vs `python -c pass`"
    table.add(
        f"{figure} (median of {a_n['gpurouter']})",
        a["gpurouter"],
        "python -c pass",
        a["python"],
        ms,
        "ratio",
        1.5,
    )
    table.add(
        "(a) start-up vs the runbook's bash router, no input (no ffprobe)",
        a["gpurouter"],
        "bash router",
        a["bash router"],
        ms,
        "info",
        None,
    )
    notes.append(
        "(a) all medians: "
        + ", ".join(f"{k} {ms(v)}" for k, v in a.items())
        + f"; config memo present after warm-up: {facts['memo_warm']}"
    )


def rows_b(directory: str, facts: dict, table: Table, notes: list[str]) -> None:
    rows_b = (
        ("b_wav", "(b) end to end, probe=duration, 2 s WAV (native header)", 0.3),
        ("b_ogg_first", "(b) end to end, 2 s Ogg Vorbis, first call (probe_cache=false: ffprobe)", 1.2),
        ("b_ogg_cached", "(b) end to end, 2 s Ogg Vorbis, cached retry (probe cache warm)", 0.3),
    )
    for name, figure, target in rows_b:
        if not have(directory, name):
            continue
        b, b_n = hyperfine_medians(directory, name)
        table.add(
            f"{figure} (median of {b_n['gpurouter']})",
            b["gpurouter"],
            "bash router",
            b["bash router"],
            ms,
            "ratio",
            target,
        )


def rows_handoff(directory: str, facts: dict, table: Table, notes: list[str]) -> None:
    """(c) against flock(1) and sem, (f) the priority waiters against the plain gpurouter one."""
    if not have(directory, "handoff.json"):
        return
    h = load(directory, "handoff.json")
    net, raw = h["net_ms"], h["raw_ms"]
    tools = [k for k in ("gpurouter", "flock", "sem", "gpurouter-batch", "gpurouter-realtime") if net.get(k)]
    med = {k: statistics.median(net[k]) for k in tools}
    p99 = {k: percentile(net[k], 99) for k in tools}
    n_main = len(net["gpurouter"])
    if "flock" in tools:
        table.add(
            f"(c) blocking hand-off, median (n={n_main})",
            med["gpurouter"],
            "flock(1)",
            med["flock"],
            ms,
            "ratio",
            1.5,
        )
        table.add(
            f"(c) blocking hand-off, p99 (n={n_main})",
            p99["gpurouter"],
            "flock(1)",
            p99["flock"],
            ms,
            "abs",
            10.0,
        )
    if "sem" in tools:
        n_sem = len(net["sem"])
        table.add(
            f"(c) blocking hand-off, median vs sem (sem n={n_sem}, held {h['sem_hold_s']:g} s)",
            med["gpurouter"],
            "sem",
            med["sem"],
            ms,
            "info",
            None,
        )
        table.add(
            f"(c) blocking hand-off, p99 vs sem (sem n={n_sem})",
            p99["gpurouter"],
            "sem",
            p99["sem"],
            ms,
            "info",
            None,
        )
    for tool, label in (("gpurouter-batch", "batch"), ("gpurouter-realtime", "realtime")):
        if tool in tools:
            figure = f'(f) policies: hand-off, `priority = "{label}"` waiter'
            n = len(net[tool])
            table.add(
                f"{figure}, median (n={n})", med[tool], "plain gpurouter", med["gpurouter"], ms, "ratio", 2.0
            )
            table.add(
                f"{figure}, p99 (n={n})", p99[tool], "plain gpurouter", p99["gpurouter"], ms, "abs", 10.0
            )
    notes.append(
        f"(c/f) hand-off = the job's clock read - the holder's T0 - the job's own start-up "
        f"(`{os.path.basename(h['job'])}`, {h['job_cost_method']}, sampled between rounds: "
        f"median {h['job_cost_median_ms']:.3f} ms); raw medians "
        + ", ".join(f"{k} {ms(statistics.median(raw[k]))}" for k in tools)
        + "; max "
        + ", ".join(f"{k} {ms(max(net[k]))}" for k in tools)
    )


def rows_waiters(directory: str, facts: dict, table: Table, notes: list[str]) -> None:
    """(d, e) the core waiters, (f) the blocked batch waiters."""
    if not have(directory, "waiters.json"):
        return
    w = load(directory, "waiters.json")
    waiters, seconds = w["waiters"], w["seconds"]
    cpu = {name: info["cpu_ms"] for name, info in waiters.items()}
    rss = {name: info["rss_kib"] for name, info in waiters.items()}
    floor = 0.05  # ms: below this a peer's CPU time is noise, not a base for a ratio
    if "gpurouter-1" in waiters:
        table.add(
            f"(d) CPU burnt by a blocked waiter over {seconds:g} s, 1 slot (flock in main thread)",
            cpu["gpurouter-1"],
            "flock(1)",
            cpu["flock"],
            ms,
            "abs",
            10.0,
            floor,
        )
        table.add(
            f"(d) CPU burnt by a blocked waiter over {seconds:g} s, 2 slots both held (threads)",
            cpu["gpurouter-2"],
            "flock(1)",
            cpu["flock"],
            ms,
            "abs",
            10.0,
            floor,
        )
        table.add(
            f"(d) CPU over {seconds:g} s, 1 slot, vs a polling waiter",
            cpu["gpurouter-1"],
            "sem",
            cpu["sem"],
            ms,
            "info",
            None,
            floor,
        )
        table.add(
            "(e) RSS (VmRSS) of a blocked waiter, 1 slot",
            rss["gpurouter-1"],
            "flock(1)",
            rss["flock"],
            mib,
            "abs",
            15 * 1024,
        )
        table.add(
            "(e) RSS of a blocked waiter, 2 slots (threads)",
            rss["gpurouter-2"],
            "flock(1)",
            rss["flock"],
            mib,
            "abs",
            15 * 1024,
        )
        table.add(
            "(e) RSS of a blocked waiter, 1 slot, vs sem (perl; whole process tree)",
            rss["gpurouter-1"],
            "sem",
            waiters["sem"]["rss_tree_kib"],
            mib,
            "info",
            None,
        )
    if "batch-slot" in waiters:
        figure = f"(f) policies: CPU burnt by a blocked `batch` waiter over {seconds:g} s"
        table.add(
            f"{figure}, asleep on the slot",
            cpu["batch-slot"],
            "flock(1)",
            cpu["flock"],
            ms,
            "abs",
            10.0,
            floor,
        )
        table.add(
            f"{figure}, asleep at the gate (a realtime job waits)",
            cpu["batch-gate"],
            "flock(1)",
            cpu["flock"],
            ms,
            "abs",
            10.0,
            floor,
        )
    for name, info in waiters.items():
        waits_on = ", ".join(info.get("waits_on", [])) or "-"
        notes.append(
            f"(d/e/f) {name}: cpu {info['cpu_ms']:.3f} ms (schedstat) / {info['cpu_ticks_ms']:.0f} "
            f"ms (utime+stime ticks), RSS {mib(info['rss_kib'])} (tree of {info['processes']}: "
            f"{mib(info['rss_tree_kib'])}), flock waits in /proc/locks: {info['blocked_in_flock']} "
            f"on {waits_on}, threads {' '.join(info['threads'])}"
        )


def rows_gpu(directory: str, facts: dict, table: Table, notes: list[str]) -> None:
    """(g) the NVML-aware decision against the plain threshold one, and what its imports cost."""
    if not have(directory, "g"):
        return
    g, g_n = hyperfine_medians(directory, "g")
    table.add(
        f"(g) GPU awareness: `run -- /bin/true`, `vram_mib = 3700` + 4-GPU device file vs the same "
        f"profile without vram_mib (median of {g_n['vram']})",
        g["vram"],
        "plain threshold",
        g["plain"],
        ms,
        "ratio",
        1.2,
    )
    added = g["vram"] - g["plain"]
    note = f"(g) the NVML-aware decision adds {ms(added)} (vram {ms(g['vram'])}, plain {ms(g['plain'])})"
    if have(directory, "gpu_imports.json"):
        imports = load(directory, "gpu_imports.json")
        parts = []
        for root in imports["roots"][:4]:
            importer = root["importer"] or "?"
            where = f"imported by {importer}"
            if importer.startswith("encodings.search_function"):
                where = "a codec lookup: .encode/.decode('ascii')"
            below = ", ".join(f"{name} {us / 1000:.1f}" for name, us in root["heaviest_below"][:3])
            parts.append(
                f"{root['module']} {root['cumulative_us'] / 1000:.1f} ms ({where}"
                + (f"; below it: {below} ms" if below else "")
                + ")"
            )
        rest = max(0.0, added - imports["added_us"] / 1000)
        note += (
            f"; of which imports ~{imports['added_us'] / 1000:.1f} ms (-X importtime, median of "
            f"{imports['runs']}; {imports['added_modules']} modules the plain run does not load: "
            + "; ".join(parts)
            + f"), the rest ~{rest:.1f} ms placement work (device file read, "
            "claim probes, decide lock, device slot, claim)"
        )
        locks = imports.get("proc_locks_read_us")
        if locks:
            note += (
                f"; the first read of /proc/locks in a process (how claims were judged before issue 16, "
                f"row (l)) takes {locks['paused'] / 1000:.1f} ms after a 0.3 s pause, "
                f"{locks['back_to_back'] / 1000:.1f} ms back to back (median of 5 each; the kernel "
                "waits for an RCU grace period unless one just passed: hyperfine's back-to-back runs "
                "see the cheaper case)"
            )
    notes.append(note)


def rows_claims(directory: str, facts: dict, table: Table, notes: list[str]) -> None:
    """(l) the device-mode decision with a claim held, spaced as jobs arrive and back to back."""
    if not have(directory, "claims_spaced.json"):
        return
    k = load(directory, "claims_spaced.json")
    spaced, back = k["medians_ms"]["spaced"], k["medians_ms"]["back_to_back"]
    n = len(k["spaced_ms"]["vram"])
    table.add(
        f"(l) device-mode `run -- true`, a claim held, runs {k['pause_s']:g} s apart (as jobs arrive; "
        f"median of {n}) vs the same profile without vram_mib",
        spaced["vram"],
        "plain",
        spaced["plain"],
        ms,
        "ratio",
        1.2,
    )
    table.add(
        "(l) the same, claims judged from /proc/locks as before issue 16",
        spaced["vram, /proc/locks"],
        "plain",
        spaced["plain"],
        ms,
        "info",
        None,
    )
    notes.append(
        f"(l) back to back (bursts of {k['burst']}, first dropped; n={len(k['back_to_back_ms']['vram'])}): "
        f"vram {ms(back['vram'])}, vram judged from /proc/locks {ms(back['vram, /proc/locks'])}, plain "
        f"{ms(back['plain'])}; spaced, the /proc/locks judging adds "
        f"{ms(spaced['vram, /proc/locks'] - spaced['vram'])} (the RCU grace period of the first read "
        "in a process), back to back "
        f"{ms(back['vram, /proc/locks'] - back['vram'])}"
    )


def rows_evidence(directory: str, facts: dict, table: Table, notes: list[str]) -> None:
    """(m) what a resident's evidence adds to a decision that considers an eviction."""
    if not have(directory, "evidence_cost.json"):
        return
    m = load(directory, "evidence_cost.json")
    rows = m["rows"]
    plain = rows["plain"]["median_ms"]
    table.add(
        "(m) an eviction decision's reads with a resident found by its port (sock_diag + the GPU "
        "processes' fds) vs a plain VRAM decision's reads (device file + claims), in-process median",
        rows["port owner"]["median_ms"],
        "plain",
        plain,
        ms,
        "abs",
        2.0,
    )
    for name, what in (
        ("process", "found by a `process` pattern"),
        ("status", "from its own `GET /api/ps` (a PID namespace)"),
        ("port owner, /proc/net/tcp", "found by its port in /proc/net/tcp (no sock_diag)"),
    ):
        table.add(
            f"(m) the same, the resident {what}", rows[name]["median_ms"], "plain", plain, ms, "info", None
        )
    notes.append(
        f"(m) {m['n']} rounds, order rotating; the resident is the ollama stand-in (tests/standins.py) "
        "on 127.0.0.1 with its model listed in the device file. Read only when a job does not fit and "
        'on_low_vram = "evict" may make room; a plain job reads none of it'
    )


def rows_monitor(directory: str, facts: dict, table: Table, notes: list[str]) -> None:
    """(h) monitor mode's CPU per job-second against a bare Python sampler."""
    if not have(directory, "monitor.json"):
        return
    mon = load(directory, "monitor.json")
    ours, peer, record = mon["monitor"], mon["peer"], mon["end_record"]
    table.add(
        f"(h) See and tune: monitor mode, CPU of the monitoring gpurouter per job-second (`sleep "
        f"{mon['seconds']:g}`, {mon['interval_s']:g} s sampling, device file; % of one core)",
        ours["percent_of_core"],
        "bare Python sampler",
        peer["percent_of_core"],
        pct,
        "abs",
        1.0,
        0.0001,
    )
    per_sample_us = ours["cpu_ms"] * 1000 / max(1.0, mon["window_s"] / mon["interval_s"])
    notes.append(
        f"(h) over {mon['window_s']:.2f} s of the job: monitor {ours['cpu_ms']:.2f} ms "
        f"(schedstat) / {ours['cpu_ticks_ms']:.0f} ms (ticks), ~{per_sample_us:.0f} µs per sample; "
        f"peer {peer['cpu_ms']:.2f} ms / {peer['cpu_ticks_ms']:.0f} ms; the whole monitored run "
        f"(start-up, placement, samples, end record; wait4 rusage) "
        f"{mon['monitor_rusage_total_ms']:.0f} ms CPU; end record: samples {record['samples']}, "
        f"peak_vram_mib {record['peak_vram_mib']} (3000 expected), gpus {record['gpus']}; "
        f"monitor threads {' '.join(mon['monitor_threads'])}"
    )


def rows_library(directory: str, facts: dict, table: Table, notes: list[str]) -> None:
    """(i) `import gpurouter` and the in-process decide + slot round trip, against the CLI."""
    if not have(directory, "lib"):
        return
    lib, lib_n = hyperfine_medians(directory, "lib")
    table.add(
        f"(i) library: `python -c 'import gpurouter'` vs `python -c pass` (median of "
        f"{lib_n['import gpurouter']})",
        lib["import gpurouter"],
        "python -c pass",
        lib["python"],
        ms,
        "ratio",
        1.1,
    )
    table.add(
        "(i) library: `import gpurouter` vs the CLI's `run --route cpu -- /bin/true`",
        lib["import gpurouter"],
        "CLI run",
        lib["gpurouter"],
        ms,
        "info",
        None,
    )
    if not have(directory, "lib_roundtrip.json"):
        return
    trip = load(directory, "lib_roundtrip.json")
    samples = trip["samples_us"]
    table.add(
        f"(i) library: `decide` + `slot` round trip in one process (median of {len(samples)}) vs "
        "the CLI's per-job overhead (a)",
        trip["median_us"] / 1000,
        "CLI run",
        lib["gpurouter"],
        dur,
        "ratio",
        0.1,
    )
    notes.append(
        f"(i) round trip: p99 {percentile(samples, 99):.0f} µs, max {max(samples):.0f} µs (slot "
        f"{trip['slot']}, route {trip['route']}, profile {trip['profile']}; journals start + end); "
        f"in-process `import gpurouter` + api {trip['import_us'] / 1000:.1f} ms; CLI run minus "
        f"`python -c pass`: {ms(lib['gpurouter'] - lib['python'])}"
    )


def rows_workloads(directory: str, facts: dict, table: Table, notes: list[str]) -> None:
    """(j) `no_input = "pass"` (issue 14): an input-less call must cost no more than a routed run."""
    if not have(directory, "j"):
        return
    j, j_n = hyperfine_medians(directory, "j")
    table.add(
        f"(j) no_input = pass: `-version` untouched vs `-i 2 s WAV` probed + slot + journal (median of "
        f"{j_n['pass']})",
        j["pass"],
        "run",
        j["run"],
        ms,
        "ratio",
        1.0,
    )


def main() -> None:
    directory = sys.argv[1]
    facts = load(directory, "facts.json")
    table = Table()
    notes = [
        f"box: {facts['nproc']} CPUs, load average {facts['load_before']} before / "
        f"{facts['load_after']} after; {facts['python']}; {facts['hyperfine']}; {facts['parallel']}; "
        f"{facts['flock']}; groups: {', '.join(facts.get('groups', []))}"
    ]
    for rows in (
        rows_a,
        rows_b,
        rows_handoff,
        rows_waiters,
        rows_gpu,
        rows_claims,
        rows_evidence,
        rows_monitor,
        rows_library,
        rows_workloads,
    ):
        rows(directory, facts, table, notes)
    print(table.render())
    print()
    if table.misses:
        notes.append("MISSED: " + "; ".join(table.misses))
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
