"""Entry point: `gpurouter ...`, `python -m gpurouter ...`, or a symlink named after a binary.

The per-job paths (`run` and interception) stay on the stdlib; only the other commands
(and `run --help`) load click.
"""

from __future__ import annotations

import os
import sys

_OWN_NAMES = frozenset(("gpurouter", "__main__.py", "gpurouter.exe"))


def main(argv: list[str] | None = None) -> int:
    """Dispatch on how we were started; returns the exit code (the per-job paths exec instead)."""
    args = sys.argv if argv is None else argv
    if args and os.path.basename(args[0]) not in _OWN_NAMES:
        from gpurouter.job.entry import intercept

        return intercept(args)
    if len(args) > 1 and args[1] == "run":
        from gpurouter.job.entry import run_command
        from gpurouter.job.options import NeedsClick, parse_run_args

        try:
            opts, command = parse_run_args(args[2:])
        except NeedsClick:
            pass  # click prints the help or the usage error (exit 2)
        else:
            return run_command(opts, command)
    from gpurouter.cli import main as cli_main

    return cli_main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
