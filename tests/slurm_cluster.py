"""Helpers for the Slurm backend's tests: bring up the single-node cluster (scripts/slurm-up),
drive gpurouter against it, and look at Slurm's queue.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SLURM_UP = ROOT / "scripts" / "slurm-up"
CANNOT_INSTALL = 3  # slurm-up's exit code when Slurm cannot be had here (no apt-get, not root, apt failed)


def cluster_up(timeout: float = 300) -> tuple[bool, str]:
    """Run scripts/slurm-up: (True, log) when the cluster is ready, (False, reason) when Slurm cannot
    be installed here (the tests then skip). Any other failure raises: it is a bug to fix, not a skip."""
    if not sys.platform.startswith("linux"):
        return False, "Slurm needs Linux"
    done = subprocess.run([str(SLURM_UP)], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode == 0:
        return True, done.stderr
    if done.returncode == CANNOT_INSTALL:
        return False, f"Slurm cannot be installed here: {done.stderr.strip().splitlines()[-1]}"
    raise RuntimeError(f"scripts/slurm-up failed (exit {done.returncode}):\n{done.stderr}")


LOCK_FILE = "/tmp/gpurouter-slurm-tests.lock"


@contextlib.contextmanager
def exclusive_use() -> Iterator[None]:
    """Hold the machine-wide lock of the single-node cluster's test users for the block."""
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def gpurouter_command(gpurouter: str, *args: str) -> list[str]:
    """The argv of `gpurouter ARGS...` (the runner sends `run` through the Slurm backend)."""
    return [gpurouter, *args]


def squeue(name_prefix: str) -> list[dict[str, str]]:
    """Jobs in Slurm's queue whose name starts with `name_prefix` (every state squeue shows)."""
    done = subprocess.run(
        ["squeue", "--noheader", "--all", "--format=%i|%T|%j|%b|%N"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    jobs = []
    for line in done.stdout.splitlines():
        job_id, state, name, gres, nodes = (line.split("|") + [""] * 5)[:5]
        if name.startswith(name_prefix):
            jobs.append({"job_id": job_id, "state": state, "name": name, "gres": gres, "nodes": nodes})
    return jobs


def wait_queue_empty(name_prefix: str, timeout: float) -> float | None:
    """Seconds until no job named `name_prefix*` is left in the queue (COMPLETING included), or None."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if not squeue(name_prefix):
            return time.monotonic() - began
        time.sleep(0.1)
    return None


def cancel_leftovers(name_prefix: str) -> None:
    """scancel the jobs our own tests started (by their unique name prefix) and wait for them to go."""
    for job in squeue(name_prefix):
        subprocess.run(["scancel", "--quiet", job["job_id"]], check=False, timeout=30)
    wait_queue_empty(name_prefix, 30)


def free_gpus_node() -> tuple[str, int]:
    """(node name, GPUs allocated right now) of the single node."""
    done = subprocess.run(
        ["scontrol", "show", "node", "-o"], capture_output=True, text=True, timeout=30, check=True
    )
    fields = dict(part.split("=", 1) for part in done.stdout.split() if "=" in part)
    used = 0
    for item in fields.get("AllocTRES", "").split(","):
        if item.startswith("gres/gpu="):
            used = int(item.split("=", 1)[1])
    return fields.get("NodeName", ""), used


def max_concurrency(lines: list[list[str]]) -> int:
    """Most jobs running at once, from the example job's `start PID TIME ...` / `end PID TIME ...` lines."""
    events = sorted((float(fields[2]), 1 if fields[0] == "start" else -1) for fields in lines)
    running = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def hostname() -> str:
    """`hostname -s`: the node's name in our single-node cluster."""
    return subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()


def have_slurm_tools() -> bool:
    """Are Slurm's client tools on PATH?"""
    return all(shutil.which(tool) for tool in ("srun", "squeue", "scancel", "sinfo"))


def pid_alive(pid: int) -> bool:
    """Is `pid` a live (not zombie) process?"""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stream:
                    if int(stream.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found
