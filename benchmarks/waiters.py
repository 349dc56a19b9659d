"""CPU time and RSS of blocked waiters.

    waiters.py --work DIR --gpurouter PATH --lock-dir DIR --out FILE [--seconds 10]
               [--waiters gpurouter-1,gpurouter-2,flock,sem,batch-slot,batch-gate]

All slots are held by holder.py processes (the sem holder runs under sem), then the
waiters (--waiters; default: the first four) are started side by side and left blocked:

    gpurouter-1  `gpurouter run --profile bench-wait1 --wait block -- /bin/true`  pool w1, slots = 1:
                 the main thread sleeps in flock(2)
    gpurouter-2  `gpurouter run --profile bench-wait2 --wait block -- /bin/true`  pool w2, slots = 2,
                 both held: one thread per slot sleeps in flock(2), the main thread on an Event
    flock(1)     `flock LOCKFILE /bin/true`
    sem          `sem --id ID -j1 --fg /bin/true` (GNU parallel polls with a back-off)
    batch-slot   `gpurouter run --profile bench-batch-slot --wait block -- /bin/true`: pool wb,
                 `priority = "batch"`, no realtime job about: it passes the gate and sleeps in
                 flock(2) on the held slot
    batch-gate   `gpurouter run --profile bench-batch-gate --wait block -- /bin/true`: pool wg,
                 `priority = "batch"`, its slot free but a realtime job waiting (the holder keeps
                 a shared flock on `wg.realtime-waiting`, as a realtime waiter does): it sleeps in
                 flock(LOCK_EX) on that gate

Once every flock waiter shows up on '->' lines of /proc/locks (as many as it has slots) and
one more second has passed (start-up done, sem in its back-off), the script reads CPU time
of each waiter's process tree, sleeps --seconds, reads again, and reads VmRSS. CPU time is
the sum over all threads of /proc/PID/task/TID/schedstat (ns) and, as a cross-check,
utime+stime of /proc/PID/stat (clock ticks, 10 ms each). Thread states and wait channels
are recorded to show the waiters really sleep in the kernel's flock wait.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from _bench import (
    Children,
    blocked_waits,
    cpu_ns,
    cpu_ticks,
    ensure_lock_dir,
    exit_on_signals,
    route_decision,
    rss_kib,
    say,
    slot_files,
    thread_states,
    tree,
    wait_until,
    waited_files,
)

HERE = os.path.dirname(os.path.abspath(__file__))
HOLDER = os.path.join(HERE, "holder.py")
REALTIME_WAITING = "realtime-waiting"  # the gate a realtime waiter holds shared (gpurouter/priority.py)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True)
    parser.add_argument("--gpurouter", required=True)
    parser.add_argument("--lock-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--waiters", default="gpurouter-1,gpurouter-2,flock,sem")
    args = parser.parse_args()
    wanted = list(dict.fromkeys(w for w in args.waiters.split(",") if w))
    known = ("gpurouter-1", "gpurouter-2", "flock", "sem", "batch-slot", "batch-gate")
    if not wanted or any(w not in known for w in wanted):
        sys.exit(f"waiters.py: --waiters takes some of {', '.join(known)}, got {args.waiters!r}")
    exit_on_signals()
    ensure_lock_dir(args.lock_dir)

    sem = shutil.which("sem") or "sem"
    flock = shutil.which("flock") or "flock"
    for tool, path in (("sem", sem), ("flock", flock)):
        if tool in wanted and not os.path.isabs(path):
            sys.exit(f"waiters.py: {tool} must be on PATH")
    scratch = os.path.join(args.work, "waiters")
    os.makedirs(scratch, exist_ok=True)
    holder = [sys.executable, "-I", "-S", HOLDER]
    flock_file = os.path.join(scratch, "flock1.lock")
    sem_id = f"bench-waiters-{os.getpid()}"
    job = ["/bin/true"]
    profiles = {  # waiter -> run options (profiles of run.sh's config), slots it must see
        "gpurouter-1": (["--profile", "bench-wait1", "--wait", "block"], 1),  # pool w1, slots = 1
        "gpurouter-2": (["--profile", "bench-wait2", "--wait", "block"], 2),  # pool w2, slots = 2
        "batch-slot": (["--profile", "bench-batch-slot", "--wait", "block"], 1),  # pool wb, batch
        "batch-gate": (["--profile", "bench-batch-gate", "--wait", "block"], 1),  # pool wg, batch
    }
    holders: dict[str, list[str]] = {}
    waiters: dict[str, tuple[list[str], int]] = {}  # argv, how many flock() calls it sleeps in
    for name in wanted:
        if name == "flock":
            holders[name] = [*holder, "--lock", flock_file]
            waiters[name] = ([flock, flock_file, *job], 1)
            continue
        if name == "sem":
            holders[name] = [sem, "--will-cite", "--id", sem_id, "-j1", "--fg", *holder]
            waiters[name] = ([sem, "--will-cite", "--id", sem_id, "-j1", "--fg", *job], 0)
            continue
        options, count = profiles[name]
        paths = slot_files(args.gpurouter, args.lock_dir, options, job)
        if len(paths) != count:
            sys.exit(f"waiters.py: expected {count} slot(s) for {name}, gpurouter would wait on {paths}")
        if name.startswith("batch-"):
            decision = route_decision(args.gpurouter, options, job)
            if decision.get("priority") != "batch":
                sys.exit(
                    f"waiters.py: {name}'s profile has priority {decision.get('priority')!r}, not 'batch'"
                )
        if name == "batch-gate":  # the slot stays free; a stand-in realtime waiter holds the gate shared
            gate = os.path.join(args.lock_dir, f"{decision['pool']}.{REALTIME_WAITING}")
            holders[name] = [*holder, "--lock-shared", gate]
        else:
            holders[name] = holder + [arg for path in paths for arg in ("--lock", path)]
        waiters[name] = ([args.gpurouter, "run", *options, "--", *job], count)
    kids = Children()
    result: dict[str, dict[str, object]] = {}
    try:
        for name, argv in holders.items():
            ready = os.path.join(scratch, f"{name}.ready")
            proc = kids.spawn([*argv, "--ready", ready])
            wait_until(
                lambda ready=ready, proc=proc: os.path.exists(ready) or proc.poll() is not None,
                20,
                f"the {name} holder is up",
            )
            if proc.poll() is not None:
                raise RuntimeError(f"the {name} holder exited with {proc.returncode}")
        procs = {name: kids.spawn(argv) for name, (argv, _) in waiters.items()}

        def all_blocked() -> bool:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"the {name} waiter exited with {proc.returncode} instead of blocking")
            blocked = blocked_waits()
            return all(blocked[procs[name].pid] >= need for name, (_, need) in waiters.items())

        wait_until(all_blocked, 20, "every waiter sleeps in flock (/proc/locks '->')", poll=0.005)
        time.sleep(1.0)  # let start-up finish; sem settles into its back-off
        trees = {name: tree(proc.pid) for name, proc in procs.items()}
        before = {name: (cpu_ns(pids), cpu_ticks(pids)) for name, pids in trees.items()}
        pids = ", ".join(f"{name} pid {proc.pid}" for name, proc in procs.items())
        say(f"waiters blocked: {pids}; sampling {args.seconds:g} s")
        time.sleep(args.seconds)
        blocked = blocked_waits()
        hz = os.sysconf("SC_CLK_TCK")
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"the {name} waiter exited with {proc.returncode} during the measurement")
            pids = tree(proc.pid)
            if sorted(pids) != sorted(trees[name]):
                say(f"note: the {name} waiter's process tree changed during the measurement")
            after_ns, after_ticks = cpu_ns(pids), cpu_ticks(pids)
            result[name] = {
                "pid": proc.pid,
                "processes": len(pids),
                "cpu_ms": (after_ns - before[name][0]) / 1e6,
                "cpu_ticks_ms": (after_ticks - before[name][1]) * 1000.0 / hz,
                "rss_kib": rss_kib(proc.pid),
                "rss_tree_kib": sum(rss_kib(pid) for pid in pids),
                "blocked_in_flock": blocked[proc.pid],
                "threads": thread_states(proc.pid),
                "waits_on": waited_files(proc.pid, [args.lock_dir, scratch]),
            }
            say(f"{name}: {result[name]}")
    finally:
        kids.kill_all()
    with open(args.out, "w") as handle:
        json.dump({"seconds": args.seconds, "waiters": result}, handle)


if __name__ == "__main__":
    main()
