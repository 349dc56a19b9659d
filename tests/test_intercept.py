"""The interception form (a symlink named after the binary) and install/uninstall."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from conftest import GPUROUTER, WHISPER_PROFILE, Box


def intercept(box: Box, name: str = "transcribe") -> Path:
    """Rename bin/NAME to NAME-real by hand and link NAME to gpurouter."""
    (box.bin / name).rename(box.bin / f"{name}-real")
    (box.bin / name).symlink_to(GPUROUTER)
    return box.bin / name


def run_link(box: Box, link: Path, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    import subprocess

    return subprocess.run(
        [str(link), *args], env={**box.env, **(env or {})}, capture_output=True, text=True, timeout=60
    )


def test_a_symlinked_name_uses_its_profile_and_execs_name_real(box: Box, media: dict[str, Path]) -> None:
    box.write_config(WHISPER_PROFILE)
    link = intercept(box)
    done = run_link(box, link, str(media["wav8"]))
    assert done.returncode == 0, done.stderr
    assert f"args: {media['wav8']} --device cpu" in done.stdout
    record = box.records()[0]
    assert (record["profile"], record["route"]) == ("transcribe", "cpu")


def test_interception_passes_every_argument_untouched_even_gpurouter_like_ones(box: Box) -> None:
    link = intercept(box)
    done = run_link(box, link, "--route", "gpu", "--", "run")
    assert "args: --route gpu -- run" in done.stdout


def test_interception_works_with_no_profile_and_no_config(box: Box) -> None:
    box.config.unlink()
    link = intercept(box)
    env = {"GPUROUTER_CONFIG": "", "XDG_CONFIG_HOME": str(box.root / "none")}
    done = run_link(box, link, "hello", env=env)
    assert done.returncode == 0 and "args: hello" in done.stdout


def test_the_profiles_binary_wins_over_name_real(box: Box) -> None:
    other = box.root / "elsewhere"
    other.mkdir()
    shutil.copy(box.bin / "transcribe", other / "real-transcriber")
    box.write_config(f'[profiles.transcribe]\nbinary = "{other / "real-transcriber"}"\n')
    link = box.bin / "transcribe"
    link.unlink()
    link.symlink_to(GPUROUTER)
    done = run_link(box, link, "x")
    assert done.returncode == 0 and "args: x" in done.stdout


def test_a_missing_real_binary_exits_127_naming_the_path_tried(box: Box) -> None:
    link = box.bin / "ghost"
    link.symlink_to(GPUROUTER)
    done = run_link(box, link)
    assert done.returncode == 127
    assert str(box.bin / "ghost-real") in done.stderr


def test_a_real_binary_that_is_gpurouter_again_is_a_loop_error_never_a_recursion(box: Box) -> None:
    link = box.bin / "loopy"
    link.symlink_to(GPUROUTER)
    (box.bin / "loopy-real").symlink_to(GPUROUTER)
    done = run_link(box, link)
    assert done.returncode == 126
    assert "loop" in done.stderr
    assert box.records() == []


def test_install_swaps_in_the_link_and_uninstall_restores_it_exactly(box: Box) -> None:
    original = (box.bin / "transcribe").read_bytes()
    inode = (box.bin / "transcribe").stat().st_ino
    done = box.run("install", "transcribe")
    assert done.returncode == 0, done.stderr
    assert "installed" in done.stdout
    assert os.path.islink(box.bin / "transcribe")
    assert (box.bin / "transcribe-real").stat().st_ino == inode
    assert run_link(box, box.bin / "transcribe", "via-link").stdout.endswith("args: via-link\n")
    again = box.run("install", "transcribe")
    assert again.returncode == 0 and "already installed" in again.stdout
    undone = box.run("uninstall", str(box.bin / "transcribe"))
    assert undone.returncode == 0, undone.stderr
    assert not os.path.islink(box.bin / "transcribe")
    assert (box.bin / "transcribe").read_bytes() == original
    assert (box.bin / "transcribe").stat().st_ino == inode
    assert not (box.bin / "transcribe-real").exists()
    assert "not installed" in box.run("uninstall", "transcribe").stdout


def test_install_refuses_to_clobber_an_existing_name_real(box: Box) -> None:
    (box.bin / "transcribe-real").write_text("someone's file")
    done = box.run("install", "transcribe")
    assert done.returncode == 125 and "already exists" in done.stderr
    assert (box.bin / "transcribe-real").read_text() == "someone's file"
    assert not os.path.islink(box.bin / "transcribe")


def test_install_of_a_missing_binary_exits_127(box: Box) -> None:
    assert box.run("install", "no-such-tool").returncode == 127


def test_a_prefix_run_of_an_intercepted_name_routes_once_not_twice(box: Box, media: dict[str, Path]) -> None:
    box.write_config(WHISPER_PROFILE)
    intercept(box)
    done = box.run("run", "--", "transcribe", str(media["wav2"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"{media['wav2']} --device cuda")
    (outer,) = box.records()  # one job, one start: the intercepted inner call passed straight through
    assert outer["slot"] == "gpu.0"


def test_a_nested_prefix_run_of_the_same_profile_still_routes(box: Box, media: dict[str, Path]) -> None:
    box.write_config(WHISPER_PROFILE)
    done = box.run("run", "--", "sh", "-c", f"gpurouter run -- transcribe {media['wav8']}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("--device cpu")
    _outer, inner = box.records()
    assert (inner["profile"], inner["route"], inner["slot"]) == ("transcribe", "cpu", "cpu.0")


def test_an_inherited_profile_never_makes_a_link_exec_another_profiles_binary(box: Box) -> None:
    other = box.root / "whisper-binary"
    other.write_text('#!/bin/sh\necho "whisper ran: $*"\n')
    other.chmod(0o755)
    box.write_config(
        f'[profiles.whisper]\nbinary = "{other}"\n[profiles.whisper.gpu]\nargs = ["--device", "cuda"]\n'
    )
    intercept(box)  # transcribe -> gpurouter, transcribe-real beside it
    done = box.run("run", "--", "sh", "-c", "transcribe -i x.mp4", env={"GPUROUTER_PROFILE": "whisper"})
    assert done.returncode == 0, done.stderr
    assert "args: -i x.mp4" in done.stdout and "whisper ran" not in done.stdout


def test_skip_lock_still_routes_an_intercepted_name_only_once(box: Box, media: dict[str, Path]) -> None:
    box.write_config(WHISPER_PROFILE)
    intercept(box)
    done = box.run("run", "--", "transcribe", str(media["wav2"]), env={"GPUROUTER_SKIP_LOCK": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"{media['wav2']} --device cuda")
