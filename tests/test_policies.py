"""Policies on real processes: CPU guard, max-wait escape, realtime over batch, hours, no GPU."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Box, wait_for

LONG_JOB = ["sh", "-c", "exec sleep 30"]


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def proc_nice(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])


def started_pids(box: Box) -> list[int]:
    return [r["pid"] for r in box.records() if r["event"] == "start"]


def job_is_running(pid: int, name: str = "sleep") -> bool:
    try:
        # comm changes early in execve, the new environ a moment later: wait for both.
        return Path(f"/proc/{pid}/comm").read_text().strip() == name and bool(
            Path(f"/proc/{pid}/environ").read_bytes()
        )
    except OSError:
        return False


def test_the_cpu_guard_reaches_the_running_job(box: Box) -> None:
    box.write_config("""
        [profiles.sh.gpu]
        threads = 3
        nice = 7
        ionice = "idle"
        cpus = "0"
    """)
    job = box.start("run", "--", *LONG_JOB, env={"MKL_NUM_THREADS": "1"})
    assert wait_for(lambda: job_is_running(job.pid))
    env = proc_environ(job.pid)
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["NUMEXPR_NUM_THREADS"] == "3"
    assert env["VECLIB_MAXIMUM_THREADS"] == "3"
    assert env["MKL_NUM_THREADS"] == "1"  # the job's own explicit setting wins
    assert proc_nice(job.pid) == 7
    assert "idle" in subprocess.run(["ionice", "-p", str(job.pid)], capture_output=True, text=True).stdout
    status = Path(f"/proc/{job.pid}/status").read_text()
    assert "Cpus_allowed_list:\t0\n" in status
    assert job.pid in started_pids(box)  # no wrapper process: the guard is on the exec'd job itself


def test_force_env_overrides_the_jobs_own_thread_setting(box: Box) -> None:
    box.write_config("[profiles.sh.gpu]\nthreads = 2\nforce_env = true\n")
    job = box.start("run", "--", *LONG_JOB, env={"OMP_NUM_THREADS": "16"})
    assert wait_for(lambda: job_is_running(job.pid))
    assert proc_environ(job.pid)["OMP_NUM_THREADS"] == "2"


def test_a_blocked_job_escapes_after_max_wait_capped_and_niced(box: Box) -> None:
    box.write_config("""
        [profiles.sh]
        wait = "block"
        max_wait = "1s"
        [profiles.sh.escape]
        nice = 15
        threads = 1
    """)
    holder = box.start("run", "--route", "cpu", "--", *LONG_JOB)
    assert wait_for(lambda: job_is_running(holder.pid))
    began = time.monotonic()
    escaped = box.start("run", "--route", "cpu", "--", *LONG_JOB)
    assert wait_for(lambda: job_is_running(escaped.pid), timeout=10)
    assert time.monotonic() - began >= 1.0
    assert proc_nice(escaped.pid) == 15 and proc_environ(escaped.pid)["OMP_NUM_THREADS"] == "1"
    events = [r["event"] for r in box.records()]
    assert events == ["start", "wait", "escape", "start"]
    assert box.records()[-1]["escaped"] is True and box.records()[-1]["slot"] is None


def test_a_gpu_job_never_escapes_its_slot(box: Box) -> None:
    box.write_config('[profiles.sh]\nwait = "1500ms"\nmax_wait = "500ms"\n')
    holder = box.start("run", "--", *LONG_JOB)
    assert wait_for(lambda: job_is_running(holder.pid))
    assert box.run("run", "--", "sh", "-c", "true").returncode == 75  # waited the full 1.5 s, then busy
    assert [r["event"] for r in box.records()][-1] == "busy"


def test_an_escape_keeps_the_route_caps_it_does_not_change(box: Box) -> None:
    box.write_config("""
        [profiles.sh]
        wait = "block"
        max_wait = "300ms"
        [profiles.sh.cpu]
        nice = 5
        threads = 4
        [profiles.sh.escape]
        threads = 1
    """)
    holder = box.start("run", "--route", "cpu", "--", *LONG_JOB)
    assert wait_for(lambda: job_is_running(holder.pid))
    escaped = box.start("run", "--route", "cpu", "--", *LONG_JOB)
    assert wait_for(lambda: job_is_running(escaped.pid), timeout=10)
    assert proc_nice(escaped.pid) == 5 and proc_environ(escaped.pid)["OMP_NUM_THREADS"] == "1"


def test_a_bounded_wait_shorter_than_max_wait_still_ends_busy(box: Box) -> None:
    box.write_config('[profiles.sh]\nwait = "1s"\nmax_wait = "5s"\n')
    holder = box.start("run", "--", *LONG_JOB)
    assert wait_for(lambda: job_is_running(holder.pid))
    assert box.run("run", "--", "sh", "-c", "true").returncode == 75


PRIORITY_CONFIG = """
    [profiles.hold]
    binary = "/bin/sleep"
    [profiles.batch]
    priority = "batch"
    wait = "block"
    [profiles.realtime]
    priority = "realtime"
    wait = "block"
"""


def waiting_count(box: Box, profile: str) -> int:
    return sum(1 for r in box.records() if r["event"] == "wait" and r["profile"] == profile)


def test_a_realtime_job_arriving_after_batch_waiters_gets_the_next_slot_every_time(box: Box) -> None:
    box.write_config(PRIORITY_CONFIG)
    for attempt in range(20):
        box.journal.unlink(missing_ok=True)
        holder = box.start("run", "--profile", "hold", "--", *LONG_JOB)
        assert wait_for(lambda holder=holder: job_is_running(holder.pid))
        batch = [box.start("run", "--profile", "batch", "--", "sh", "-c", "sleep 0.2") for _ in range(2)]
        assert wait_for(lambda: waiting_count(box, "batch") == 2)
        realtime = box.start("run", "--profile", "realtime", "--", "sh", "-c", "sleep 0.2")
        assert wait_for(lambda: waiting_count(box, "realtime") == 1)
        holder.kill()
        holder.wait()
        for job in (realtime, *batch):
            assert job.wait(timeout=20) == 0
        order = [r["profile"] for r in box.records() if r["event"] == "start"]
        assert order[:2] == ["hold", "realtime"], f"attempt {attempt}: {order}"


def test_fail_fast_batch_gets_75_while_a_realtime_job_waits_even_with_a_free_slot(box: Box) -> None:
    box.write_config(PRIORITY_CONFIG + "[profiles.batch.gpu]\nslots = 2\n")
    holder = box.start(
        "run", "--profile", "hold", "--", *LONG_JOB
    )  # holds gpu.0, the realtime profile's only slot
    assert wait_for(lambda: job_is_running(holder.pid))
    realtime = box.start("run", "--profile", "realtime", "--", "true")
    assert wait_for(lambda: waiting_count(box, "realtime") == 1)
    refused = box.run("run", "--profile", "batch", "--wait", "fail", "--", "true")
    assert refused.returncode == 75 and "realtime job has priority" in refused.stderr
    realtime.kill()
    realtime.wait()
    assert box.run("run", "--profile", "batch", "--wait", "fail", "--", "true").returncode == 0


def test_kill_9_of_a_waiting_realtime_job_unblocks_batch_at_once(box: Box) -> None:
    box.write_config(PRIORITY_CONFIG + "[profiles.batch.gpu]\nslots = 2\n")
    holder = box.start("run", "--profile", "hold", "--", *LONG_JOB)
    assert wait_for(lambda: job_is_running(holder.pid))
    realtime = box.start("run", "--profile", "realtime", "--", "true")
    assert wait_for(lambda: waiting_count(box, "realtime") == 1)
    batch = box.start("run", "--profile", "batch", "--", "sh", "-c", "echo batch-ran")
    assert wait_for(lambda: waiting_count(box, "batch") == 1)
    realtime.send_signal(signal.SIGKILL)
    realtime.wait()
    began = time.monotonic()
    assert batch.wait(timeout=10) == 0
    assert time.monotonic() - began < 2


def test_batch_yields_running_keeps_batch_off_while_a_realtime_job_runs(box: Box) -> None:
    box.write_config(
        PRIORITY_CONFIG.replace('priority = "batch"', 'priority = "batch"\nbatch_yields = "running"')
        + "[profiles.batch.gpu]\nslots = 2\n"
    )
    realtime = box.start("run", "--profile", "realtime", "--", *LONG_JOB)
    assert wait_for(lambda: job_is_running(realtime.pid))
    assert box.run("run", "--profile", "batch", "--wait", "fail", "--", "true").returncode == 75
    waiter = box.start("run", "--profile", "batch", "--", "true")
    assert wait_for(lambda: waiting_count(box, "batch") == 1)
    realtime.kill()
    realtime.wait()
    assert waiter.wait(timeout=10) == 0


def local_minute(offset_tz: str) -> int:
    done = subprocess.run(
        ["date", "+%H %M"], env={"TZ": offset_tz}, capture_output=True, text=True, check=True
    )
    hours, minutes = done.stdout.split()
    return int(hours) * 60 + int(minutes)


def hhmm(minute: int) -> str:
    return f"{minute // 60 % 24:02d}:{minute % 60:02d}"


@pytest.mark.parametrize(("outside", "expected"), [("cpu", 0), ("busy", 75)])
def test_outside_the_hours_the_gpu_route_goes_cpu_or_busy(box: Box, outside: str, expected: int) -> None:
    now = local_minute("UTC")
    box.write_config(f"""
        [profiles.sh]
        hours = "{hhmm(now + 120)}-{hhmm(now + 180)}"
        outside_hours = "{outside}"
        [profiles.sh.cpu]
        args = ["cpu-route"]
    """)
    done = box.run("run", "--", "sh", "-c", 'echo "$0"', env={"TZ": "UTC"})
    assert done.returncode == expected
    if outside == "cpu":
        assert done.stdout == "cpu-route\n" and "outside hours" in box.records()[0]["reason"]


def test_inside_the_hours_the_gpu_route_is_used_and_tz_is_honoured(box: Box) -> None:
    now_utc = local_minute("UTC")
    box.write_config(f'[profiles.sh]\nhours = "{hhmm(now_utc + 300 - 2)}-{hhmm(now_utc + 300 + 3)}"\n')
    assert box.run("route", "--json", "--", "sh", env={"TZ": "UTC"}).stdout.count('"route": "cpu"') == 1
    inside = box.run("route", "--json", "--", "sh", env={"TZ": "XXX-05:00"})  # local = UTC + 5 h
    assert '"route": "gpu"' in inside.stdout


def test_outside_hours_wait_starts_the_job_when_the_window_opens(box: Box) -> None:
    import datetime

    utc = datetime.datetime.now(datetime.UTC)
    seconds_now = utc.hour * 3600 + utc.minute * 60 + utc.second
    offset = (seconds_now - (86400 - 4)) % 86400  # local time reads 23:59:56 now: the window opens in ~3-4 s
    tz = f"XXX+{offset // 3600:02d}:{offset // 60 % 60:02d}:{offset % 60:02d}"
    box.write_config('[profiles.sh]\nhours = "00:00-06:00"\noutside_hours = "wait"\n')
    began = time.monotonic()
    done = box.run("run", "--", "sh", "-c", "echo ran", env={"TZ": tz}, timeout=30)
    assert done.returncode == 0 and done.stdout == "ran\n"
    assert 2 <= time.monotonic() - began < 10
    assert [r["event"] for r in box.records()] == ["wait", "start"]
    assert box.records()[0]["wait"] == "window 00:00-06:00"


@pytest.mark.parametrize(("no_gpu", "code"), [("cpu", 0), ("busy", 75), ("fail", 125)])
def test_with_no_usable_gpu_the_profile_says_what_happens(box: Box, no_gpu: str, code: int) -> None:
    box.write_config(f'[profiles.sh]\nno_gpu = "{no_gpu}"\n[profiles.sh.cpu]\nargs = ["cpu-route"]\n')
    done = box.run(
        "run", "--", "sh", "-c", 'echo "$0"', env={"GPUROUTER_NVML_FILE": str(box.root / "none.json")}
    )
    assert done.returncode == code, done.stderr
    if no_gpu == "cpu":
        assert done.stdout == "cpu-route\n"
    else:
        assert "no usable GPU" in done.stderr


def test_gpu_enabled_false_means_no_gpu(box: Box) -> None:
    box.write_config('[gpu]\nenabled = false\n[profiles.sh]\nno_gpu = "busy"\n')
    done = box.run("run", "--", "sh", "-c", "true")
    assert done.returncode == 75 and "gpu.enabled = false" in done.stderr


def test_status_lists_the_processes_actually_holding_and_waiting(box: Box) -> None:
    box.write_config("[profiles.sh.gpu]\nslots = 2\n")
    holders = [box.start("run", "--", *LONG_JOB) for _ in range(2)]
    assert wait_for(lambda: all(job_is_running(h.pid) for h in holders))
    waiter = box.start("run", "--wait", "block", "--", *LONG_JOB)
    assert wait_for(lambda: any(r["event"] == "wait" for r in box.records()))
    import json

    rows = [json.loads(line) for line in box.run("status", "--json").stdout.splitlines()]
    gpu = [row for row in rows if row["pool"] == "gpu"]
    assert sorted(row["holder"]["pid"] for row in gpu) == sorted(h.pid for h in holders)
    assert all(row["holder"]["profile"] == "sh" for row in gpu)
    assert waiter.pid in [w["pid"] for row in gpu for w in row["waiters"]]
    holders[0].kill()
    holders[0].wait()
    assert wait_for(lambda: job_is_running(waiter.pid))
    rows = [json.loads(line) for line in box.run("status", "--json").stdout.splitlines()]
    assert holders[0].pid not in [row["holder"]["pid"] for row in rows if row["holder"]]
    os.kill(waiter.pid, signal.SIGKILL)


def test_status_shows_realtime_waiters_and_batch_jobs_at_the_gate(box: Box) -> None:
    import json

    box.write_config(PRIORITY_CONFIG + "[profiles.batch.gpu]\nslots = 2\n")
    holder = box.start("run", "--profile", "hold", "--", *LONG_JOB)
    assert wait_for(lambda: job_is_running(holder.pid))
    realtime = box.start("run", "--profile", "realtime", "--", "true")
    assert wait_for(lambda: waiting_count(box, "realtime") == 1)
    batch = box.start("run", "--profile", "batch", "--", "true")
    assert wait_for(lambda: waiting_count(box, "batch") == 1)
    rows = [json.loads(line) for line in box.run("status", "--json").stdout.splitlines()]
    gate = next(row for row in rows if row["index"] == -1 and row["holder"]["gate"] == "realtime-waiting")
    assert [job["pid"] for job in gate["holder"]["realtime"]] == [realtime.pid]
    assert [job["pid"] for job in gate["waiters"]] == [batch.pid]
    assert gate["waiters"][0]["priority"] == "batch"
    text = box.run("status").stdout
    assert "batch waiting for realtime jobs" in text and "realtime waiting" in text


def test_an_unusable_lock_dir_with_priority_is_one_clear_line(box: Box) -> None:
    box.config.write_text(f'lock_dir = "{box.root}/missing/locks"\n[profiles.sh]\npriority = "batch"\n')
    done = box.run("run", "--", "sh", "-c", "true")
    assert done.returncode == 125
    assert "lock dir unusable" in done.stderr and "internal error" not in done.stderr
