"""The last step: resolve the binary, hand the slot fd to it, flush, and exec.

After `os.execve` gpurouter is gone: the job keeps our pid, its exit status is the
caller's, signals reach it directly, and the slot's flock is held by the job's own
inherited fd until it exits, crashes or is killed -9.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

from gpurouter.errors import CommandNotFound, ExecFailed, ExitCode, NotExecutable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import NoReturn

    from gpurouter.job.settings import Profile
    from gpurouter.job.slots import Slot


def find_executable(command: str, search_path: str | None = None) -> str | None:
    """Like `shutil.which` (which costs ~5 ms of imports): an executable file, or None."""
    try:
        return resolve_command(command, search_path)
    except (CommandNotFound, NotExecutable):
        return None


def resolve_command(command: str, search_path: str | None = None) -> str:
    """The path `execvp` would run for `command`.

    Raises:
        CommandNotFound: no such file (exit 127).
        NotExecutable: found, but a directory or without execute permission (exit 126).
    """
    if not command:
        raise CommandNotFound("''", "an empty command name")
    if "/" in command:
        _check_runnable(command)
        return command
    directories = (os.environ.get("PATH", os.defpath) if search_path is None else search_path).split(
        os.pathsep
    )
    denied = None
    for directory in directories:
        candidate = os.path.join(directory or ".", command)
        try:
            _check_runnable(candidate)
            return candidate
        except CommandNotFound:
            continue
        except NotExecutable:
            denied = denied or candidate
    if denied is not None:
        raise NotExecutable(denied, "found, but not executable")
    raise CommandNotFound(command, f"PATH={':'.join(directories)}")


def intercept_target(argv0: str, profile: Profile, environ: Mapping[str, str] | None = None) -> str:
    """The real binary for the interception form: the profile's `binary`, else NAME-real beside the link.

    Raises:
        CommandNotFound / NotExecutable: missing, not executable, or gpurouter itself (a loop).
    """
    env = os.environ if environ is None else environ
    name = os.path.basename(argv0)
    link = argv0 if "/" in argv0 else (find_executable(name, env.get("PATH")) or name)
    # The profile's `binary` only when the profile is NAME's own: a GPUROUTER_PROFILE inherited from a
    # parent job must never make an intercepted ffmpeg run the whisper binary.
    own_binary = profile.binary if profile.name == name else None
    target = own_binary or os.path.join(os.path.dirname(os.path.abspath(link)), f"{name}-real")
    target = resolve_command(target, env.get("PATH"))
    # Never exec ourselves: a NAME-real (or binary) that resolves back to this launcher would
    # loop forever, re-taking slots each time.
    if os.path.realpath(target) in {os.path.realpath(link), os.path.realpath(sys.argv[0] or link)}:
        hint = (
            f"set profiles.{profile.name}.binary to the real binary"
            if profile.binary
            else f"rename the real {name} to {target}"
        )
        raise NotExecutable(target, f"resolves to gpurouter itself (a loop): {hint}")
    return target


def _check_runnable(path: str) -> None:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        raise CommandNotFound(path, path) from None
    if stat.S_ISDIR(info.st_mode):
        raise NotExecutable(path, "is a directory")
    if not os.access(path, os.X_OK):
        raise NotExecutable(path, "not executable (permission denied)")


def restore_default_signals() -> None:
    """Undo Python's start-up SIG_IGN of SIGPIPE and SIGXFSZ: exec keeps ignored signals, and a job
    like `yes | head -1` must die of SIGPIPE, not print "Broken pipe"."""
    import _signal  # type: ignore[import-not-found]  # the C module: `signal` imports enum (~3 ms) for its IntEnum wrappers

    for name in ("SIGPIPE", "SIGXFSZ"):
        number = getattr(_signal, name, None)
        if number is not None:
            _signal.signal(number, _signal.SIG_DFL)


def exec_command(path: str, argv: Sequence[str], env: Mapping[str, str], slot: Slot | None) -> NoReturn:
    """Replace this process with the job; the slot (if any) passes to it.

    Raises:
        ExecFailed: the kernel refused the exec (the slot is released); its exit code says why.
    """
    if slot is not None:
        # Python opens fds close-on-exec (PEP 446); without this the slot would be freed by
        # the exec itself while the job still runs.
        os.set_inheritable(slot.fd, True)
    restore_default_signals()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: Python started with that fd closed (issue 12)
                stream.flush()  # buffered writes are lost across exec
        except (OSError, ValueError):
            pass
    try:
        os.execve(path, list(argv), dict(env))
    except OSError as error:
        if slot is not None:
            slot.release()
        raise exec_error(path, error, argv, env) from None


def exec_error(
    path: str, error: OSError, argv: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> ExecFailed:
    """The error (and so the exit code) for an execve that failed: say which failure it was (issue 12)."""
    code = error.errno or 0
    if code in (errno.ENOENT, errno.ENOTDIR):
        if not os.path.lexists(path):
            return ExecFailed(
                path, code, "command not found (it vanished before the exec)", ExitCode.NOT_FOUND
            )
        head = _first_line(path)
        if head.startswith(b"#!"):
            interpreter = head[2:].strip().split(b" ")[0].decode("utf-8", "replace") or "(none)"
            return ExecFailed(
                path,
                code,
                f"bad interpreter: its #! interpreter {interpreter} was not found",
                ExitCode.NOT_FOUND,
            )
        if head.startswith(b"\x7fELF"):
            return ExecFailed(
                path,
                code,
                "cannot be executed: its ELF interpreter (the dynamic loader) was not found",
                ExitCode.NOT_FOUND,
            )
        return ExecFailed(path, code, f"cannot be executed: {error.strerror}", ExitCode.NOT_FOUND)
    if code == errno.E2BIG:
        size = sum(len(a.encode("utf-8", "surrogateescape")) + 1 for a in argv)
        size += sum(len(k) + len(v) + 2 for k, v in (env or {}).items())
        return ExecFailed(
            path,
            code,
            f"argument list too long ({size} bytes of arguments and environment)",
            ExitCode.WRAPPER_FAILED,
        )
    if code == errno.ENOEXEC:
        return ExecFailed(
            path,
            code,
            "cannot be executed: not a binary this system runs and no #! line (Exec format error)",
            ExitCode.NOT_EXECUTABLE,
        )
    if code in (
        errno.EACCES,
        errno.EPERM,
        errno.ETXTBSY,
        errno.EISDIR,
        errno.ELIBBAD,
        errno.ELOOP,
        errno.ENAMETOOLONG,
    ):
        return ExecFailed(path, code, f"cannot be executed: {error.strerror}", ExitCode.NOT_EXECUTABLE)
    return ExecFailed(path, code, f"exec failed: {error.strerror or error}", ExitCode.WRAPPER_FAILED)


def _first_line(path: str) -> bytes:
    """The first bytes of a file (to tell a #! script from an ELF binary), never blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return b""
    try:
        return os.read(fd, 256).split(b"\n")[0]
    except OSError:
        return b""
    finally:
        os.close(fd)
