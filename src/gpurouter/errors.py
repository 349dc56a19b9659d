"""The one error hierarchy of gpurouter and the exit codes it maps to.

Kept free of `enum` and `typing`: this module is on every job's hot path, where each
millisecond of import time is paid once per wrapped job.
"""

from __future__ import annotations


class ExitCode:
    """Named exit codes (POSIX `env`/`timeout` convention plus sysexits)."""

    USAGE = 2  # command-line usage error
    NO_SLOT = 75  # EX_TEMPFAIL: no slot free (or the wait ran out); the default busy_exit_code
    CONFIG = 78  # EX_CONFIG: the message names the file, the key and the problem
    WRAPPER_FAILED = 125  # gpurouter itself failed before exec for another reason
    NOT_EXECUTABLE = 126  # the real binary exists but cannot be executed (or would exec gpurouter)
    NOT_FOUND = 127  # the real binary was not found


class GpurouterError(Exception):
    """Base of every error gpurouter reports to a user as one line."""

    exit_code: int = ExitCode.WRAPPER_FAILED


class UsageError(GpurouterError):
    """A command line gpurouter cannot parse."""

    exit_code = ExitCode.USAGE


class ConfigError(GpurouterError):
    """A configuration file, key or value that is wrong."""

    exit_code = ExitCode.CONFIG

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        shown = key if key.isprintable() else repr(key)  # one line, whatever the TOML key holds
        if (
            len(problem) > 400
        ):  # "got 999...": a 4300-digit integer is one line, but not one to read (issue 12)
            problem = f"{problem[:300]}... ({len(problem)} characters)"
        super().__init__(f"{source}: {shown}: {problem}" if key else f"{source}: {problem}")


class CommandNotFound(GpurouterError):
    """The binary to exec does not exist."""

    exit_code = ExitCode.NOT_FOUND

    def __init__(self, command: str, tried: str) -> None:
        self.command, self.tried = command, tried
        super().__init__(f"{command}: command not found (tried {tried})")


class NotExecutable(GpurouterError):
    """The binary to exec exists but cannot be executed (or is gpurouter itself)."""

    exit_code = ExitCode.NOT_EXECUTABLE

    def __init__(self, path: str, why: str = "not executable") -> None:
        self.path = path
        super().__init__(f"{path}: {why}")


class NoFreeSlot(GpurouterError, TimeoutError):
    """Every allowed slot of the pool is held (fail-fast), or the wait for one ran out."""

    exit_code = ExitCode.NO_SLOT

    def __init__(self, pool: str, slots: int, waited_s: float, why: str = "") -> None:
        self.pool, self.slots, self.waited_s, self.why = pool, slots, waited_s, why
        waited = f" after waiting {waited_s:.1f}s" if waited_s >= 0.05 else ""
        detail = why or f"all {slots} slot(s) of pool {pool!r} are busy"
        super().__init__(f"no free slot: {detail}{waited}; retry later")


class LockDirError(GpurouterError):
    """The lock directory or a slot file in it cannot be used safely."""

    exit_code = ExitCode.WRAPPER_FAILED

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")


class ProbeRefused(GpurouterError):
    """The probe gave no metric and the profile says `fallback = "fail"`."""

    exit_code = ExitCode.WRAPPER_FAILED


class ExecFailed(GpurouterError):
    """The kernel refused to exec the job after gpurouter had taken its slot (execve failed).

    `exit_code` says which failure it was: 127 not found (or its #! interpreter or ELF loader is
    missing), 126 cannot be executed (no #! line, not a binary for this system, busy being
    written), 125 for anything else (argument list too long, out of memory).
    """

    def __init__(self, path: str, errno_value: int, why: str, exit_code: int) -> None:
        self.path, self.errno, self.exit_code = path, errno_value, exit_code
        super().__init__(f"{path}: {why}")
