"""Shared helpers of the benchmark scripts: child bookkeeping and /proc readers.

Every child is started in its own session (its pid is its process group id), its pid is
appended to $BENCH_PIDFILE (run.sh kills whatever is left of those groups on exit), and
`Children.kill_all()` kills the groups it started, by id, on the way out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable


def exit_on_signals() -> None:
    """SIGTERM/SIGINT/SIGHUP raise SystemExit, so `finally:` blocks kill the children."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, handler)


def say(message: str) -> None:
    """A progress line on stderr (stdout is for the table only)."""
    sys.stderr.write(f"  {message}\n")
    sys.stderr.flush()


class Children:
    """Processes this script started; each in its own session so that its group can be killed."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pidfile = os.environ.get("BENCH_PIDFILE")

    def spawn(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        if self.pidfile:
            with open(self.pidfile, "a") as handle:
                handle.write(f"{proc.pid}\n")
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """Kill the child's process group and every descendant (GNU parallel puts its jobs in
        process groups of their own, so killing the group alone would orphan them)."""
        family = tree(proc.pid) if proc.poll() is None else []
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def reap(self, proc: subprocess.Popen[bytes], timeout: float) -> int:
        """Wait for `proc`; kill its group if it overstays. Then kill stragglers of its group."""
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise RuntimeError(f"{proc.args!r} did not finish within {timeout}s") from None
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # e.g. a job a waiter left behind
        except (ProcessLookupError, PermissionError):
            pass
        return code

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None or _group_alive(proc.pid):
                self.kill(proc)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def route_decision(gpurouter: str, run_options: list[str], command: list[str]) -> dict:
    """What `gpurouter route --json OPTIONS -- COMMAND` decides (route, pool, slots, priority, ...)."""
    out = subprocess.run(
        [gpurouter, "route", "--json", *run_options, "--", *command],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if out.returncode != 0:
        raise RuntimeError(f"gpurouter route failed ({out.returncode}): {out.stderr.strip()}")
    return json.loads(out.stdout)


def slot_files(gpurouter: str, lock_dir: str, run_options: list[str], command: list[str]) -> list[str]:
    """The slot files `gpurouter run OPTIONS -- COMMAND` would wait on, from `route --json`
    (so a policy that changes the route or the pool cannot leave the holders on other files)."""
    decision = route_decision(gpurouter, run_options, command)
    if decision.get("no_slot_because"):
        raise RuntimeError(f"gpurouter would take no slot: {decision['no_slot_because']}")
    return [os.path.join(lock_dir, f"{decision['pool']}.{index}") for index in range(int(decision["slots"]))]


def ensure_lock_dir(path: str) -> None:
    """Create gpurouter's lock dir as gpurouter would (mode 1777) if it is not there yet."""
    if not os.path.isdir(path):
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o1777)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting until {what}")
        time.sleep(poll)


def blocked_waits() -> Counter[int]:
    """pid -> number of flock() calls it is blocked in, from the '->' lines of /proc/locks."""
    counts: Counter[int] = Counter()
    with open("/proc/locks") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) > 5 and fields[1] == "->":
                counts[int(fields[5])] += 1
    return counts


def waited_files(pid: int, directories: Iterable[str]) -> list[str]:
    """Names of the files (looked up by inode in `directories`) that `pid` sleeps on in flock()."""
    inodes = []
    with open("/proc/locks") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) > 6 and fields[1] == "->" and fields[5] == str(pid):
                inodes.append(int(fields[6].rsplit(":", 1)[1]))
    names = {}
    for directory in directories:
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    names.setdefault(entry.inode(), entry.name)
        except OSError:
            pass
    return [names.get(inode, f"inode {inode}") for inode in inodes]


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (via /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as handle:
                    todo.extend(int(child) for child in handle.read().split())
            except OSError:
                pass
    return found


def cpu_ns(pids: Iterable[int]) -> int:
    """On-CPU time in ns of all threads of `pids` (schedstat: ns resolution)."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as handle:
                    total += int(handle.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


def cpu_ticks(pids: Iterable[int]) -> int:
    """utime + stime in clock ticks (1/SC_CLK_TCK s) of `pids`, from /proc/PID/stat."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
        except (OSError, ValueError, IndexError):
            pass
    return total


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def thread_states(pid: int) -> list[str]:
    """'S:locks_lock_inode_wait' for each thread of `pid`."""
    states = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/task/{tid}/wchan") as handle:
                wchan = handle.read().strip() or "?"
        except OSError:
            continue
        states.append(f"{state}:{wchan}")
    return states


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
