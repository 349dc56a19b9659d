"""The click group every command hangs on, and the one place GpurouterError becomes an exit code."""

from __future__ import annotations

import contextlib
import sys

import click

from gpurouter import __version__
from gpurouter.errors import GpurouterError, NoFreeSlot
from gpurouter.job.options import RUN_OPTIONS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])

FORWARDING = {"ignore_unknown_options": True, "allow_interspersed_args": False}


@contextlib.contextmanager
def exit_codes(busy_exit_code: int = 75) -> Iterator[None]:
    """GpurouterError -> 'gpurouter: ...' on stderr and its exit code; nothing else is caught."""
    try:
        yield
    except GpurouterError as error:
        click.echo(f"gpurouter: {error}", err=True)
        sys.exit(busy_exit_code if isinstance(error, NoFreeSlot) else error.exit_code)


def run_options(function: F) -> F:
    """The options of `run` and `route`, from the one table in options.py."""
    for name, metavar, help_text in reversed(RUN_OPTIONS):
        if metavar is None:
            function = click.option(name, is_flag=True, help=help_text)(function)
        else:
            function = click.option(
                name, metavar=metavar.upper() if "|" not in metavar else metavar, help=help_text
            )(function)
    return function


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpurouter")
def cli() -> None:
    """Probe a job's input, pick GPU or CPU arguments, take a flock slot, exec the job.

    \b
    Example:
        gpurouter run -- whisper-ctranslate2 talk.wav
        ln -s "$(command -v gpurouter)" /usr/local/bin/whisper-ctranslate2   # or: gpurouter install
    """


def warn_skipped(count: int, what: str = "malformed journal record") -> None:
    """One stderr line when a reader skipped journal records (issue 12: the journal is world-writable)."""
    if count:
        from gpurouter.job.journal_reader import skipped_text

        click.echo(f"gpurouter: warning: {skipped_text(count, what)}", err=True)
