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
    fill_closed_std_fds()
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


def fill_closed_std_fds() -> None:
    """Put /dev/null on any of fds 0, 1, 2 the caller closed (`gpurouter run -- job 2>&-`), close-on-exec.

    Why (issue 12): a runner or daemon may start us with a closed stdout or stderr. Left closed,
    the next open(2) (a slot lock, the journal) would land on fd 1 or 2: our messages would be
    written into the journal or a lock file, and the job would inherit a lock file as its stdout.
    The placeholders are close-on-exec, so the job sees those fds closed, as its caller made them:
    gpurouter is as transparent as env(1) or nice(1), which pass descriptors through untouched.
    Python sets sys.stdout/sys.stderr to None for a closed fd; they get a writer on the
    placeholder, so every message path works (and goes nowhere).
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        try:
            opened = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)  # the lowest free fd: `fd` itself
            if opened != fd:
                os.dup2(opened, fd, inheritable=False)
                os.close(opened)
        except OSError:
            continue  # nothing to do about it: every message path below tolerates a missing stream
    for name, fd in (("stdout", 1), ("stderr", 2)):
        if getattr(sys, name) is None:
            try:
                setattr(sys, name, open(fd, "w", closefd=False, errors="backslashreplace"))  # noqa: SIM115
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
