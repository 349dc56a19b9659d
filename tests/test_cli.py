"""The command line: every command has help and docs; `python -m gpurouter` works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpurouter.cli import cli

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_is_documented(command: str) -> None:
    text = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    assert f"gpurouter {command}" in text


def test_python_dash_m_gpurouter_shows_help() -> None:
    done = subprocess.run([sys.executable, "-m", "gpurouter", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "Usage: gpurouter" in done.stdout


def test_run_help_comes_from_click_and_lists_every_option() -> None:
    from gpurouter.job.options import RUN_OPTIONS

    done = subprocess.run(
        [sys.executable, "-m", "gpurouter", "run", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    for name, _, _ in RUN_OPTIONS:
        assert name in done.stdout


def test_an_unknown_run_option_is_a_usage_error_with_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpurouter", "run", "--colour", "x", "--", "true"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "no such option: --colour" in done.stderr


def test_run_without_a_command_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpurouter", "run", "--wait", "block"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "COMMAND" in done.stderr


def test_a_bad_wait_option_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpurouter", "run", "--wait", "soon", "--", "true"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--wait" in done.stderr and "Traceback" not in done.stderr
