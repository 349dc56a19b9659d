"""Chaos: kill -9 of gpurouter at random points of its life, and of jobs.

While probing (a slow fake ffprobe), while waiting (--wait block, one and several slots),
between lock and exec (stalled on a full stderr pipe right after the slot is taken and the
`start` record written), and of the job itself. After every kill: no slot held by a dead
process (from /proc/locks), the next job gets the slot at once, the probe cache, the config
memo and the journal stay readable.

$GPUROUTER_CHAOS_KILLS sets the number of random-moment kills (default 30).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import GPUROUTER, Box, wait_for
from test_hardening_support import (
    alive,
    assert_no_traceback,
    journal_lines,
    record_figures,
    slot_lock_holders,
)

from gpurouter.job import probe_cache

RANDOM_KILLS = int(os.environ.get("GPUROUTER_CHAOS_KILLS", "30"))
HOLD_JOB = """#!/bin/sh
# A job whose pid is the job for its whole life (exec, no child holding the slot's fd).
printf 'start %s %s %s\\n' "$$" "$(date +%s.%N)" "$1" >> "$JOB_LOG"
exec sleep "${JOB_SLEEP:-30}"
"""


def install_job(box: Box, name: str = "holdjob") -> None:
    job = box.bin / name
    job.write_text(HOLD_JOB)
    job.chmod(0o755)


def slow_ffprobe(box: Box, seconds: float) -> Path:
    """An ffprobe that marks its start with its parent's pid (gpurouter's), sleeps, then runs the real one."""
    real = shutil.which("ffprobe")
    script = box.root / "slow-ffprobe"
    script.write_text(f'#!/bin/sh\n: > "{box.root}/probing.$PPID"\nsleep {seconds}\nexec {real} "$@"\n')
    script.chmod(0o755)
    return script


def kill_now(process: subprocess.Popen[str]) -> None:
    """kill -9 the gpurouter (or, after exec, the job: same pid) and reap it."""
    try:
        os.kill(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.communicate(timeout=10)


def kill_group(process: subprocess.Popen[str]) -> None:
    """Clean-up after the assertions: orphans (a sleeping fake ffprobe) go too."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def assert_nothing_held_by_the_dead(box: Box) -> None:
    for name, entry in slot_lock_holders(box.lock_dir).items():
        dead = [pid for pid in entry["held"] + entry["waiting"] if not alive(pid)]
        assert not dead, f"{name} is locked by dead pids {dead}"


def assert_next_job_gets_a_slot_at_once(box: Box, *options: str) -> float:
    """A fail-fast job takes the slot at once; returns how long that took (s)."""
    began = time.monotonic()
    done = box.run("run", "--wait", "fail", "--route", "gpu", *options, "--", "true", timeout=20)
    took = time.monotonic() - began
    assert done.returncode == 0, f"next job refused ({done.returncode}): {done.stderr}"
    assert took < 5
    return took


def assert_state_readable(box: Box) -> dict[str, int]:
    """Probe cache entries recall, the config memo loads, the journal parses; returns counts."""
    cache = Path(probe_cache.cache_dir(str(box.lock_dir)))
    entries = leftovers = 0
    if cache.exists():
        for name in os.listdir(cache):
            if name.startswith("."):
                leftovers += 1  # a temporary from a write killed before its rename: never read
                continue
            entries += 1
            assert probe_cache.recall(str(box.lock_dir), name) is not None, f"cache entry {name} unreadable"
    import marshal

    memos = 0
    for memo in (Path(box.env["XDG_CACHE_HOME"]) / "gpurouter").glob("*.memo"):
        marshal.loads(memo.read_bytes())  # whole, never torn (a killed write leaves only its temporary)
        memos += 1
    assert memos, "the config memo was never written"
    records = journal_lines(box.journal)
    status = box.run("status")
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    return {"cache_entries": entries, "cache_temporaries": leftovers, "journal_records": len(records)}


def test_kill_9_at_random_moments_never_leaves_a_slot_held(box: Box, media: dict[str, Path]) -> None:
    """Random kills over the whole life of a run: start-up, config memo, probe, cache write, lock,
    exec, job."""
    install_job(box)
    ffprobe = slow_ffprobe(box, 0.08)
    profile = (
        f'ffprobe = "{ffprobe}"\n[profiles.holdjob]\nprobe = "duration"\nthreshold = "1h"\n'
        "[profiles.holdjob.gpu]\nslots = 2\n"
    )
    rng = random.Random(1)
    phases = {"before the probe": 0, "while probing": 0, "between lock and exec": 0, "in the job": 0}
    for round_ in range(RANDOM_KILLS):
        box.write_config(profile)  # a fresh mtime: the config memo is written again on this run
        clip = box.root / f"clip{round_}.ogg"
        shutil.copy(media["ogg2"], clip)  # a new input identity: no cache hit, a real probe each time
        process = box.start(
            "run", "--", "holdjob", str(clip), env={"JOB_SLEEP": "0.4"}, start_new_session=True
        )
        time.sleep(rng.uniform(0.0, 0.3))
        kill_now(process)
        try:
            assert_nothing_held_by_the_dead(box)
            assert not slot_lock_holders(box.lock_dir), "a killed run still holds a slot"
            assert_next_job_gets_a_slot_at_once(box)
        finally:
            kill_group(process)
        ran = any(line[1] == str(process.pid) for line in box.job_lines())
        started = any(r["event"] == "start" and r["pid"] == process.pid for r in journal_lines(box.journal))
        probed = (box.root / f"probing.{process.pid}").exists()
        phase = (
            "in the job"
            if ran
            else "between lock and exec"
            if started
            else "while probing"
            if probed
            else "before the probe"
        )
        phases[phase] += 1
    state = assert_state_readable(box)
    # The cache still serves: a known clip is not probed again.
    again = box.run("probe", "--json", str(box.root / "clip0.ogg"))
    assert again.returncode == 0 and "Traceback" not in again.stderr
    assert sum(phases.values()) == RANDOM_KILLS
    assert sum(1 for count in phases.values() if count) >= 2, phases  # the kills spread over its life
    record_figures("chaos", kills=RANDOM_KILLS, kind="random moments of a run", phases=phases, **state)


def test_kill_9_while_probing_leaves_no_slot_and_the_orphaned_probe_holds_none(
    box: Box, media: dict[str, Path]
) -> None:
    install_job(box)
    ffprobe = slow_ffprobe(box, 30)
    box.write_config(f'ffprobe = "{ffprobe}"\n[profiles.holdjob]\nprobe = "duration"\nthreshold = "1h"\n')
    process = box.start("run", "--", "holdjob", str(media["ogg2"]), start_new_session=True)
    try:
        assert wait_for(lambda: (box.root / f"probing.{process.pid}").exists(), timeout=20)
        kill_now(process)
        assert not slot_lock_holders(box.lock_dir)
        assert_next_job_gets_a_slot_at_once(box)  # while the orphaned ffprobe still sleeps
        orphans = [int(p) for p in os.listdir("/proc") if p.isdigit() and _session(int(p)) == process.pid]
        assert orphans, "the fake ffprobe should still be sleeping"
        for pid in orphans:  # and it holds no descriptor on the lock dir
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    assert not os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(box.lock_dir))
                except FileNotFoundError:
                    continue
    finally:
        kill_group(process)
    record_figures("chaos", kills=1, kind="while probing (orphaned ffprobe still running)")


def _session(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            return int(stream.read().rsplit(b")", 1)[1].split()[3])  # state ppid pgrp session
    except (OSError, ValueError, IndexError):
        return None


def stalled_stderr() -> tuple[int, int]:
    """A pipe whose buffer is already full: a write to it blocks until someone reads."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"x" * 65536)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    return read_end, write_end


@pytest.mark.parametrize(
    ("slots", "wait"), [(1, "fail"), (3, "fail"), (1, "block"), (3, "block"), (3, "10s")]
)
def test_kill_9_between_lock_and_exec_releases_the_slot(box: Box, slots: int, wait: str) -> None:
    """--verbose says the decision on stderr after the slot is taken and `start` journalled, before
    exec: with stderr stalled, gpurouter sits between lock and exec until killed."""
    install_job(box)
    box.write_config(f"[profiles.holdjob.gpu]\nslots = {slots}\n")
    holders = []
    if wait != "fail":  # make it wait first: all slots held, freed once it sleeps in flock
        holders = [box.start("run", "--", "holdjob", f"holder{i}") for i in range(slots)]
        assert wait_for(lambda: len(slot_lock_holders(box.lock_dir)) == slots)
    read_end, write_end = stalled_stderr()
    try:
        victim = subprocess.Popen(
            [GPUROUTER, "run", "--verbose", "--wait", wait, "--", "holdjob", "victim"],
            env={**box.env, "JOB_SLEEP": "30"},
            stdout=subprocess.DEVNULL,
            stderr=write_end,
        )
        if holders:
            # It journals `wait`, then stalls saying so: let that line through, refill once it sleeps.
            def waiting() -> bool:
                return any(
                    r["event"] == "wait" and r["pid"] == victim.pid for r in journal_lines(box.journal)
                )

            assert wait_for(waiting, timeout=20)
            os.set_blocking(read_end, False)

            def asleep() -> bool:
                return any(victim.pid in e["waiting"] for e in slot_lock_holders(box.lock_dir).values())

            assert wait_for(lambda: _drain(read_end) or asleep(), timeout=20) and wait_for(asleep, timeout=20)
            _refill(write_end)
            for holder in holders:
                kill_now(holder)

        def held_by_victim() -> bool:
            return any(victim.pid in e["held"] for e in slot_lock_holders(box.lock_dir).values())

        assert wait_for(held_by_victim, timeout=20), "the victim never took a slot"
        time.sleep(0.1)
        assert victim.poll() is None
        assert not any(line[3] == "victim" for line in box.job_lines()), "it exec'd: stderr was not stalled"
        starts = [r for r in journal_lines(box.journal) if r["event"] == "start" and r["pid"] == victim.pid]
        assert len(starts) == 1  # between lock and exec: the start record is written, the job not run yet
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        os.close(write_end)
        os.close(read_end)
        for holder in holders:
            if holder.poll() is None:
                kill_now(holder)
    assert not slot_lock_holders(box.lock_dir)
    assert_next_job_gets_a_slot_at_once(box)
    record_figures(
        "chaos", kills=1 + len(holders), kind=f"between lock and exec ({slots} slot(s), wait {wait})"
    )


def _drain(fd: int) -> bool:
    """Read what is there (False when the pipe is empty)."""
    try:
        while os.read(fd, 1 << 16):
            pass
    except BlockingIOError:
        pass
    return False


def _refill(fd: int) -> None:
    os.set_blocking(fd, False)
    try:
        while True:
            os.write(fd, b"x" * 1024)
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, True)


@pytest.mark.parametrize("slots", [1, 2])
def test_kill_9_of_waiters_and_of_the_holding_job(box: Box, slots: int) -> None:
    """Waiters killed at random while they sleep in flock, then the holders' jobs killed: the
    survivors get the slots in turn at once, the killed never run, nothing stays held."""
    install_job(box)
    box.write_config(f"[profiles.holdjob]\nwait = 'block'\n[profiles.holdjob.gpu]\nslots = {slots}\n")
    rng = random.Random(slots)
    holders = [box.start("run", "--", "holdjob", f"holder{i}") for i in range(slots)]
    assert wait_for(lambda: len(slot_lock_holders(box.lock_dir)) == slots)
    waiters = [box.start("run", "--", "holdjob", f"waiter{i}", env={"JOB_SLEEP": "0.05"}) for i in range(12)]
    in_kernel = lambda: sum(len(e["waiting"]) for e in slot_lock_holders(box.lock_dir).values())  # noqa: E731
    assert wait_for(lambda: in_kernel() >= len(waiters), timeout=30), "the waiters never slept in flock"
    doomed = rng.sample(waiters, 6)
    for waiter in doomed:
        time.sleep(rng.uniform(0, 0.05))
        kill_now(waiter)
    assert_nothing_held_by_the_dead(box)
    killed_at = time.time()
    for holder in holders:  # kill -9 of the jobs themselves (after exec the pid is the job's)
        kill_now(holder)
    survivors = [w for w in waiters if w not in doomed]
    for waiter in survivors:
        _, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, err
        assert_no_traceback(err)
    lines = box.job_lines()
    first_start = min(float(line[2]) for line in lines if line[3].startswith("waiter"))
    ran = sorted(line[3] for line in lines if line[3].startswith("waiter"))
    assert ran == sorted(f"waiter{waiters.index(w)}" for w in survivors)
    assert not slot_lock_holders(box.lock_dir)
    assert_next_job_gets_a_slot_at_once(box)
    handoff_ms = (first_start - killed_at) * 1000
    assert handoff_ms < 2000
    record_figures(
        "chaos",
        kills=len(doomed) + len(holders),
        kind=f"waiters and holding jobs ({slots} slot(s))",
        handoff_ms=round(handoff_ms, 1),
    )
