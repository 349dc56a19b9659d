"""Put gpurouter in place of a binary (interception form), and take it out again.

`install NAME|PATH` renames the real binary to NAME-real and puts a symlink to the
gpurouter launcher under the original name. At no instant is NAME missing: the real
binary is hard-linked to NAME-real first, then the symlink is renamed over NAME
(rename(2) is atomic). `uninstall` renames NAME-real back over the symlink. Both refuse to
clobber anything they did not make, and both are idempotent.
"""

from __future__ import annotations

import errno
import os
import sys

from gpurouter.errors import CommandNotFound, GpurouterError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

REAL_SUFFIX = "-real"


# link(2) errors that mean "this file system has no hard links for us", where a rename is the way.
_NO_HARD_LINKS = frozenset((errno.EPERM, errno.EMLINK, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS))


class InstallError(GpurouterError):
    """install/uninstall refused: the message says what is in the way."""


def launcher_path() -> str:
    """The absolute path of the `gpurouter` console script the symlink should point at."""
    from gpurouter.job.execute import find_executable

    candidates = [os.path.join(os.path.dirname(sys.executable), "gpurouter")]
    if os.path.basename(sys.argv[0]) == "gpurouter":
        candidates.insert(0, os.path.abspath(sys.argv[0]))
    found = find_executable("gpurouter")
    if found:
        candidates.append(os.path.abspath(found))
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise InstallError(
        "cannot find the gpurouter launcher to link to (is gpurouter installed in a venv on PATH?)"
    )


def _locate(target: str) -> str:
    from gpurouter.job.execute import find_executable

    if "/" in target:
        return os.path.abspath(target)
    found = find_executable(target)
    if found is None:
        real = find_executable(target + REAL_SUFFIX)
        if real is not None:  # already installed, but the link was removed: reinstall beside the -real
            return os.path.join(os.path.dirname(os.path.abspath(real)), target)
        raise CommandNotFound(target, "PATH")
    return os.path.abspath(found)


def is_our_link(path: str, launcher: str) -> bool:
    """Is `path` a symlink that resolves to the gpurouter launcher?"""
    return os.path.islink(path) and os.path.realpath(path) == os.path.realpath(launcher)


def _under_directory_lock(path: str, action: Callable[[], str]) -> str:
    """Run `action` holding an exclusive flock on the directory that holds `path`.

    Why (issue 12): installs started at one instant by config management each saw "not
    installed", and the hard-link fallback of one renamed another's fresh symlink onto
    NAME-real: the real binary was gone. Every install and uninstall of a directory now runs
    under this lock and checks the state afresh under it. The directory itself is locked (an
    O_DIRECTORY fd, no file created): nothing can be planted in its place, nothing is left
    behind in /usr/local/bin, and a read-only directory still gets its one-line error from
    the rename. realpath: /bin/tool and /usr/bin/tool (merged /usr) take the same lock.
    """
    import fcntl

    directory = os.path.realpath(os.path.dirname(path) or ".")
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise InstallError(f"cannot open {directory}: {error.strerror or error}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another install or uninstall of this directory finishes first
        except OSError as error:
            raise InstallError(f"cannot lock {directory}: {error.strerror or error}") from None
        return action()
    finally:
        os.close(fd)  # releases the lock


def install(target: str, launcher: str | None = None) -> str:
    """Intercept `target` (a name on PATH or a path); returns what was done, in words.

    Raises:
        InstallError: something other than our own work is in the way.
        CommandNotFound: no such binary.
    """
    launcher = launcher or launcher_path()
    path = _locate(target)
    return _under_directory_lock(path, lambda: _install(path, launcher))


def _install(path: str, launcher: str) -> str:
    real = path + REAL_SUFFIX
    if is_our_link(path, launcher) and os.path.lexists(real):
        return f"already installed: {path} -> {launcher}, real binary at {real}"
    if os.path.lexists(real):
        raise InstallError(f"{real} already exists; refusing to overwrite it (remove or rename it first)")
    if not os.path.lexists(path):
        raise CommandNotFound(path, path)
    if is_our_link(path, launcher):
        raise InstallError(
            f"{path} already points at gpurouter but {real} is missing: put the real binary there"
        )
    if os.path.realpath(path) == os.path.realpath(launcher):
        raise InstallError(f"{path} is gpurouter itself; refusing to intercept it")
    temporary = f"{path}.gpurouter-{os.getpid()}"
    moved = ""  # how the real binary reached NAME-real: undone if the last step fails
    try:
        os.symlink(launcher, temporary)  # a read-only directory fails here: one line, not a traceback
        try:
            os.link(path, real, follow_symlinks=False)  # NAME-real appears while NAME still exists
            moved = "linked"
        except OSError as error:
            if error.errno not in _NO_HARD_LINKS:
                raise  # EEXIST: something appeared at NAME-real; a rename would destroy it
            os.rename(path, real)  # no hard links here: a rename, then the link, microseconds apart
            moved = "renamed"
        os.rename(temporary, path)
    except OSError as error:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        try:
            if moved == "linked":
                os.unlink(real)  # a second name of NAME, which is still there
            elif moved == "renamed":
                os.rename(real, path)
        except OSError:
            pass
        raise InstallError(f"cannot install over {path}: {error.strerror or error}") from None
    return f"installed: {path} -> {launcher}; the real binary is now {real}"


def uninstall(target: str, launcher: str | None = None) -> str:
    """Undo `install`: NAME-real goes back to NAME; returns what was done, in words.

    Raises:
        InstallError: NAME is not our symlink (nothing is touched).
    """
    launcher = launcher or launcher_path()
    path = _locate(target)
    return _under_directory_lock(path, lambda: _uninstall(path, launcher))


def _uninstall(path: str, launcher: str) -> str:
    real = path + REAL_SUFFIX
    if not is_our_link(path, launcher):
        if os.path.lexists(path) and not os.path.lexists(real):
            return f"not installed: {path} is not a gpurouter link; nothing to do"
        if os.path.lexists(path):
            raise InstallError(f"{path} is not a gpurouter link but {real} exists; fix by hand")
    if not os.path.lexists(real):
        raise InstallError(f"{real} is missing, so {path} cannot be restored; put the real binary there")
    try:
        os.rename(real, path)  # atomically replaces our symlink with the real binary
    except OSError as error:
        raise InstallError(f"cannot restore {path}: {error.strerror or error}") from None
    return f"uninstalled: {path} is the real binary again"
