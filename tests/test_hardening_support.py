"""Shared helpers of the hardening suite (test_hardening_*.py), and tests of the helpers.

- `record_figures`: when $GPUROUTER_FIGURES names a file, each hardening test appends what it
  measured (jobs, peak concurrency, kills, fuzz cases, users) as one JSON line;
  `scripts/reliability-report` renders docs/reliability.md from those lines.
- `Storm`: a retrying runner made of real gpurouter processes (retry on 75 after a short
  random delay, like a CI runner or systemd would, only faster).
- `slot_lock_holders`: who holds or waits for a flock on the files of a lock dir, from the
  kernel (/proc/locks), never from files that can go stale.
- `assert_one_line_error`: every failure is exactly one `gpurouter: ...` line, no traceback.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from conftest import GPUROUTER, Box
from test_runners import overlap

from gpurouter.observe.status import kernel_flocks

FIGURES_VAR = "GPUROUTER_FIGURES"
JOURNAL_KEYS = ("ts", "event", "profile", "route", "metric", "reason", "pid", "argv")


def record_figures(area: str, **figures: Any) -> None:
    """Append one figures line for docs/reliability.md (only when $GPUROUTER_FIGURES is set)."""
    path = os.environ.get(FIGURES_VAR)
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    line = json.dumps({"area": area, "test": test, **figures}, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def assert_one_line_error(stderr: str, *needles: str) -> str:
    """The stderr of a failed call: exactly one `gpurouter: ...` line containing each needle."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {stderr!r}"
    assert lines[0].startswith("gpurouter: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def assert_no_traceback(stderr: str) -> None:
    """Warnings are fine; a Python traceback never is."""
    assert "Traceback" not in stderr, stderr
    for line in stderr.splitlines():
        if line.strip():
            assert line.startswith(("gpurouter: ", "transcribe[")), (
                f"stray stderr line {line!r} in {stderr!r}"
            )


def journal_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a journal, each of which must be one JSON object with the contract's keys."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_bytes().split(b"\n")[:-1], 1):
        try:
            record = json.loads(line)
        except ValueError as error:
            raise AssertionError(f"journal line {number} is not JSON ({error}): {line[:200]!r}") from None
        assert isinstance(record, dict), line
        missing = [key for key in JOURNAL_KEYS if key not in record]
        assert not missing, f"journal line {number} lacks {missing}: {line[:200]!r}"
        records.append(record)
    assert path.read_bytes().endswith(b"\n") or path.stat().st_size == 0, "journal ends in a torn line"
    return records


def slot_lock_holders(lock_dir: Path) -> dict[str, dict[str, list[int]]]:
    """{file name: {"held": [pids], "waiting": [pids]}} for every flock'ed file in `lock_dir`."""
    locks = kernel_flocks()
    found: dict[str, dict[str, list[int]]] = {}
    if not lock_dir.is_dir():
        return found
    for entry in os.scandir(lock_dir):
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        key = (os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)
        if key in locks and (locks[key]["held"] or locks[key]["waiting"]):
            found[entry.name] = locks[key]
    return found


def alive(pid: int) -> bool:
    """Is `pid` a live (not zombie) process?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            return stream.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


class Storm:
    """Many concurrent `gpurouter run -- transcribe ID` processes; those refused with 75 retry.

    `run()` returns {job id: [exit status of each attempt]}. Every attempt is a real process
    of the installed launcher; at most `in_flight` run at once (all of them, for a blocking
    storm), and a refused attempt is started again after `retry_delay` seconds (random).
    """

    def __init__(
        self,
        box: Box,
        ids: Iterable[str],
        *,
        in_flight: int,
        job_sleep: float,
        retry_delay: tuple[float, float] = (0.005, 0.05),
        seed: int = 0,
        timeout: float = 120,
    ) -> None:
        self.box, self.ids, self.in_flight = box, list(ids), in_flight
        self.env = {**box.env, "JOB_SLEEP": f"{job_sleep:g}"}
        self.retry_delay, self.random, self.timeout = retry_delay, random.Random(seed), timeout
        self.stderr: list[str] = []

    def run(self) -> dict[str, list[int]]:
        pending = [(0.0, job) for job in self.ids]  # (not before, id)
        running: dict[str, subprocess.Popen[bytes]] = {}
        exits: dict[str, list[int]] = {job: [] for job in self.ids}
        deadline = time.monotonic() + self.timeout
        try:
            while pending or running:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"storm did not finish in {self.timeout}s: {len(pending)} pending, "
                        f"{len(running)} running"
                    )
                now = time.monotonic()
                ready = [item for item in pending if item[0] <= now]
                for item in ready[: max(0, self.in_flight - len(running))]:
                    pending.remove(item)
                    running[item[1]] = subprocess.Popen(
                        [GPUROUTER, "run", "--", "transcribe", item[1]],
                        env=self.env,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                for job, process in list(running.items()):
                    if process.poll() is None:
                        continue
                    del running[job]
                    assert process.stderr is not None
                    err = process.stderr.read().decode("utf-8", "replace")
                    process.stderr.close()
                    exits[job].append(process.returncode)
                    if err:
                        self.stderr.append(err)
                    if process.returncode == 75:
                        pending.append((time.monotonic() + self.random.uniform(*self.retry_delay), job))
                time.sleep(0.002)
        finally:
            for process in running.values():
                process.kill()
                process.communicate()
        return exits


def check_storm(
    box: Box, ids: list[str], exits: dict[str, list[int]], slots: int, pool: str = "gpu"
) -> dict[str, int]:
    """Assert the storm invariants; return its figures (jobs, attempts, refusals, peak)."""
    finals = Counter(codes[-1] for codes in exits.values())
    assert finals == Counter({0: len(ids)}), f"final exit statuses: {finals}"
    assert all(set(codes[:-1]) <= {75} for codes in exits.values()), "an attempt failed with other than 75"
    refusals = sum(len(codes) - 1 for codes in exits.values())

    lines = box.job_lines()
    starts = Counter(line[3] for line in lines if line[0] == "start")
    ends = Counter(line[3] for line in lines if line[0] == "end")
    assert starts == Counter(ids), (
        f"run twice: {[j for j, n in starts.items() if n > 1]}, lost: {set(ids) - set(starts)}"
    )
    assert ends == Counter(ids)
    peak = overlap(lines)
    assert 1 <= peak <= slots, f"{peak} jobs ran at once on {slots} slot(s)"

    records = journal_lines(box.journal)
    events = Counter(record["event"] for record in records)
    assert events["start"] == len(ids), events
    assert events["busy"] == refusals, f"{events['busy']} busy records for {refusals} refusals"
    started = [record for record in records if record["event"] == "start"]
    assert Counter(record["argv"][1] for record in started) == Counter(ids)
    # exec keeps the pid: the journal's pid is the job's own, and each slot ran one job at a time.
    job_pid = {line[3]: int(line[1]) for line in lines if line[0] == "start"}
    times = {(line[0], int(line[1])): float(line[2]) for line in lines}
    by_slot: dict[str, list[tuple[float, float]]] = {}
    for record in started:
        assert record["pid"] == job_pid[record["argv"][1]]
        assert record["slot"] in {f"{pool}.{i}" for i in range(slots)}, record["slot"]
        pid = record["pid"]
        by_slot.setdefault(record["slot"], []).append((times[("start", pid)], times[("end", pid)]))
    for slot, spans in by_slot.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, f"two jobs held {slot} at once"
    assert not slot_lock_holders(box.lock_dir), "a slot is still held after the storm"
    return {
        "jobs": len(ids),
        "attempts": sum(len(c) for c in exits.values()),
        "refusals": refusals,
        "peak": peak,
        "slots": slots,
    }


# ---------------------------------------------------------------- tests of the helpers


def test_figures_are_appended_only_when_asked(tmp_path: Path, monkeypatch: Any) -> None:
    target = tmp_path / "figures.jsonl"
    monkeypatch.delenv(FIGURES_VAR, raising=False)
    record_figures("x", jobs=1)
    assert not target.exists()
    monkeypatch.setenv(FIGURES_VAR, str(target))
    record_figures("x", jobs=2)
    record_figures("y", kills=3)
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [(line["area"], line.get("jobs"), line.get("kills")) for line in lines] == [
        ("x", 2, None),
        ("y", None, 3),
    ]


def test_one_line_error_check_rejects_tracebacks_and_extra_lines() -> None:
    assert_one_line_error("gpurouter: x: broken\n", "broken")
    for bad in ("Traceback (most recent call last):\n", "gpurouter: a\ngpurouter: b\n", "oops\n"):
        try:
            assert_one_line_error(bad)
        except AssertionError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_a_torn_journal_line_is_reported(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    journal.write_text(
        '{"ts":"t","event":"start","profile":"p","route":"gpu","metric":null,"reason":"r",'
        '"pid":1,"argv":[]}\n{"ts":"t","ev'
    )
    try:
        journal_lines(journal)
    except AssertionError as error:
        assert "torn" in str(error)
    else:
        raise AssertionError("a torn line passed")
