"""The flock counting semaphore, in-process and across real processes."""

from __future__ import annotations

import math
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpurouter.errors import ExitCode, LockDirError, NoFreeSlot
from gpurouter.job.slots import acquire_slot


def test_second_job_fails_with_no_slot_when_the_only_slot_is_held(tmp_path: Path) -> None:
    # flock is per open file: contends in one process
    with acquire_slot(str(tmp_path), "gpu", 1, wait_s=0), pytest.raises(NoFreeSlot) as caught:
        acquire_slot(str(tmp_path), "gpu", 1, wait_s=0)
    assert (caught.value.pool, caught.value.exit_code) == ("gpu", ExitCode.NO_SLOT)


def test_slots_are_taken_in_order_and_each_only_once(tmp_path: Path) -> None:
    first = acquire_slot(str(tmp_path), "gpu", 3, wait_s=0)
    second = acquire_slot(str(tmp_path), "gpu", 3, wait_s=0)
    third = acquire_slot(str(tmp_path), "gpu", 3, wait_s=0)
    assert [s.index for s in (first, second, third)] == [0, 1, 2]
    with pytest.raises(NoFreeSlot):
        acquire_slot(str(tmp_path), "gpu", 3, wait_s=0)
    second.release()
    assert acquire_slot(str(tmp_path), "gpu", 3, wait_s=0).index == 1


def test_a_profile_with_fewer_slots_uses_only_the_first_slots_of_the_pool(tmp_path: Path) -> None:
    held = acquire_slot(str(tmp_path), "gpu", 4, wait_s=0)
    assert held.index == 0
    with pytest.raises(NoFreeSlot):
        acquire_slot(str(tmp_path), "gpu", 1, wait_s=0)
    assert acquire_slot(str(tmp_path), "gpu", 2, wait_s=0).index == 1


def test_a_bounded_wait_gives_up_after_its_limit(tmp_path: Path) -> None:
    with acquire_slot(str(tmp_path), "cpu", 2, wait_s=0), acquire_slot(str(tmp_path), "cpu", 2, wait_s=0):
        began = time.monotonic()
        with pytest.raises(NoFreeSlot) as caught:
            acquire_slot(str(tmp_path), "cpu", 2, wait_s=0.3)
    assert 0.3 <= time.monotonic() - began < 3
    assert caught.value.waited_s >= 0.3


def test_a_waiter_on_several_slots_gets_whichever_is_released_first(tmp_path: Path) -> None:
    holders = [acquire_slot(str(tmp_path), "gpu", 3, wait_s=0) for _ in range(3)]
    import threading

    threading.Timer(0.2, holders[2].release).start()
    got = acquire_slot(str(tmp_path), "gpu", 3, wait_s=math.inf)
    assert got.index == 2 and got.waited_s >= 0.15


def test_lock_dir_and_slot_files_are_shared_by_all_users(tmp_path: Path) -> None:
    lock_dir = tmp_path / "locks"
    os.umask(0o077)
    try:
        acquire_slot(str(lock_dir), "gpu", 1, wait_s=0).release()
    finally:
        os.umask(0o022)
    assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o1777
    assert stat.S_IMODE((lock_dir / "gpu.0").stat().st_mode) == 0o666


def test_a_read_only_slot_file_made_by_someone_else_is_still_lockable(tmp_path: Path) -> None:
    slot_file = tmp_path / "gpu.0"
    slot_file.write_text("")
    slot_file.chmod(0o444)
    with acquire_slot(str(tmp_path), "gpu", 1, wait_s=0) as held:
        assert held.index == 0


def test_a_planted_symlink_is_refused_and_its_target_stays_intact(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o1777)
    (lock_dir / "gpu.0").symlink_to(victim)
    with pytest.raises(LockDirError, match="symbolic link"):
        acquire_slot(str(lock_dir), "gpu", 1, wait_s=0)
    assert victim.read_text() == "precious"


def test_a_planted_fifo_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "gpu.0")
    with pytest.raises(LockDirError, match="FIFO"):
        acquire_slot(str(tmp_path), "gpu", 1, wait_s=0)


def test_a_planted_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "gpu.0").mkdir()
    with pytest.raises(LockDirError, match="slot file unusable"):
        acquire_slot(str(tmp_path), "gpu", 1, wait_s=0)


def test_a_lock_dir_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "locks").symlink_to(real)
    with pytest.raises(LockDirError, match="symbolic link"):
        acquire_slot(str(tmp_path / "locks"), "gpu", 1, wait_s=0)


def test_a_world_writable_lock_dir_without_the_sticky_bit_is_refused(tmp_path: Path) -> None:
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    lock_dir.chmod(0o777)
    with pytest.raises(LockDirError, match="sticky"):
        acquire_slot(str(lock_dir), "gpu", 1, wait_s=0)


def test_a_lock_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "locks").write_text("")
    with pytest.raises(LockDirError, match="not a directory"):
        acquire_slot(str(tmp_path / "locks"), "gpu", 1, wait_s=0)


def test_kill_9_of_a_holder_releases_the_slot_at_once(tmp_path: Path) -> None:
    code = (
        "import sys, time; from gpurouter.job.slots import acquire_slot;"
        f"s = acquire_slot({str(tmp_path)!r}, 'gpu', 1, 0); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(NoFreeSlot):
            acquire_slot(str(tmp_path), "gpu", 1, wait_s=0)
        holder.kill()
        holder.wait()
        began = time.monotonic()
        with acquire_slot(str(tmp_path), "gpu", 1, wait_s=5) as slot:
            assert slot.index == 0
        assert time.monotonic() - began < 1
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate()
