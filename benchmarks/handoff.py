"""Blocking hand-off latency: holder releases the slot -> the blocked waiter's job starts.

    handoff.py --work DIR --gpurouter PATH --lock-dir DIR --out FILE [--job "CMD ARGS"]
               [--n 100] [--n-sem 20] [--sem-hold 1.0]
               [--tools gpurouter,flock,sem,gpurouter-batch,gpurouter-realtime]

One hand-off, for each tool:

1. a holder (holder.py) takes the lock and creates a "ready" file;
2. the waiter starts and blocks, with the same JOB for all three (run.sh passes `stamp`, a
   static C program that prints CLOCK_REALTIME in ns, or `date +%s%N` without a C compiler):
     gpurouter  `gpurouter run --wait block -- JOB`   (slot file LOCK_DIR/gpu.0)
     flock(1)   `flock LOCKFILE JOB`
     sem        `sem --id ID -j1 --fg JOB`            (the holder runs under sem too)
     gpurouter-batch     `gpurouter run --profile bench-batch --wait block -- JOB`
     gpurouter-realtime  `gpurouter run --profile bench-realtime --wait block -- JOB`
   (the last two: profiles of run.sh's config with `priority = "batch"` / `"realtime"` on the
   same gpu pool, so the same slot file: the batch waiter passes the realtime-waiting gate,
   blocks on the slot and checks the gate again once it has won it; the realtime waiter holds
   the gate shared while it blocks on the slot, and the realtime-running gate once it has it);
   gpurouter and flock(1) count as blocked once /proc/locks shows the waiter's pid on a
   '->' line (asleep in flock(2)); sem polls instead of blocking, so its holder keeps the
   semaphore for --sem-hold seconds (1 s) after the waiter was started;
3. the harness writes a byte to the holder's FIFO; the holder writes T0 = time.time_ns()
   and _exits (the kernel drops the flock while tearing it down);
4. the job prints its own start time T1 (CLOCK_REALTIME, as T0).

latency = T1 - T0 - (the start-up cost of the job itself, sampled once per round between
the hand-offs, so under the same load, and its median subtracted from every sample of every
tool: the figure is the hand-off proper). For `stamp` that cost is exec -> clock read
(`stamp --exec-self` prints the time, execs itself, prints it again); for any other job it is
posix_spawn from this script -> clock read, which also counts Python's spawn machinery (an
overestimate of a few tenths of a ms).
The gpurouter and flock(1) holders are the same program flock'ing the same kind of file;
only the waiter differs. Tools are interleaved round by round (the order rotating) so that
background noise hits them alike; --tools picks which run (gpurouter, the base of every
ratio, always does).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import shutil
import statistics
import sys
import time

from _bench import (
    Children,
    blocked_waits,
    ensure_lock_dir,
    exit_on_signals,
    route_decision,
    say,
    slot_files,
    wait_until,
)

HERE = os.path.dirname(os.path.abspath(__file__))
HOLDER = os.path.join(HERE, "holder.py")
# tool -> (profile of run.sh's config, the priority `route --json` must report for it)
PRIORITY_PROFILES = {
    "gpurouter-batch": ("bench-batch", "batch"),
    "gpurouter-realtime": ("bench-realtime", "realtime"),
}
TOOLS = ("gpurouter", "flock", "sem", *PRIORITY_PROFILES)


def read_int(path: str) -> int:
    with open(path) as handle:
        text = handle.read().split()
    if not text:
        raise RuntimeError(f"{path} is empty: the job did not print its start time")
    return int(text[-1])


def job_exec_cost_ms(job: list[str], scratch: str, runs: int) -> list[float]:
    """Start-up cost of the job itself: exec (stamp) or spawn (anything else) -> clock read."""
    out = os.path.join(scratch, "jobcost.out")
    self_exec = os.path.basename(job[0]) == "stamp"
    costs = []
    for _ in range(runs):
        actions = [(os.POSIX_SPAWN_OPEN, 1, out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)]
        before = time.time_ns()
        argv = [job[0], "--exec-self"] if self_exec else job
        pid = os.posix_spawn(job[0], argv, os.environ, file_actions=actions)
        os.waitpid(pid, 0)
        with open(out) as handle:
            stamps = [int(word) for word in handle.read().split()]
        if len(stamps) != (2 if self_exec else 1):
            raise RuntimeError(f"{argv} printed {stamps}, not {'two stamps' if self_exec else 'one stamp'}")
        costs.append((stamps[-1] - (stamps[0] if self_exec else before)) / 1e6)
    return costs


class Round:
    """Files of one hand-off."""

    def __init__(self, scratch: str, tag: str) -> None:
        self.dir = os.path.join(scratch, tag)
        os.makedirs(self.dir)
        self.ready = os.path.join(self.dir, "ready")
        self.go = os.path.join(self.dir, "go")
        self.t0 = os.path.join(self.dir, "t0")
        self.out = os.path.join(self.dir, "out")
        os.mkfifo(self.go)

    def release(self) -> None:
        """Tell the holder to record T0 and exit."""
        fd = -1

        def opened() -> bool:
            nonlocal fd
            try:
                fd = os.open(self.go, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                if error.errno == errno.ENXIO:  # the holder has not opened its end yet
                    return False
                raise
            return True

        wait_until(opened, 10, "the holder listens on its FIFO", poll=0.0005)
        os.write(fd, b"x")
        os.close(fd)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def one_handoff(
    kids: Children,
    rnd: Round,
    holder_argv: list[str],
    waiter_argv: list[str],
    blocked_in_kernel: bool,
    hold_s: float,
) -> float:
    holder = kids.spawn([*holder_argv, "--ready", rnd.ready, "--go", rnd.go, "--t0", rnd.t0])
    try:
        wait_until(lambda: os.path.exists(rnd.ready) or holder.poll() is not None, 20, "the holder is ready")
        if holder.poll() is not None:
            raise RuntimeError(f"holder exited with {holder.returncode}: {holder_argv!r}")
        with open(rnd.out, "wb") as out:
            waiter = kids.spawn(waiter_argv, stdout=out)
        started = time.monotonic()

        def still_waiting() -> None:
            if waiter.poll() is not None:
                raise RuntimeError(f"waiter exited with {waiter.returncode} before its turn: {waiter_argv}")

        def waiter_blocked() -> bool:
            still_waiting()
            return blocked_waits()[waiter.pid] >= 1

        if blocked_in_kernel:
            wait_until(waiter_blocked, 20, f"{waiter_argv[0]} sleeps in flock (/proc/locks)", poll=0.001)
        else:
            time.sleep(max(0.0, hold_s - (time.monotonic() - started)))
            still_waiting()
        rnd.release()
        if kids.reap(holder, 20) != 0:
            raise RuntimeError(f"holder failed with {holder.returncode}")
        code = kids.reap(waiter, 20)
        if code != 0:
            raise RuntimeError(f"waiter failed with {code}: {waiter_argv!r}")
        return (read_int(rnd.out) - read_int(rnd.t0)) / 1e6
    finally:
        rnd.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True)
    parser.add_argument("--gpurouter", required=True)
    parser.add_argument("--lock-dir", required=True, help="gpurouter's lock_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--job", default="date +%s%N", help="the job: prints CLOCK_REALTIME ns on stdout")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--n-sem", type=int, default=20)
    parser.add_argument("--sem-hold", type=float, default=1.0)
    parser.add_argument(
        "--tools", default="gpurouter,flock,sem", help=f"comma-separated, from {','.join(TOOLS)}"
    )
    args = parser.parse_args()
    wanted = ["gpurouter"] + [t for t in dict.fromkeys(args.tools.split(",")) if t and t != "gpurouter"]
    unknown = [t for t in wanted if t not in TOOLS]
    if unknown:
        sys.exit(f"handoff.py: unknown tools {unknown} (known: {', '.join(TOOLS)})")
    exit_on_signals()
    ensure_lock_dir(args.lock_dir)

    job = shlex.split(args.job)
    job[0] = shutil.which(job[0]) or job[0]
    sem = shutil.which("sem") or "sem"
    flock = shutil.which("flock") or "flock"
    if not os.access(job[0], os.X_OK):
        sys.exit(f"handoff.py: the job {job[0]} must be executable")
    for tool, path in (("sem", sem), ("flock", flock)):
        if tool in wanted and not os.path.isabs(path):
            sys.exit(f"handoff.py: {tool} must be on PATH")
    scratch = os.path.join(args.work, "handoff")
    os.makedirs(scratch, exist_ok=True)
    holder = [sys.executable, "-I", "-S", HOLDER]
    flock_file = os.path.join(scratch, "flock1.lock")
    (slot,) = slot_files(args.gpurouter, args.lock_dir, ["--wait", "block"], job)  # default profile: gpu.0
    sem_id = f"bench-handoff-{os.getpid()}"
    tools = {
        "gpurouter": (
            [*holder, "--lock", slot],
            [args.gpurouter, "run", "--wait", "block", "--", *job],
            True,
        ),
        "flock": ([*holder, "--lock", flock_file], [flock, flock_file, *job], True),
        "sem": (
            [sem, "--will-cite", "--id", sem_id, "-j1", "--fg", *holder],
            [sem, "--will-cite", "--id", sem_id, "-j1", "--fg", *job],
            False,
        ),
    }
    for name, (profile, expected) in PRIORITY_PROFILES.items():
        if name not in wanted:
            continue
        options = ["--profile", profile, "--wait", "block"]
        decision = route_decision(args.gpurouter, options, job)
        if decision.get("priority") != expected:
            sys.exit(
                f"handoff.py: profile {profile} has priority {decision.get('priority')!r}, not {expected!r}"
            )
        (priority_slot,) = slot_files(args.gpurouter, args.lock_dir, options, job)
        tools[name] = (
            [*holder, "--lock", priority_slot],
            [args.gpurouter, "run", *options, "--", *job],
            True,
        )
    tools = {name: tools[name] for name in wanted}
    every_round = [name for name in wanted if name != "sem"]

    kids = Children()
    samples: dict[str, list[float]] = {name: [] for name in tools}
    try:
        job_cost = job_exec_cost_ms(job, scratch, 10)
        every = max(1, args.n // max(1, args.n_sem)) if args.n_sem and "sem" in tools else 0
        for i in range(args.n):
            shift = i % len(every_round)
            names = every_round[shift:] + every_round[:shift]  # each tool leads in turn
            if every and i % every == every // 2 and len(samples["sem"]) < args.n_sem:
                names.append("sem")
            job_cost += job_exec_cost_ms(job, scratch, 1)
            for name in names:
                holder_argv, waiter_argv, in_kernel = tools[name]
                rnd = Round(scratch, f"{name}-{i}")
                latency = one_handoff(kids, rnd, holder_argv, waiter_argv, in_kernel, args.sem_hold)
                samples[name].append(latency)
            if (i + 1) % 25 == 0:
                sem_done = f" (sem {len(samples['sem'])}/{args.n_sem})" if "sem" in tools else ""
                say(f"hand-offs: {i + 1}/{args.n} of {', '.join(every_round)}{sem_done}")
    finally:
        kids.kill_all()
    cost = statistics.median(job_cost)
    say(f"job start-up ({shlex.join(job)}): median {cost:.3f} ms, subtracted")
    net = {name: [value - cost for value in values] for name, values in samples.items()}
    with open(args.out, "w") as handle:
        json.dump(
            {
                "raw_ms": samples,
                "net_ms": net,
                "job_cost_ms": job_cost,
                "job_cost_median_ms": cost,
                "sem_hold_s": args.sem_hold,
                "job": shlex.join(job),
                "tools": wanted,
                "job_cost_method": "exec -> clock read"
                if os.path.basename(job[0]) == "stamp"
                else "posix_spawn -> clock read",
            },
            handle,
        )


if __name__ == "__main__":
    main()
