"""The click command line: parse, call one core function, render, map errors to exit codes.

`run` and the interception form normally never get here (see `__main__.py`); click only
renders `run --help` and reports `run` usage errors in its usual form.
"""

from __future__ import annotations

from gpurouter.cli import job_commands, observe_commands  # noqa: F401  (each registers its commands)
from gpurouter.cli.group import cli

__all__ = ["cli", "main"]


def main(args: list[str] | None = None) -> int:
    """Run the click group; returns the exit code."""
    try:
        cli.main(args=args, prog_name="gpurouter", standalone_mode=True)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except Exception as error:  # a bug in a command: one line and 125, as on the run path, not a traceback
        from gpurouter.job.entry import internal_error

        return internal_error(error)
    return 0
