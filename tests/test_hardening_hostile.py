"""Hostile lock dir: shared by two real users, names planted by an attacker, and a lock dir
that is missing, not a directory, unwritable or on a full disk.

The two users are created with useradd for the session (tests run as root in CI). The
venv's interpreter lives under /root (mode 0700 here), which other users cannot reach; the
fixture then runs them through a launcher copy in a world-readable temporary directory that
imports the same source tree with the system python3 (>= 3.11). Nothing on the box is
chmod'ed; the users are deleted afterwards.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLE_JOB, GPUROUTER, ROOT, Box, wait_for
from test_hardening_support import assert_one_line_error, journal_lines, record_figures, slot_lock_holders

from gpurouter.job import probe_cache

USER_COMMENT = "gpurouter hardening test"
# Per session (two sessions at once must not delete each other's users); stale ones are reaped.
USER_NAMES = (f"gprh{os.getpid()}a", f"gprh{os.getpid()}b")
HOLD_JOB = """#!/bin/sh
printf 'start %s %s %s\\n' "$$" "$(date +%s.%N)" "$1" >> "$JOB_LOG"
exec sleep "${JOB_SLEEP:-30}"
"""


# ---------------------------------------------------------------- two real users


class User:
    def __init__(self, name: str) -> None:
        entry = pwd.getpwnam(name)
        self.name, self.uid, self.gid = name, entry.pw_uid, entry.pw_gid


class Users:
    """Two users, a launcher both can run, and a world-readable area for their boxes."""

    def __init__(self, a: User, b: User, launcher: str, area: Path) -> None:
        self.a, self.b, self.launcher, self.area = a, b, launcher, area


class SharedBox:
    """A box both users can use: config and jobs readable by all, a sticky world-writable 'tmp'."""

    def __init__(self, users: Users, name: str) -> None:
        self.users = users
        self.root = users.area / name
        self.root.mkdir(mode=0o755)
        self.root.chmod(0o755)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir()
        self.tmp.chmod(0o1777)
        self.lock_dir = self.tmp / "gpurouter"  # not made here: the first user's gpurouter makes it
        self.journal = self.lock_dir / "journal.jsonl"
        self.bin = self.root / "bin"
        self.bin.mkdir(mode=0o755)
        shutil.copy(EXAMPLE_JOB, self.bin / "transcribe")
        (self.bin / "holdjob").write_text(HOLD_JOB)
        for job in self.bin.iterdir():
            job.chmod(0o755)
        self.job_log = self.tmp / "jobs.log"
        self.job_log.touch()
        self.job_log.chmod(0o666)
        self.config = self.root / "config.toml"
        self.write_config("")
        self.started: list[subprocess.Popen[str]] = []

    def write_config(self, body: str) -> None:
        self.config.write_text(
            f'lock_dir = "{self.lock_dir}"\njournal = "{self.journal}"\n' + textwrap.dedent(body)
        )
        self.config.chmod(0o644)

    def env(self, user: User, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/nonexistent",
            "XDG_CACHE_HOME": str(self.tmp / f"cache-{user.name}"),
            "GPUROUTER_CONFIG": str(self.config),
            "JOB_LOG": str(self.job_log),
            "LANG": "C.UTF-8",
            **(extra or {}),
        }

    def _as(self, user: User) -> dict[str, Any]:
        return {"user": user.uid, "group": user.gid, "extra_groups": [], "cwd": str(self.root)}

    def run(
        self, user: User, *args: str, env: dict[str, str] | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.users.launcher, *args],
            env=self.env(user, env),
            capture_output=True,
            text=True,
            timeout=timeout,
            **self._as(user),
        )

    def start(self, user: User, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [self.users.launcher, *args],
            env=self.env(user, env),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **self._as(user),
        )
        self.started.append(process)
        return process

    def shell(self, user: User, command: str) -> subprocess.CompletedProcess[str]:
        """Run a shell command as `user` (what a hostile user can do by hand)."""
        return subprocess.run(
            ["/bin/sh", "-c", command],
            env=self.env(user),
            capture_output=True,
            text=True,
            timeout=30,
            **self._as(user),
        )

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.communicate()


def _make_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return False  # left by an interrupted run of this very pid: reuse it
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--no-create-home",
                "--user-group",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                USER_COMMENT,
                name,
            ],
            check=True,
            capture_output=True,
        )
        return True


def _delete_user(name: str) -> None:
    subprocess.run(["userdel", name], capture_output=True)
    try:
        grp.getgrnam(name)
        subprocess.run(["groupdel", name], capture_output=True)
    except KeyError:
        pass


def _reap_stale_users() -> None:
    """Users left by sessions that were killed before their clean-up."""
    for entry in pwd.getpwall():
        owner = entry.pw_name[4:-1]
        if (
            entry.pw_gecos == USER_COMMENT
            and entry.pw_name.startswith("gprh")
            and owner.isdigit()
            and not os.path.exists(f"/proc/{owner}")
        ):
            _delete_user(entry.pw_name)


def _launcher_for(user: User, area: Path) -> str:
    """The installed launcher if `user` can run it, else a copy running the same sources."""
    try:
        probe = subprocess.run(
            [GPUROUTER, "--version"],
            capture_output=True,
            text=True,
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            cwd="/",
            timeout=30,
        )
        if probe.returncode == 0:
            return GPUROUTER
        why = probe.stderr.strip()
    except OSError as error:  # the venv's interpreter is under a directory the user cannot enter
        why = str(error)
    src = ROOT / "src"
    for python in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
        if not python or not os.access(python, os.X_OK):
            continue
        launcher = area / "gpurouter"
        launcher.write_text(
            f"#!{python} -sE\nimport sys\nsys.path.insert(0, {str(src)!r})\n"
            "from gpurouter.__main__ import main\nsys.exit(main())\n"
        )
        launcher.chmod(0o755)
        check = subprocess.run(
            [str(launcher), "run", "--", "true"],
            capture_output=True,
            text=True,
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            cwd="/",
            timeout=30,
            env={"GPUROUTER_SKIP_LOCK": "1", "GPUROUTER_CONFIG": "/dev/null/none", "PATH": "/usr/bin:/bin"},
        )
        if "/dev/null/none" in check.stderr:  # it ran our code (and refused the missing config)
            return str(launcher)
    pytest.skip(
        f"user {user.name} can run neither {GPUROUTER} nor the sources with a system python3 >= 3.11: {why}"
    )


@pytest.fixture(scope="session")
def users() -> Iterator[Users]:
    if os.geteuid() != 0:
        pytest.skip("two-user tests create users with useradd: run as root (CI does)")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel are not installed")
    _reap_stale_users()
    created = [name for name in USER_NAMES if _make_user(name)]
    area = Path(tempfile.mkdtemp(prefix="gpurouter-hardening-users-"))
    area.chmod(0o755)
    try:
        a, b = (User(name) for name in USER_NAMES)
        yield Users(a, b, _launcher_for(a, area), area)
    finally:
        shutil.rmtree(area, ignore_errors=True)
        for name in created:
            _delete_user(name)


@pytest.fixture
def shared(users: Users, request: pytest.FixtureRequest) -> Iterator[SharedBox]:
    made = SharedBox(users, request.node.name.replace("[", "-").replace("]", "").replace("/", "-")[:80])
    yield made
    made.close()


def test_user_b_takes_a_slot_whose_file_user_a_created(shared: SharedBox) -> None:
    a, b = shared.users.a, shared.users.b
    first = shared.run(a, "run", "--", "transcribe", "by-a")
    assert first.returncode == 0, first.stderr
    info = shared.lock_dir.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (a.uid, 0o1777)
    slot = (shared.lock_dir / "gpu.0").stat()
    assert (slot.st_uid, stat.S_IMODE(slot.st_mode)) == (a.uid, 0o666)
    second = shared.run(b, "run", "--", "transcribe", "by-b")
    assert second.returncode == 0, second.stderr
    assert second.stderr == ""
    starts = [r for r in journal_lines(shared.journal) if r["event"] == "start"]
    assert [(r["uid"], r["slot"]) for r in starts] == [(a.uid, "gpu.0"), (b.uid, "gpu.0")]
    launcher = (
        "installed launcher"
        if shared.users.launcher == GPUROUTER
        else "the same sources via a system python3"
    )
    record_figures("users", users=2, kind="B takes a slot whose file A created", launcher=launcher)


def test_user_b_cannot_break_user_a_slot_nor_fail_user_a_job(shared: SharedBox) -> None:
    a, b = shared.users.a, shared.users.b
    holder = shared.start(a, "run", "--", "holdjob", "a-job", env={"JOB_SLEEP": "1.5"})
    assert wait_for(lambda: "gpu.0" in slot_lock_holders(shared.lock_dir), timeout=20)
    refused = shared.run(b, "run", "--", "transcribe", "b-job")
    assert refused.returncode == 75
    assert_one_line_error(refused.stderr, "no free slot")
    slot = shared.lock_dir / "gpu.0"
    # B cannot remove, replace or re-own A's slot file (sticky lock dir), so no second gpu.0 can exist.
    for attack in (
        f"rm -f {slot}",
        f"mv {slot} {slot}.x",
        f"chmod 600 {slot}",
        f"ln -sf /etc/passwd {slot}",
        f"chown {b.uid} {slot}",
        f"rm -rf {shared.lock_dir}",
        f"mv {shared.lock_dir} {shared.tmp}/x",
    ):
        done = shared.shell(b, attack)
        assert done.returncode != 0, f"user B could: {attack}"
    assert stat.S_ISREG(slot.lstat().st_mode) and slot.stat().st_uid == a.uid
    # B waiting for the slot does not disturb A's job, and gets the slot when A's job ends.
    waiter = shared.run(b, "run", "--wait", "20s", "--", "transcribe", "b-job")
    assert waiter.returncode == 0, waiter.stderr
    _, err = holder.communicate(timeout=20)
    assert holder.returncode == 0, err  # A's job ran to its end with its own exit status
    lines = shared.job_log.read_text().split("\n")
    assert any(" a-job" in line for line in lines) and any(" b-job" in line for line in lines)
    record_figures("users", users=2, kind="B cannot break A's slot or fail A's job", attacks=7)


def test_names_planted_by_user_b_neither_hang_nor_write_for_user_a(
    shared: SharedBox, media: dict[str, Path]
) -> None:
    a, b = shared.users.a, shared.users.b
    clip = shared.root / "clip.ogg"
    shutil.copy(media["ogg2"], clip)
    clip.chmod(0o644)
    shared.write_config("""
        [profiles.transcribe]
        probe = "duration"
        threshold = "1h"
        [profiles.transcribe.gpu]
        slots = 2
    """)
    private = shared.tmp / "a-private"  # A's own file, which B would like A to overwrite
    private.write_text("precious\n")
    os.chown(private, a.uid, a.gid)
    private.chmod(0o600)
    b_dir = shared.tmp / "b-dir"
    plant = (
        f"mkdir -p {shared.lock_dir} && chmod 1777 {shared.lock_dir} && mkdir -m 777 {b_dir} && "
        f"touch {shared.journal} && chmod 600 {shared.journal} && "  # a journal A cannot write
        f"ln -s {private} {shared.lock_dir}/gpu.1 && "  # A's second slot: a symlink to A's file
        f"mkfifo {shared.lock_dir}/cpu.0 && "  # A's cpu slot: a FIFO
        f"ln -s {b_dir} {shared.lock_dir}/probe-cache.{a.uid}"
    )  # A's probe cache: B's directory
    done = shared.shell(b, plant)
    assert done.returncode == 0, done.stderr
    ok = shared.run(a, "run", "--", "transcribe", str(clip), timeout=20)
    assert ok.returncode == 0, ok.stderr  # gpu.0 is fine: the job runs
    assert_one_line_error(ok.stderr, "warning: journal", "Permission denied")
    assert os.listdir(b_dir) == []  # no cache entry written where B could read or forge it
    holder = shared.start(a, "run", "--", "holdjob", "holder")
    assert wait_for(lambda: "gpu.0" in slot_lock_holders(shared.lock_dir), timeout=20)
    second = shared.run(a, "run", "--", "transcribe", str(clip), timeout=20)
    assert second.returncode in (75, 125)  # gpu.1 is unusable: busy, or a clear error naming it
    assert_one_line_error(
        _without_journal_warning(second.stderr), "gpu.1" if second.returncode == 125 else "no free slot"
    )
    cpu = shared.run(
        a, "run", "--route", "cpu", "--", "transcribe", str(clip), timeout=20
    )  # the FIFO: no hang
    assert cpu.returncode in (75, 125)
    assert_one_line_error(
        _without_journal_warning(cpu.stderr), "cpu.0" if cpu.returncode == 125 else "no free slot"
    )
    assert private.read_text() == "precious\n"
    holder.kill()
    holder.communicate()
    record_figures(
        "users", users=2, kind="names planted by B for A: journal, slot symlink, slot FIFO, probe cache"
    )


def test_a_config_memo_forged_by_user_b_is_not_trusted_by_user_a(shared: SharedBox) -> None:
    """The validated config is memoised per user; B can compute the identity of the (readable)
    config file and plant a memo in a cache dir A has not made yet. A must not use it."""
    import marshal

    from gpurouter.job import config
    from gpurouter.job.records import to_plain

    a, b = shared.users.a, shared.users.b
    info = shared.config.stat()
    identity = (
        str(shared.config),
        info.st_dev,
        info.st_ino,
        info.st_size,
        info.st_mtime_ns,
        info.st_ctime_ns,
        *config._code_identity(),  # the memo's key (its own business: ask it)
    )
    forged_document = {
        "lock_dir": str(shared.lock_dir),
        "journal": str(shared.journal),
        "profiles": {"transcribe": {"gpu": {"args": ["--forged-by-b"]}}},
    }
    forged = to_plain(config.validate(forged_document, str(shared.config), str(shared.config)))
    memo_dir = Path(shared.env(a)["XDG_CACHE_HOME"]) / "gpurouter"
    memo_dir.mkdir(parents=True)
    from gpurouter.job import memo

    naming = getattr(memo, "_memo_name", None)  # the memo's file name (its own business: ask it)
    memo = memo_dir / (naming("config", identity) if naming else "config.memo")
    memo.write_bytes(marshal.dumps((identity, forged)))
    for path in (memo_dir.parent, memo_dir, memo):
        os.chown(path, a.uid, a.gid)
    control = shared.run(a, "run", "--", "transcribe", "x")  # A's own memo: used (the forgery would work)
    assert control.returncode == 0 and "--forged-by-b" in control.stdout, control.stdout + control.stderr
    memo.write_bytes(marshal.dumps((identity, forged)))
    for path in (memo_dir.parent, memo_dir, memo):
        os.chown(path, b.uid, b.gid)
    os.chmod(memo_dir.parent, 0o777)
    os.chmod(memo_dir, 0o777)
    done = shared.run(a, "run", "--", "transcribe", "x")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "--forged-by-b" not in done.stdout
    record_figures("users", users=2, kind="a config memo forged by B is not trusted by A")


def _without_journal_warning(stderr: str) -> str:
    """The journal B made unwritable adds its one warning line; the failure is the other line."""
    lines = stderr.splitlines(keepends=True)
    warnings = [line for line in lines if line.startswith("gpurouter: warning: journal")]
    assert len(warnings) <= 1, stderr
    return "".join(line for line in lines if line not in warnings)


def test_a_slot_planted_by_another_user_does_not_fail_a_waiting_job(shared: SharedBox) -> None:
    """Found here (fixed in slots.py): one unusable slot file aborted the whole acquisition (exit 125)."""
    a, b = shared.users.a, shared.users.b
    shared.write_config("[profiles.transcribe.gpu]\nslots = 2\n[profiles.holdjob.gpu]\nslots = 2\n")
    done = shared.shell(b, f"mkdir -p -m 1777 {shared.lock_dir} && mkfifo {shared.lock_dir}/gpu.1")
    assert done.returncode == 0, done.stderr
    holder = shared.start(a, "run", "--", "holdjob", "holder", env={"JOB_SLEEP": "0.5"})
    assert wait_for(lambda: "gpu.0" in slot_lock_holders(shared.lock_dir), timeout=20)
    waiting = shared.run(a, "run", "--wait", "10s", "--", "transcribe", "waiter")
    holder.communicate()
    assert waiting.returncode == 0, waiting.stderr


def test_a_lock_dir_user_a_cannot_write_is_one_clear_line(shared: SharedBox) -> None:
    shared.lock_dir.mkdir(mode=0o755)  # root's, not writable by A
    done = shared.run(shared.users.a, "run", "--", "transcribe", "x")
    assert done.returncode == 125
    assert_one_line_error(done.stderr, str(shared.lock_dir), "Permission denied")
    assert shared.job_log.read_text() == ""


# ---------------------------------------------------------------- planted names (as root)

KINDS = ("symlink", "dangling-symlink", "hardlink", "fifo", "directory", "char-device", "socket")
TARGETS = ("slot", "journal", "cache-dir", "cache-entry", "memo", "memo-dir")


def plant(path: Path, kind: str, victim: Path, victim_dir: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "symlink":
        path.symlink_to(victim_dir if path.name.startswith(("probe-cache", "gpurouter")) else victim)
    elif kind == "dangling-symlink":
        path.symlink_to(victim.parent / "does-not-exist-yet")
    elif kind == "hardlink":
        os.link(victim, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "char-device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null
        except PermissionError:
            pytest.skip("mknod is not permitted here")
    elif kind == "socket":
        short = Path(tempfile.mkdtemp(dir="/tmp"))  # AF_UNIX paths are short: bind there, move it in place
        try:
            with socket.socket(socket.AF_UNIX) as server:
                server.bind(str(short / "s"))
            os.rename(short / "s", path)
        finally:
            shutil.rmtree(short, ignore_errors=True)


def _memo_file_name(box: Box) -> str:
    """The name of this box's config memo (the memo's own business: ask it)."""
    from gpurouter.job import memo

    naming = getattr(memo, "_memo_name", None)
    return naming("config", (str(box.config),)) if naming else "config.memo"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", TARGETS)
def test_a_planted_name_neither_hangs_nor_writes_a_victim(
    box: Box, media: dict[str, Path], target: str, kind: str
) -> None:
    if os.geteuid() != 0 and kind in ("char-device",):
        pytest.skip("needs root")
    victims = box.root / "victims"
    victims.mkdir()
    victim, victim_dir = victims / "precious", victims / "dir"
    victim.write_text("precious\n")
    victim_dir.mkdir()
    before = victim.stat()
    clip = box.root / "clip.ogg"
    shutil.copy(media["ogg2"], clip)
    box.write_config('[profiles.transcribe]\nprobe = "duration"\nthreshold = "1h"\n')
    box.lock_dir.mkdir(mode=0o1777)
    box.lock_dir.chmod(0o1777)
    cache = Path(probe_cache.cache_dir(str(box.lock_dir)))
    memo_dir = Path(box.env["XDG_CACHE_HOME"]) / "gpurouter"
    if target == "cache-entry":
        cache.mkdir(mode=0o700)
    path = {
        "slot": box.lock_dir / "gpu.0",
        "journal": box.journal,
        "cache-dir": cache,
        "cache-entry": cache / probe_cache.entry_name("duration", clip.stat()),
        "memo": memo_dir / _memo_file_name(box),
        "memo-dir": memo_dir,
    }[target]
    plant(path, kind, victim, victim_dir)
    began = time.monotonic()
    done = box.run("run", "--", "transcribe", str(clip), timeout=15)
    took = time.monotonic() - began
    assert took < 10
    assert "Traceback" not in done.stderr
    after = victim.stat()
    assert victim.read_text() == "precious\n" and (after.st_size, after.st_mtime_ns) == (
        before.st_size,
        before.st_mtime_ns,
    )
    if target == "slot":
        assert done.returncode == 125, done.stderr
        words = {
            "symlink": "symbolic link",
            "dangling-symlink": "symbolic link",
            "hardlink": "hard link",
            "fifo": "FIFO",
            "directory": "directory",
            "char-device": "character device",
            "socket": "socket",
        }
        assert_one_line_error(done.stderr, "gpu.0", words[kind])
        assert box.job_lines() == []
        return
    assert done.returncode == 0, done.stderr  # the job runs: the journal, the cache and the memo are optional
    assert [line[0] for line in box.job_lines()] == ["start", "end"]
    if target == "journal":
        assert_one_line_error(done.stderr, "warning: journal")
    else:
        assert done.stderr == ""
        (record,) = journal_lines(box.journal)
        assert record["metric"] == pytest.approx(2.0, abs=0.05)  # probed all the same
    if target != "memo-dir":  # memo-dir: the user's own cache dir, followed like any XDG program does
        assert os.listdir(victim_dir) == [], f"written into the victim dir: {os.listdir(victim_dir)}"
    record_figures("hostile", planted=1, kind=f"{kind} under the {target} name")


NVML_FILE = """{"devices": [
 {"index": 0, "uuid": "GPU-00000000-0000-0000-0000-000000000000", "name": "fake", "memory_total_mib": 16000,
  "memory_used_mib": 1000, "processes": []},
 {"index": 1, "uuid": "GPU-00000000-0000-0000-0000-000000000001", "name": "fake", "memory_total_mib": 16000,
  "memory_used_mib": 1000, "processes": []}]}"""


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "directory", "socket"])
@pytest.mark.parametrize("name", ["gpu.rr", "gpu.decide", "gpu0.0.claim"])
def test_a_planted_gpu_state_name_neither_hangs_nor_writes_a_victim(box: Box, name: str, kind: str) -> None:
    """The state files of GPU placement: the round-robin counter, the decide lock, the VRAM claims."""
    victims = box.root / "victims"
    victims.mkdir()
    victim, victim_dir = victims / "precious", victims / "dir"
    victim.write_text("precious\n")
    victim_dir.mkdir()
    before = victim.stat()
    (box.root / "nvml.json").write_text(NVML_FILE)
    box.write_config('[gpu]\nselect = "round-robin"\n[profiles.transcribe.gpu]\nvram_mib = 1000\n')
    box.lock_dir.mkdir(mode=0o1777)
    box.lock_dir.chmod(0o1777)
    plant(box.lock_dir / name, kind, victim, victim_dir)
    done = box.run(
        "run", "--", "transcribe", "x", env={"GPUROUTER_NVML_FILE": str(box.root / "nvml.json")}, timeout=15
    )
    after = victim.stat()
    assert victim.read_text() == "precious\n" and (after.st_size, after.st_mtime_ns) == (
        before.st_size,
        before.st_mtime_ns,
    )
    assert os.listdir(victim_dir) == []
    assert done.returncode in (0, 125), done.stderr
    assert "Traceback" not in done.stderr
    if done.returncode == 125:
        assert_one_line_error(done.stderr, name)
        assert "internal error" not in done.stderr
    else:
        assert [line[0] for line in box.job_lines()] == ["start", "end"]
    record_figures("hostile", planted=1, kind=f"{kind} under the {name} name")


# ---------------------------------------------------------------- unusable lock dirs


def test_a_missing_lock_dir_is_created_shared(box: Box) -> None:
    done = box.run("run", "--", "transcribe", "x")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(box.lock_dir.stat().st_mode) == 0o1777


@pytest.mark.parametrize(
    "case", ["parent-missing", "parent-is-a-file", "is-a-file", "is-a-symlink", "no-sticky-bit", "is-a-fifo"]
)
def test_an_unusable_lock_dir_is_one_clear_line_and_exit_125(box: Box, case: str) -> None:
    lock_dir = box.root / "locks"
    if case == "parent-missing":  # a typo in the configuration: only the last component is created
        lock_dir = box.root / "no-such-dir" / "locks"
    elif case == "parent-is-a-file":
        (box.root / "file").write_text("")
        lock_dir = box.root / "file" / "locks"
    elif case == "is-a-file":
        lock_dir.write_text("")
    elif case == "is-a-symlink":
        (box.root / "elsewhere").mkdir()
        lock_dir.symlink_to(box.root / "elsewhere")
    elif case == "no-sticky-bit":
        lock_dir.mkdir()
        lock_dir.chmod(0o777)
    elif case == "is-a-fifo":
        os.mkfifo(lock_dir)
    box.config.write_text(f'lock_dir = "{lock_dir}"\njournal = "{box.root}/journal.jsonl"\n')
    done = box.run("run", "--", "transcribe", "x", timeout=15)
    assert done.returncode == 125, done.stderr
    assert_one_line_error(done.stderr, str(lock_dir))
    assert box.job_lines() == []
    record_figures("hostile", lock_dirs=1, kind=f"lock dir {case}")


class Mount:
    """A small tmpfs (needs root and a kernel that lets this sandbox mount)."""

    def __init__(self, where: Path, options: str) -> None:
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.where = where

    def remount(self, options: str) -> None:
        subprocess.run(
            ["mount", "-o", f"remount,{options}", str(self.where)], check=True, capture_output=True
        )

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.where)], capture_output=True)


@pytest.fixture
def tmpfs(box: Box) -> Iterator[Any]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mounts: list[Mount] = []

    def make(options: str) -> Mount:
        mounts.append(Mount(box.root / f"mnt{len(mounts)}", options))
        return mounts[-1]

    yield make
    for mount in mounts:
        mount.close()


def fill(directory: Path) -> Path:
    """Fill a filesystem to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_for_the_journal_warns_runs_the_job_and_loses_no_later_record(
    box: Box, tmpfs: Any
) -> None:
    mount = tmpfs("size=16k,mode=1777")
    lock_dir = mount.where / "locks"
    box.config.write_text(f'lock_dir = "{lock_dir}"\njournal = "{lock_dir}/journal.jsonl"\n')
    for i in range(9):  # ~3.5 KiB of journal: the next records straddle a page boundary
        assert box.run("run", "--", "transcribe", f"before{i}").returncode == 0
    filler = fill(mount.where)
    warned = 0
    for i in range(4):
        done = box.run("run", "--", "transcribe", f"full{i}")
        assert done.returncode == 0, done.stderr  # journal failures never stop the job
        assert "Traceback" not in done.stderr
        warned += "warning: journal" in done.stderr
    assert warned >= 1
    filler.unlink()
    for i in range(3):
        assert box.run("run", "--", "transcribe", f"after{i}").returncode == 0
    records = journal_lines(lock_dir / "journal.jsonl")  # every line valid JSON
    argv = [r["argv"][1] for r in records]
    assert argv[:9] == [f"before{i}" for i in range(9)] and argv[-3:] == [f"after{i}" for i in range(3)]
    ran = [line[3] for line in box.job_lines() if line[0] == "start"]
    assert ran == [f"before{i}" for i in range(9)] + [f"full{i}" for i in range(4)] + [
        f"after{i}" for i in range(3)
    ]
    record_figures(
        "hostile", full_disk=1, kind="journal on a full tmpfs", jobs=len(ran), journal_warnings=warned
    )


def test_no_inode_left_for_a_slot_file_is_exit_125_in_one_line(box: Box, tmpfs: Any) -> None:
    mount = tmpfs("size=1m,nr_inodes=2,mode=1777")  # the root dir and the lock dir: nothing more
    lock_dir = mount.where / "locks"
    lock_dir.mkdir(mode=0o1777)
    lock_dir.chmod(0o1777)
    box.config.write_text(f'lock_dir = "{lock_dir}"\njournal = "{box.root}/journal.jsonl"\n')
    done = box.run("run", "--", "transcribe", "x")
    assert done.returncode == 125, done.stderr
    assert_one_line_error(done.stderr, "gpu.0", "No space left on device")
    assert box.job_lines() == []
    record_figures("hostile", full_disk=1, kind="no inode left for a slot file")


def test_a_read_only_lock_dir_is_exit_125_in_one_line(box: Box, tmpfs: Any) -> None:
    mount = tmpfs("size=64k,mode=1777")
    lock_dir = mount.where / "locks"
    lock_dir.mkdir(mode=0o1777)
    lock_dir.chmod(0o1777)
    mount.remount("ro")
    box.config.write_text(f'lock_dir = "{lock_dir}"\njournal = "{lock_dir}/journal.jsonl"\n')
    done = box.run("run", "--", "transcribe", "x")
    assert done.returncode == 125, done.stderr
    assert_one_line_error(done.stderr, "gpu.0", "Read-only file system")
    record_figures("hostile", lock_dirs=1, kind="read-only lock dir")


def test_a_slot_file_made_read_only_by_its_owner_is_still_lockable_by_others(shared: SharedBox) -> None:
    a, b = shared.users.a, shared.users.b
    assert shared.run(a, "run", "--", "transcribe", "a").returncode == 0
    assert shared.shell(a, f"chmod 444 {shared.lock_dir}/gpu.0").returncode == 0
    done = shared.run(b, "run", "--", "transcribe", "b")
    assert done.returncode == 0, done.stderr
    assert shared.shell(a, f"chmod 000 {shared.lock_dir}/gpu.0").returncode == 0
    denied = shared.run(b, "run", "--", "transcribe", "b2")
    assert denied.returncode == 125
    assert_one_line_error(denied.stderr, "gpu.0", "Permission denied")
