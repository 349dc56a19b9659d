"""The two per-job entry points, `run` and the interception form, without click.

Both end in exec; every failure before that is one `gpurouter: ...` line on stderr and
the contract's exit code. stdout is never written: it belongs to the job.
"""

from __future__ import annotations

import os
import sys

from gpurouter.errors import ExitCode, GpurouterError, NoFreeSlot, UsageError
from gpurouter.job import config, decision, execute, options, runner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence


def fail(error: GpurouterError, busy_exit_code: int = ExitCode.NO_SLOT) -> int:
    """Print the one-line message and return the exit code for `error`."""
    say(str(error))
    return busy_exit_code if isinstance(error, NoFreeSlot) else error.exit_code


def run_command(
    opts: Mapping[str, str | bool], command: Sequence[str], environ: Mapping[str, str] | None = None
) -> int:
    """`gpurouter run [OPTIONS] -- COMMAND ...`: returns only on failure (else it has exec'd)."""
    env = os.environ if environ is None else environ

    def load() -> config.Settings:
        if not command:
            raise UsageError("run needs a COMMAND to run (gpurouter run [OPTIONS] -- COMMAND [ARGS...])")
        return config.load(_str(opts.get("config")), env)

    def act(settings: config.Settings) -> None:
        runner.run(settings, prepare(settings, opts, command, env), env, verbose=bool(opts.get("verbose")))

    return _exit_code(load, act)


def _exit_code(load: Callable[[], config.Settings], act: Callable[[config.Settings], None]) -> int:
    """Run one per-job call; every failure before exec becomes one line and the contract's exit code."""
    busy = ExitCode.NO_SLOT
    try:
        settings = load()
        busy = settings.busy_exit_code
        act(settings)
    except GpurouterError as error:
        return fail(error, busy)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        return internal_error(error)
    return ExitCode.WRAPPER_FAILED  # not reached: act() execs or raises


def internal_error(error: BaseException) -> int:
    """A bug in gpurouter: one line (the traceback with GPUROUTER_DEBUG=1), exit 125."""
    if os.environ.get("GPUROUTER_DEBUG"):
        import traceback

        traceback.print_exc()
    say(
        f"internal error: {type(error).__name__}: {error} "
        "(GPUROUTER_DEBUG=1 shows the traceback; please report it)"
    )
    return ExitCode.WRAPPER_FAILED


def say(message: str) -> None:
    """One `gpurouter: ...` line on stderr; a closed or broken stderr loses the line, never the
    job (issue 12)."""
    stream = sys.stderr  # None when Python started with fd 2 closed
    if stream is None:
        return
    try:
        stream.write(f"gpurouter: {message}\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def prepare(
    settings: config.Settings,
    opts: Mapping[str, str | bool],
    command: Sequence[str],
    environ: Mapping[str, str],
) -> decision.Decision:
    """Resolve the binary first (a typo never queues), then pick the profile and decide."""
    if command[0].startswith("-") and command[0] != "-":
        raise UsageError(
            f"no such option: {command[0]} (put the command after --: run [OPTIONS] -- COMMAND ...)"
        )
    executable = execute.resolve_command(command[0], environ.get("PATH"))
    profile = options.pick_profile(settings, command[0], _str(opts.get("profile")), environ)
    profile = options.apply_overrides(profile, opts)
    forced = decision.forced_route(_str(opts.get("route")), environ)
    return decision.decide(settings, profile, command, executable, forced, environ)


def intercept(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Started as NAME (a symlink to gpurouter): route and exec NAME-real with all args untouched."""
    env = os.environ if environ is None else environ

    def act(settings: config.Settings) -> None:
        profile = options.pick_profile(settings, os.path.basename(argv[0]), None, env, intercepted=True)
        executable = execute.intercept_target(argv[0], profile, env)
        forced = decision.forced_route(None, env)
        runner.run(
            settings,
            decision.decide(settings, profile, list(argv), executable, forced, env, intercepted=True),
            env,
        )

    return _exit_code(lambda: config.load(None, env), act)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
