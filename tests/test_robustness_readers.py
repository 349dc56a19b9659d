"""Issue 12 (robustness round 2), the reader side: pools matched exactly, an unreadable config
directory, a journal that any user can write to, monitored jobs that leave daemons behind, and
what `status` / `top` say about a broken lock dir and about waiters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import GPUROUTER, Box, wait_for
from test_gpus import Devices, device
from test_hardening_hostile import SharedBox, shared, users  # noqa: F401  (the two-user fixtures)
from test_hardening_support import assert_no_traceback, assert_one_line_error

NESTED_UNDER_OWN_POOL = """
[profiles.outer.gpu]
pool = "gpu_small"
[profiles.sh.gpu]
vram_mib = 3700
on_low_vram = "busy"
"""


def test_a_nested_device_call_under_a_pool_that_starts_alike_takes_its_own_device(box: Box) -> None:
    devices = Devices(box.root / "devices.json")
    devices.write(device(0, used=1200))
    box.write_config(NESTED_UNDER_OWN_POOL)
    inner = "gpurouter run -- sh -c 'echo \"held=$GPUROUTER_HELD cuda=$CUDA_VISIBLE_DEVICES\"'"
    done = box.run(
        "run",
        "--profile",
        "outer",
        "--route",
        "gpu",
        "--",
        "sh",
        "-c",
        inner,
        env={"GPUROUTER_NVML_FILE": str(devices.path)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "held=gpu_small,gpu,gpu0 cuda=GPU-00000000-0000-0000-0000-000000000000\n"
    starts = [r for r in box.records() if r["event"] == "start"]
    assert [(r["profile"], r["slot"]) for r in starts] == [("outer", "gpu_small.0"), ("sh", "gpu0.0")]


def test_a_nested_device_call_under_its_own_device_takes_no_second_slot(box: Box) -> None:
    devices = Devices(box.root / "devices.json")
    devices.write(device(0, used=1200))
    box.write_config(NESTED_UNDER_OWN_POOL)
    done = box.run(
        "run",
        "--",
        "sh",
        "-c",
        'echo "cuda=$CUDA_VISIBLE_DEVICES"',
        env={"GPUROUTER_NVML_FILE": str(devices.path), "GPUROUTER_HELD": "gpu7"},
    )
    assert (done.returncode, done.stdout) == (0, "cuda=\n")
    assert (
        box.records()[-1]["no_slot_because"] == "a gpu device is held by a parent gpurouter (GPUROUTER_HELD)"
    )


# ---------------------------------------------------------------- item 5: the config search


@pytest.mark.parametrize("mode", [0o000, 0o600], ids=["mode-000", "readable-not-searchable"])
def test_an_unreadable_config_directory_is_a_config_error_not_the_defaults(
    shared: SharedBox, mode: int
) -> None:
    a = shared.users.a
    xdg = shared.tmp / "xdg-a"
    (xdg / "gpurouter").mkdir(parents=True)
    (xdg / "gpurouter" / "config.toml").write_text('lock_dir = "/nonexistent/never-used"\n')
    for path in (xdg, xdg / "gpurouter", xdg / "gpurouter" / "config.toml"):
        os.chown(path, a.uid, a.gid)
    (xdg / "gpurouter").chmod(mode)
    done = shared.run(
        a, "run", "--", "transcribe", "x", env={"GPUROUTER_CONFIG": "", "XDG_CONFIG_HOME": str(xdg)}
    )
    assert done.returncode == 78
    assert_one_line_error(done.stderr, f"{xdg}/gpurouter/config.toml: cannot be looked up: Permission denied")
    assert not shared.journal.exists()  # no slot, no record: nothing ran under the built-in defaults


def test_a_config_named_inside_an_unreadable_directory_says_why_it_cannot_be_read(shared: SharedBox) -> None:
    a = shared.users.a
    closed = shared.tmp / "closed-a"
    closed.mkdir(mode=0o700)
    closed.chmod(0o000)
    os.chown(closed, a.uid, a.gid)
    done = shared.run(a, "run", "--", "true", env={"GPUROUTER_CONFIG": str(closed / "config.toml")})
    assert done.returncode == 78
    assert_one_line_error(done.stderr, f"{closed}/config.toml: cannot be looked up: Permission denied")


def test_a_missing_config_directory_still_means_the_built_in_defaults(box: Box) -> None:
    done = box.run(
        "config",
        "--json",
        env={
            "GPUROUTER_CONFIG": "",
            "XDG_CONFIG_HOME": str(box.root / "none"),
            "HOME": str(box.root / "no-home"),
        },
    )
    assert done.returncode == 0, done.stderr
    assert_no_traceback(done.stderr)


# ---------------------------------------------------------------- item 7: a journal anyone can write

FORGED = '{"event":"start","pid":1,"slot":[1]}'


def _append(path: Path, *lines: str) -> None:
    path.parent.mkdir(mode=0o1777, exist_ok=True)
    with path.open("a") as stream:
        stream.write("".join(line + "\n" for line in lines))


@pytest.mark.parametrize("command", [("status",), ("status", "--json"), ("top", "--once")], ids=" ".join)
def test_a_forged_start_line_is_skipped_and_counted_by_status_and_top(
    box: Box, command: tuple[str, ...]
) -> None:
    assert box.run("run", "--", "true").returncode == 0
    _append(box.journal, FORGED, '{"event":"wait","pid":"x"}', "not json", '{"event":"start","pid":1e400}')
    done = box.run(*command)
    assert done.returncode == 0, done.stderr
    assert_no_traceback(done.stderr)
    if command[0] == "top":
        assert "skipped 4 malformed journal records" in done.stdout
    else:
        assert done.stderr == "gpurouter: warning: skipped 4 malformed journal records\n"


def _end(metric: str, peak: str = "500", uid: int | None = None, profile: str = "transcribe") -> str:
    owner = "" if uid is None else f',"uid":{uid}'
    return (
        '{"v":1,"ts":"2026-12-01T10:00:00.000+00:00","event":"end","profile":"' + profile + '","route":"gpu",'
        f'"metric":{metric},"kind":"duration","exit_status":0,"peak_vram_mib":{peak}{owner}}}'
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("metric", ["1e20", "1e12", "Infinity", "NaN", "-5", "1e308"])
def test_report_on_a_forged_end_record_finishes_and_counts_it(box: Box, metric: str) -> None:
    _append(
        box.journal, *(_end(m, str(500 + 40 * i), os.getuid()) for i, m in enumerate(("600", "1200", "1800")))
    )
    _append(box.journal, _end(metric, "100", os.getuid()))
    done = box.run("report", "--html", str(box.root / "r.html"), timeout=50)
    assert done.returncode == 0, done.stderr
    valid = (
        metric == "1e12"
    )  # within the readers' physical bounds (a PB, 31 million years): drawn, not skipped
    assert done.stderr == ("" if valid else "gpurouter: warning: skipped 1 malformed journal record\n")
    assert (box.root / "r.html").stat().st_size > 0


def test_stats_json_and_prometheus_carry_the_count_of_malformed_records(box: Box) -> None:
    assert box.run("run", "--", "true").returncode == 0
    forged_start = (
        '{"v":1,"ts":"2026-12-01T10:00:00.000+00:00","event":"start","profile":"x","route":"gpu",'
        '"metric":null,"waited_s":-1e300,"pool":"gpu"}'
    )  # cut from the bytes by the fast path
    _append(
        box.journal, FORGED, _end("1e20"), forged_start, '{"event":"end","profile":"x","duration_s":"long"}'
    )
    done = box.run("stats", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["malformed"], summary["records"]) == (4, 1)
    assert done.stderr == "gpurouter: warning: skipped 4 malformed journal records\n"
    assert box.run("stats", "--prometheus", str(box.root / "m.prom")).returncode == 0
    assert "\ngpurouter_journal_malformed_records_total 4\n" in (box.root / "m.prom").read_text()


AUTO = """
[profiles.transcribe]
probe = "duration"
threshold = "auto"
[profiles.transcribe.gpu]
args = ["--device", "cuda"]
[profiles.transcribe.cpu]
args = ["--device", "cpu"]
"""


def _evidence(shared: SharedBox, owner_uid: int) -> None:
    """The owner's monitored runs (peak = 500 + 40 MiB a minute), in a journal the owner created,
    mode 0666."""
    from journal_factory import monitored_run, write

    shared.lock_dir.mkdir(mode=0o1777)
    shared.lock_dir.chmod(0o1777)
    runs = [
        r
        for i, minutes in enumerate((10, 20, 30, 40))
        for r in monitored_run("transcribe", minutes, 500 + 40 * minutes, run_id=f"{i:012x}", uid=owner_uid)
    ]
    write(shared.journal, runs)
    os.chown(shared.journal, owner_uid, owner_uid)
    shared.journal.chmod(0o666)


def _forge_as(shared: SharedBox, user: object, lines: list[str]) -> None:
    done = shared.shell(user, "cat >> " + str(shared.journal) + " <<'EOF'\n" + "\n".join(lines) + "\nEOF")  # type: ignore[arg-type]
    assert done.returncode == 0, done.stderr


def _root_env(shared: SharedBox, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**shared.env(shared.users.a), "XDG_CACHE_HOME": str(shared.tmp / "cache-root"), **(extra or {})}


def test_records_another_user_appends_steer_neither_auto_nor_tune(
    shared: SharedBox, media: dict[str, Path]
) -> None:
    a, b = shared.users.a, shared.users.b
    shared.write_config(AUTO)
    _evidence(shared, a.uid)
    # B's "runs", a line that sends short files to the GPU (half-second files that used nothing, ten-hour
    # files at 50 GB: the fit's threshold becomes ~5 min), one with a's uid beyond the evidence bounds
    # (5e8 s at 7e8 MiB, on that line), and one number that does not parse (1e999).
    forged = [_end("0.5", "0", b.uid)] * 50 + [_end("36000", "50000", b.uid)] * 50
    forged += [_end("5e8", "7e8", a.uid), _end("1e999", "1", b.uid)]
    _forge_as(shared, b, forged)
    gpus = shared.tmp / "gpus.json"
    gpus.write_text(
        json.dumps(
            {
                "devices": [
                    {
                        "index": 0,
                        "uuid": "GPU-0",
                        "name": "T",
                        "memory_total_mib": 16000,
                        "memory_used_mib": 16000 - 756,
                        "processes": [],
                    }
                ]
            }
        )
    )
    clip = shared.root / "clip.wav"
    clip.write_bytes(media["wav2"].read_bytes())
    done = subprocess.run(
        [GPUROUTER, "run", "--", "transcribe", str(clip)],
        capture_output=True,
        text=True,
        env=_root_env(shared, {"GPUROUTER_NVML_FILE": str(gpus)}),
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("--device cpu")  # 2 s needs ~501 MiB of a 500 MiB budget
    tuned = subprocess.run(
        [GPUROUTER, "tune", "transcribe", "--budget-mib", "1700", "--json"],
        capture_output=True,
        text=True,
        env=_root_env(shared),
        timeout=30,
    )
    assert tuned.returncode == 0, tuned.stderr
    result = json.loads(tuned.stdout)
    assert (result["runs"], result["untrusted"], result["out_of_range"], result["malformed"]) == (
        4,
        100,
        1,
        1,
    )
    assert result["threshold_text"] == "30m"  # (1700 - 500) / 40 MiB a minute, as a's runs alone say
    assert tuned.stderr == (
        "gpurouter: warning: not used: 100 record(s) written by other users, 1 run(s) beyond "
        "the evidence bounds, 1 malformed line(s)\n"
    )


# ---------------------------------------------------------------- item 9: monitored jobs that leave a daemon

DAEMON = """
( while [ ! -e "$GO" ]; do sleep 0.05; done
  for i in 1 2 3; do echo "daemon out $i"; echo "daemon err $i" >&2; sleep 0.05; done
  echo finished > "$MARK" ) &
echo "job err" >&2
exit 7
"""


def test_a_monitored_job_that_leaves_a_daemon_returns_at_once_and_the_daemon_keeps_writing(box: Box) -> None:
    box.write_config("[profiles.sh]\nmonitor = true\n")
    go, mark = box.root / "go", box.root / "daemon.done"
    out, err = box.root / "out.txt", box.root / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        job = subprocess.Popen(
            [GPUROUTER, "run", "--", "sh", "-c", DAEMON],
            stdout=stdout,
            stderr=stderr,
            env={**box.env, "GO": str(go), "MARK": str(mark)},
        )
        try:
            assert job.wait(timeout=30) == 7  # the job's status, while the daemon still waits for GO
        finally:
            go.touch()  # the daemon writes only after gpurouter has gone
    assert wait_for(mark.exists, timeout=10)  # it lived through its writes: no SIGPIPE
    assert wait_for(lambda: "daemon err 3" in err.read_text(), timeout=10)
    assert err.read_text() == "job err\ndaemon err 1\ndaemon err 2\ndaemon err 3\n"
    assert out.read_text() == "daemon out 1\ndaemon out 2\ndaemon out 3\n"
    end = box.records()[-1]
    assert (end["event"], end["exit_status"]) == ("end", 7)
    assert (
        end["duration_s"] < 2.5
    )  # the job's own time (a shell that exits at once), not the 5 s tee wait of before


# ---------------------------------------------------------------- item 12 (part): status and top


@pytest.mark.parametrize("kind", ["missing", "file", "symlink"])
def test_status_says_in_one_line_when_the_lock_dir_is_missing_or_unusable(box: Box, kind: str) -> None:
    if kind == "file":
        box.lock_dir.write_text("")
    elif kind == "symlink":
        box.lock_dir.symlink_to(box.root)
    done = box.run("status")
    if kind == "missing":
        assert done.returncode == 0
        assert done.stderr == (
            f"gpurouter: {box.lock_dir}: does not exist yet: every slot is free (the first job creates it)\n"
        )
    else:
        assert (done.returncode, done.stdout) == (125, "")
        assert_one_line_error(done.stderr, str(box.lock_dir), "lock dir unusable", "no slot can be taken")


def test_a_waiter_on_three_slots_is_listed_once_by_status_and_top(box: Box) -> None:
    box.write_config('[profiles.sh]\nwait = "block"\n[profiles.sh.gpu]\nslots = 3\n')
    holders = [box.start("run", "--", "sh", "-c", "exec sleep 30") for _ in range(3)]
    assert wait_for(lambda: sum(r["event"] == "start" for r in box.records()) == 3)
    waiter = box.start("run", "--", "sh", "-c", "exec sleep 30")
    assert wait_for(lambda: any(r["event"] == "wait" for r in box.records()))

    def waiting_rows() -> list[int]:
        rows = [json.loads(line) for line in box.run("status", "--json").stdout.splitlines()]
        return [w["pid"] for row in rows for w in row["waiters"]]

    assert wait_for(lambda: len(waiting_rows()) >= 1)
    time.sleep(0.3)  # all three waiting threads are in flock by now
    assert waiting_rows() == [waiter.pid]
    frame = box.run("top", "--once").stdout
    assert "3/3 held  1 waiting" in frame
    assert frame.count(f"wait  pid {waiter.pid} ") == 1
    for job in (*holders, waiter):
        job.send_signal(signal.SIGTERM)
