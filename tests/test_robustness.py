"""Robustness, round 2 (issue 12): closed descriptors, concurrent installs, output files that are
not regular files, jobs whose exec fails, probe helpers and signals, and hostile small inputs.

Every test drives real processes: real closed descriptors, real concurrent installs, real FIFOs,
real signals.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GPUROUTER, Box
from test_hardening_support import record_figures

SHOW_FDS = """\
import os, sys
with open(sys.argv[1], "w") as out:
    for fd in range(3):
        try:
            out.write(f"{fd} {os.readlink(f'/proc/self/fd/{fd}')}\\n")
        except OSError:
            out.write(f"{fd} closed\\n")
    for fd in os.listdir("/proc/self/fd"):
        target = os.readlink(f'/proc/self/fd/{fd}') if os.path.exists(f'/proc/self/fd/{fd}') else ''
        out.write(f"fd {fd} {target}\\n")
"""


def _sh(box: Box, line: str) -> subprocess.CompletedProcess[str]:
    """Run a shell line (its redirections close descriptors for real) in the box's environment."""
    return subprocess.run(
        ["sh", "-c", line], env=box.env, capture_output=True, text=True, timeout=60, cwd=box.root
    )


@pytest.mark.parametrize(
    "closing",
    ["2>&-", ">&-", "<&-", "<&- >&- 2>&-"],
    ids=["stderr-closed", "stdout-closed", "stdin-closed", "all-three-closed"],
)
def test_a_job_started_with_a_closed_descriptor_still_runs_and_keeps_its_slot(box: Box, closing: str) -> None:
    done = _sh(box, f"'{GPUROUTER}' run -- touch made {closing}; echo \"rc=$?\"")
    assert done.stdout.strip() == "rc=0", done.stderr
    assert (box.root / "made").exists()
    assert [r["event"] for r in box.records()] == ["start"]


def test_a_job_sees_the_descriptors_its_caller_closed_still_closed_and_no_lock_on_them(box: Box) -> None:
    (box.root / "show.py").write_text(SHOW_FDS)
    done = _sh(box, f"'{GPUROUTER}' run -- python3 show.py fds.txt <&- >&- 2>&-; echo \"rc=$?\"")
    assert done.stdout.strip() == "rc=0"
    lines = (box.root / "fds.txt").read_text().splitlines()
    # fd 0 is the job's own fds.txt (its first open took the lowest free fd); 1 and 2 stay closed
    # like env(1) leaves them, and the slot's lock file is above them, held by the job.
    assert lines[:3] == [f"0 {box.root / 'fds.txt'}", "1 closed", "2 closed"]
    held = [line for line in lines[3:] if str(box.lock_dir) in line]
    assert len(held) == 1 and int(held[0].split()[1]) > 2


def test_an_intercepted_binary_started_with_closed_stdout_and_stderr_still_runs(box: Box) -> None:
    (box.bin / "tool-real").write_text('#!/bin/sh\ntouch "$1"\n')
    (box.bin / "tool-real").chmod(0o755)
    (box.bin / "tool").symlink_to(GPUROUTER)
    done = _sh(box, f"'{box.bin / 'tool'}' made >&- 2>&-; echo \"rc=$?\"")
    assert done.stdout.strip() == "rc=0"
    assert (box.root / "made").exists()


def test_a_failure_with_stderr_closed_still_exits_with_its_code_and_writes_nothing_into_the_journal(
    box: Box,
) -> None:
    _sh(box, f"'{GPUROUTER}' run -- touch first")  # the journal exists and is well-formed
    done = _sh(box, f"'{GPUROUTER}' run -- no-such-command-here 2>&-; echo \"rc=$?\"")
    assert done.stdout.strip() == "rc=127"
    assert [r["event"] for r in box.records()] == [
        "start"
    ]  # every line still parses: no message landed in it


# Item 2: install/uninstall started at one instant. Each racer has already imported gpurouter and
# blocks opening a FIFO for reading; the test opens it for writing, and they all go at once.
RACER = """\
import sys
from gpurouter.__main__ import main
import gpurouter.cli, gpurouter.install
open(sys.argv[1]).read()
sys.exit(main(["gpurouter", sys.argv[2], sys.argv[3]]))
"""


def _race(box: Box, actions: list[str], target: Path) -> list[subprocess.CompletedProcess[str]]:
    barrier = box.root / "barrier"
    if barrier.exists():
        barrier.unlink()
    os.mkfifo(barrier)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(barrier), action, str(target)],
            env=box.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for action in actions
    ]
    import time

    time.sleep(0.5)  # every racer has imported gpurouter and waits in open(2) on the FIFO
    with open(barrier, "w"):
        pass  # opening for writing releases every reader at once; closing gives them EOF
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(racer.args, racer.returncode, out, err))
    return results


def _real_tool(box: Box) -> Path:
    tool = box.root / "d" / "tool"
    tool.parent.mkdir(exist_ok=True)
    tool.write_text("#!/bin/sh\necho real tool\n")
    tool.chmod(0o755)
    return tool


def test_installs_started_at_the_same_instant_never_destroy_the_real_binary(box: Box) -> None:
    tool = _real_tool(box)
    real = tool.with_name("tool-real")
    for trial in range(30):
        results = _race(box, ["install"] * 3, tool)
        assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
        assert sorted(r.stdout.split(":")[0] for r in results) == [
            "already installed",
            "already installed",
            "installed",
        ], f"trial {trial}"
        assert real.is_file() and not real.is_symlink(), f"trial {trial}: the real binary is gone"
        assert real.read_text() == "#!/bin/sh\necho real tool\n"
        assert tool.is_symlink() and os.path.realpath(tool) == os.path.realpath(GPUROUTER)
        assert sorted(p.name for p in tool.parent.iterdir()) == ["tool", "tool-real"]  # no temporary left
        assert box.run("uninstall", str(tool)).returncode == 0
    record_figures("installs", kind="3 installs", trials=30, processes=3, lost=0)


def test_an_uninstall_racing_installs_leaves_either_state_whole_never_a_lost_binary(box: Box) -> None:
    tool = _real_tool(box)
    real = tool.with_name("tool-real")
    for trial in range(20):
        results = _race(box, ["install", "uninstall", "install", "uninstall"], tool)
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        if tool.is_symlink():  # installed: the real binary is tool-real
            assert real.is_file() and not real.is_symlink(), f"trial {trial}"
            assert real.read_text() == "#!/bin/sh\necho real tool\n"
            assert box.run("uninstall", str(tool)).returncode == 0
        assert tool.is_file() and not tool.is_symlink(), f"trial {trial}: the real binary is gone"
        assert tool.read_text() == "#!/bin/sh\necho real tool\n"
        assert sorted(p.name for p in tool.parent.iterdir()) == ["tool"]
    record_figures("installs", kind="2 installs + 2 uninstalls", trials=20, processes=4, lost=0)


def _read_only_dir(box: Box, how: str) -> tuple[Path, list[str]]:
    """A directory holding a real `tool` that the installer cannot write: (dir, command prefix)."""
    import shutil

    if os.geteuid() != 0:
        pytest.skip("needs root (to drop to another user, or to mount a read-only file system)")
    if how == "not-writable":
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is not installed")
        import tempfile

        directory = Path(
            tempfile.mkdtemp(prefix="gpurouter-ro-", dir="/tmp")
        )  # pytest's tmp is 0700: nobody can't enter
        directory.chmod(0o755)
        shutil.copy("/bin/true", directory / "tool")
        return directory, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    directory = box.root / "ro"
    directory.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("mount is not permitted here")
    shutil.copy("/bin/true", directory / "tool")
    subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
    return directory, []


@pytest.mark.parametrize("how", ["not-writable", "read-only-mount"])
def test_install_in_a_directory_it_cannot_write_is_one_line_and_leaves_the_binary(box: Box, how: str) -> None:
    directory, prefix = _read_only_dir(box, how)
    try:
        done = subprocess.run(
            [*prefix, GPUROUTER, "install", str(directory / "tool")],
            env=box.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        why = "Permission denied" if how == "not-writable" else "Read-only file system"
        assert (done.returncode, done.stderr) == (
            125,
            f"gpurouter: cannot install over {directory / 'tool'}: {why}\n",
        )
        assert (
            sorted(p.name for p in directory.iterdir()) == ["tool"] and not (directory / "tool").is_symlink()
        )
    finally:
        if how == "read-only-mount":
            subprocess.run(["umount", str(directory)], check=True)
        else:
            import shutil

            shutil.rmtree(directory)


# Item 6: an exec that fails after the slot was taken. Real files the kernel refuses.
def _write_exe(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("content", "code", "says"),
    [
        pytest.param(
            b"echo no shebang line\n", 126, "not a binary this system runs and no #! line", id="no-shebang"
        ),
        pytest.param(
            b"#!/nonexistent/interpreter -x\necho\n",
            127,
            "bad interpreter: its #! interpreter /nonexistent/interpreter was not found",
            id="bad-interpreter",
        ),
        pytest.param(b"\x7fELF" + b"\x02\x01\x01" + b"\0" * 200, 126, "Exec format error", id="fake-elf"),
    ],
)
def test_a_job_the_kernel_refuses_to_exec_exits_with_what_failed_and_is_not_counted_as_run(
    box: Box, content: bytes, code: int, says: str
) -> None:
    job = _write_exe(box.bin / "job", content)
    done = box.run("run", "--", str(job))
    assert done.returncode == code, done.stderr
    assert (
        done.stderr.startswith(f"gpurouter: {job}: ") and says in done.stderr and done.stderr.count("\n") == 1
    )
    events = box.records()
    assert [r["event"] for r in events] == ["start", "exec_failed"]
    assert events[1]["pid"] == events[0]["pid"] and isinstance(events[1]["errno"], int)
    _assert_stats_count_no_job(box)


def _assert_stats_count_no_job(box: Box) -> None:
    import json

    stats = json.loads(box.run("stats", "--json").stdout)
    row = stats["profiles"]["default"]
    assert (row["gpu"], row["cpu"], row["exec_failed"]) == (0, 0, 1)
    assert stats["pools"]["gpu"]["starts"] == 0


def test_a_binary_busy_being_written_exits_126_and_is_not_counted_as_run(box: Box) -> None:
    job = _write_exe(box.bin / "job", Path("/bin/true").read_bytes())
    with open(job, "r+b"):  # open for writing: execve fails with ETXTBSY ("Text file busy")
        done = box.run("run", "--", str(job))
    if done.returncode == 0:
        pytest.skip("this kernel lets a file open for writing be executed (no ETXTBSY)")
    assert (done.returncode, done.stderr) == (126, f"gpurouter: {job}: cannot be executed: Text file busy\n")
    assert [r["event"] for r in box.records()] == ["start", "exec_failed"]
    _assert_stats_count_no_job(box)


def test_an_argument_list_too_long_for_the_kernel_exits_125_saying_so(box: Box) -> None:
    # gpurouter itself starts fine; the route args it adds push the job's argv past ARG_MAX.
    box.write_config("[profiles.default.gpu]\nargs = [" + ", ".join([f'"{"x" * 100_000}"'] * 40) + "]\n")
    done = box.run("run", "--", "true")
    assert done.returncode == 125, done.stderr
    assert done.stderr.startswith("gpurouter: /") and ": argument list too long (" in done.stderr
    assert [r["event"] for r in box.records()] == ["start", "exec_failed"]
    _assert_stats_count_no_job(box)


def test_a_monitored_job_the_kernel_refuses_to_start_is_one_line_126_and_not_counted_as_run(box: Box) -> None:
    box.write_config("[profiles.default]\nmonitor = true\n")
    job = _write_exe(box.bin / "job", b"echo no shebang line\n")
    done = box.run("run", "--", str(job))
    assert (done.returncode, done.stderr) == (
        126,
        f"gpurouter: {job}: cannot be executed: not a binary this "
        "system runs and no #! line (Exec format error)\n",
    )
    assert [r["event"] for r in box.records()] == ["start", "exec_failed"]
    _assert_stats_count_no_job(box)


# Item 3: output files are replaced only when they are regular files.
@pytest.mark.parametrize(
    "command", [["report", "--html"], ["stats", "--prometheus"]], ids=["report-html", "prometheus"]
)
def test_an_output_fifo_with_no_reader_is_refused_at_once_and_left_a_fifo(
    box: Box, command: list[str]
) -> None:
    fifo = box.root / "out"
    os.mkfifo(fifo)
    done = box.run(*command, str(fifo), timeout=20)
    assert done.returncode == 125
    assert done.stderr.endswith(f"{fifo}: is a FIFO with no reader (refusing to wait for one)\n")
    assert done.stderr.count("\n") == 1 and fifo.is_fifo()


def test_an_output_fifo_with_a_reader_gets_the_text_written_through(box: Box) -> None:
    fifo = box.root / "out"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    import time

    time.sleep(0.3)  # cat has opened the FIFO for reading
    try:
        done = box.run("stats", "--prometheus", str(fifo), timeout=20)
        out, _ = reader.communicate(timeout=20)
    finally:
        reader.kill()
        reader.communicate()
    assert done.returncode == 0, done.stderr
    assert "# TYPE gpurouter_slots_in_use gauge" in out and fifo.is_fifo()


def _char_device(box: Box, name: str, minor: int) -> Path:
    import stat

    node = box.root / name
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, minor))  # 1,7: like /dev/full; 1,3: like /dev/null
    except PermissionError:
        pytest.skip("mknod is not permitted here")
    return node


@pytest.mark.parametrize(
    "command", [["report", "--html"], ["stats", "--prometheus"]], ids=["report-html", "prometheus"]
)
def test_a_character_device_is_written_through_never_replaced(box: Box, command: list[str]) -> None:
    full, null = _char_device(box, "full", 7), _char_device(box, "null", 3)
    done = box.run(*command, str(full))
    assert done.returncode == 125 and done.stderr.endswith(": No space left on device\n")
    assert box.run(*command, str(null)).returncode == 0
    assert full.is_char_device() and null.is_char_device()  # still device nodes, not HTML files
    assert sorted(p.name for p in box.root.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_a_directory_or_socket_in_the_way_is_refused_in_one_line(box: Box) -> None:
    import socket

    place = box.root / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(place))
    try:
        done = box.run("report", "--html", str(place))
        assert (done.returncode, done.stderr) == (
            125,
            f"gpurouter: report not written: {place}: is a socket, not a regular file "
            "(refusing to replace it)\n",
        )
        assert place.is_socket()
    finally:
        server.close()


def test_a_symlinked_output_writes_the_file_it_points_at_and_stays_a_symlink(box: Box) -> None:
    target = box.root / "real.prom"
    link = box.root / "link.prom"
    link.symlink_to(target.name)
    assert box.run("stats", "--prometheus", str(link)).returncode == 0
    assert link.is_symlink() and "gpurouter_slots_in_use" in target.read_text()


def test_tune_apply_on_a_symlinked_config_edits_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    pytest.importorskip("tomlkit")
    from gpurouter.observe import tune

    target = tmp_path / "managed" / "config.toml"
    target.parent.mkdir()
    target.write_text('# managed\n[profiles.whisper]\nprobe = "duration"\nthreshold = 10\n')
    link = tmp_path / "config.toml"
    link.symlink_to(target)
    backup = tune.apply(str(link), "whisper", "45m")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert 'threshold = "45m"' in target.read_text() and target.read_text().startswith("# managed\n")
    assert backup == f"{target}.bak" and "threshold = 10" in Path(backup).read_text()


def test_tune_apply_refuses_a_config_that_is_a_fifo_without_waiting(tmp_path: Path) -> None:
    pytest.importorskip("tomlkit")
    from gpurouter.observe import tune

    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    with pytest.raises(tune.TuneRefused, match="is a FIFO, not a regular file"):
        tune.apply(str(fifo), "whisper", "45m")
    assert fifo.is_fifo()


# Item 8: a probe helper dies with gpurouter.
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only unreaped
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT", "SIGHUP", "SIGKILL"])
def test_a_slow_probe_command_dies_with_gpurouter_whatever_signal_ends_it(box: Box, signal_name: str) -> None:
    import signal
    import time

    from conftest import wait_for

    pid_file = box.root / "helper.pid"
    helper = _write_exe(
        box.root / "slow-probe", f"#!/bin/sh\necho $$ > {pid_file}\nsleep 60\necho 5\n".encode()
    )
    box.write_config(f"""\
        probe_timeout = "120s"
        [profiles.true]
        probe = "command"
        probe_command = ["{helper}"]
        threshold = 10
        """)
    (box.root / "input.dat").write_text("data\n")
    if signal_name == "SIGKILL" and not any(
        os.access(p, os.X_OK) for p in ("/usr/bin/setpriv", "/bin/setpriv")
    ):
        pytest.skip("a kill -9 reaches the helper through setpriv --pdeathsig (util-linux), not installed")
    started = box.start("run", "--", "true", str(box.root / "input.dat"))
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit(), timeout=20)
    helper_pid = int(pid_file.read_text())
    sleeper = [int(p) for p in Path(f"/proc/{helper_pid}/task/{helper_pid}/children").read_text().split()]
    started.send_signal(getattr(signal, signal_name))
    started.communicate(timeout=20)
    if signal_name == "SIGKILL":
        # PR_SET_PDEATHSIG reaches the helper itself; its own children (the sleep) are not ours to
        # reach once gpurouter is gone without a word: they end with their work or on SIGPIPE.
        sleeper = []
    assert wait_for(lambda: not _alive(helper_pid) and not any(_alive(p) for p in sleeper), timeout=5), (
        f"the probe helper outlived gpurouter ({signal_name})"
    )
    if signal_name == "SIGINT":
        assert started.returncode == 130
    else:
        assert started.returncode == -getattr(signal, signal_name)  # gpurouter still dies of the signal
    assert time.time() - pid_file.stat().st_mtime < 30  # long before the probe's timeout


def test_a_probe_under_a_tiny_open_files_limit_falls_back_with_a_reason_not_an_internal_error(
    box: Box,
) -> None:
    box.write_config("""\
        [profiles.true]
        probe = "command"
        probe_command = ["echo", "5"]
        threshold = 10
        """)
    (box.root / "input.dat").write_text("fresh\n")  # not in the probe cache
    done = _sh(box, f"ulimit -n 6; '{GPUROUTER}' run --verbose -- true input.dat")
    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        "gpurouter: cpu (no metric (probe command could not run: Too many open files): "
        "fallback cpu), slot cpu.0\n"
    )


# Items 10 and 11: the probe cache key and the probe command's argument.
def test_a_rewrite_that_keeps_size_and_mtime_is_probed_again(box: Box) -> None:
    box.write_config("""\
        [profiles.true]
        probe = "command"
        probe_command = ["head", "-n1"]
        threshold = 500
        """)
    data = box.root / "input.dat"
    data.write_text("100\n")
    first = box.run("route", "--json", "--", "true", str(data))
    before = os.stat(data)
    with open(data, "r+") as stream:  # same inode, same size; then the mtime is set back (cp -p, touch -r)
        stream.write("900\n")
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = box.run("route", "--json", "--", "true", str(data))
    import json

    assert [json.loads(done.stdout)["metric"] for done in (first, second)] == [100.0, 900.0]
    assert [json.loads(done.stdout)["route"] for done in (first, second)] == ["gpu", "cpu"]


def test_a_probe_command_gets_an_input_named_like_an_option_as_a_file(box: Box) -> None:
    box.write_config("""\
        [profiles.true]
        probe = "command"
        probe_command = ["wc", "-c"]
        threshold = 100
        """)
    (box.root / "--files0-from=list").write_text("12345678\n")  # wc would read a file list named `list`
    done = subprocess.run(
        [GPUROUTER, "route", "--json", "--", "true", "--files0-from=list"],
        env=box.env,
        cwd=box.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    import json

    decision = json.loads(done.stdout)
    assert (decision["metric"], decision["route"], decision["via"]) == (9.0, "gpu", "command"), done.stderr


# Item 12 (part): relative XDG paths are ignored (the XDG Base Directory spec).
def test_a_relative_xdg_cache_home_writes_nothing_into_the_jobs_directory(box: Box) -> None:
    work = box.root / "work"
    work.mkdir()
    for _ in range(2):  # the first call memoises the config, the second reads the memo
        done = subprocess.run(
            [GPUROUTER, "run", "--", "true"],
            env={**box.env, "XDG_CACHE_HOME": "cache"},
            cwd=work,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    assert list(work.iterdir()) == []
    assert (Path(box.env["HOME"]) / ".cache" / "gpurouter").is_dir()  # $HOME/.cache instead, as the spec says


def test_a_relative_xdg_config_home_is_not_searched_for_a_config(box: Box) -> None:
    work = box.root / "work"
    (work / "rel" / "gpurouter").mkdir(parents=True)
    (work / "rel" / "gpurouter" / "config.toml").write_text("busy_exit_code = 99\n")
    env = {k: v for k, v in box.env.items() if k != "GPUROUTER_CONFIG"}
    done = subprocess.run(
        [GPUROUTER, "config"],
        env={**env, "XDG_CONFIG_HOME": "rel"},
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "rel/gpurouter/config.toml" not in done.stdout and "99" not in done.stdout


# Item 12 (part): integers from users, and the journal's words for a short write.
@pytest.mark.parametrize("command", ["run", "route"])
@pytest.mark.parametrize("value", ["²", "٣", "1²"])
def test_slot_counts_must_be_ascii_digits(box: Box, command: str, value: str) -> None:
    done = box.run(command, "--gpu-slots", value, "--", "true")
    assert (done.returncode, done.stderr) == (
        2,
        f"gpurouter: --gpu-slots must be an integer from 1 to 1024, got {value!r}\n",
    )


@pytest.mark.parametrize(
    ("digits", "says"),
    [
        (400, "profiles.p.threshold: not a finite number"),
        (
            4301,
            "not usable TOML: Exceeds the limit (4300 digits) for integer string conversion: "
            "value has 4301 digits",
        ),
    ],
    ids=["400-digits", "4301-digits"],
)
@pytest.mark.parametrize(
    "command", [["config"], ["run", "--profile", "p", "--", "true"]], ids=["config", "run"]
)
def test_a_huge_toml_integer_is_a_config_error_naming_the_file(
    box: Box, digits: int, says: str, command: list[str]
) -> None:
    box.write_config(f'[profiles.p]\nprobe = "size"\nthreshold = {"9" * digits}\n')
    done = box.run(*command)
    assert (done.returncode, done.stderr) == (78, f"gpurouter: {box.config}: {says}\n")


def test_a_huge_route_vram_is_a_config_error_in_one_short_line(box: Box) -> None:
    box.write_config(f"[profiles.p.gpu]\nvram_mib = {'9' * 400}\n")
    done = box.run("config")
    assert done.returncode == 78 and done.stderr.startswith(
        f"gpurouter: {box.config}: profiles.p.gpu.vram_mib: must"
    )
    assert done.stderr.endswith(" characters)\n") and "..." in done.stderr and len(done.stderr) < 500


def test_a_journal_write_cut_short_by_the_file_size_limit_says_so_and_leaves_no_torn_line(box: Box) -> None:
    import resource

    box.lock_dir.mkdir()
    box.journal.write_text('{"v":1,"event":"padding","pad":"' + "x" * 2000 + '"}\n')
    limit = box.journal.stat().st_size + 50  # room for part of the next record only

    def cap_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [GPUROUTER, "run", "--", "true"],
        env=box.env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=cap_file_size,
    )
    assert done.returncode == 0
    assert done.stderr.startswith(f"gpurouter: warning: journal {box.journal}: short write (50 of ")
    assert done.stderr.endswith(
        f" bytes: File too large: the file size limit (ulimit -f) is {limit} bytes)\n"
    )
    assert box.journal.stat().st_size == limit - 50  # the fragment was cut back
