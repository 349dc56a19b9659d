"""Safe opening of files in directories shared by every user of the box.

Lock dirs live in places like /tmp where any user may plant a symlink, a FIFO or a device
under the names we use. So: never follow a symlink, never block in open (O_NONBLOCK: a
FIFO would otherwise hang open(2) until a writer appears), never truncate, and check that
what was opened is a regular file before using it.
"""

from __future__ import annotations

import errno
import os
import stat

_NO_SURPRISES = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
SHARED_FILE_MODE = 0o666  # several users share a box: anyone may open a slot file to lock it
SHARED_DIR_MODE = 0o1777  # like /tmp: anyone may create, nobody may remove another's files


def describe_mode(mode: int) -> str:
    """'a FIFO', 'a directory', ... for messages."""
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    for test, name in kinds:
        if test(mode):
            return name
    return "not a regular file"


def open_shared_file(name: str, flags: int, dir_fd: int | None = None) -> int:
    """Open (creating 0666 if missing) a regular file that other users may also create.

    Raises:
        OSError: with a readable `strerror` if the name is a symlink, FIFO, directory or
            device, or the open fails for another reason.
    """
    for _ in range(8):  # creation races with another process: retry the plain open
        try:
            fd = os.open(name, flags | _NO_SURPRISES, dir_fd=dir_fd)
        except FileNotFoundError:
            try:
                fd = os.open(
                    name, flags | _NO_SURPRISES | os.O_CREAT | os.O_EXCL, SHARED_FILE_MODE, dir_fd=dir_fd
                )
            except FileExistsError:
                continue
            os.fchmod(fd, SHARED_FILE_MODE)  # the umask trimmed it; we just created it, so it is ours
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EMLINK):
                raise OSError(error.errno, "is a symbolic link (refusing to follow it)", name) from None
            if error.errno in (errno.ENXIO, errno.EISDIR, errno.ENODEV, errno.EOPNOTSUPP):
                # Why: open(2) of a planted socket (or of a FIFO for writing, with no reader)
                # fails with "No such device or address": say what the name really is.
                _raise_as_kind(error, name, dir_fd)
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, f"is {describe_mode(info.st_mode)}, not a regular file", name)
        if info.st_nlink > 1:
            # Why: a hard link planted under a shared name (possible wherever
            # fs.protected_hardlinks is 0, and always for root) is another file, maybe
            # /etc/shadow: appending a journal line or a claim to it would write the victim.
            os.close(fd)
            raise OSError(
                errno.EINVAL, f"has {info.st_nlink} hard links (another file's name? refusing it)", name
            )
        return fd
    raise OSError(errno.EAGAIN, "keeps appearing and disappearing", name)


def _raise_as_kind(error: OSError, name: str, dir_fd: int | None) -> None:
    try:
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
    except OSError:
        raise error from None
    if stat.S_ISREG(mode):
        raise error
    raise OSError(error.errno, f"is {describe_mode(mode)}, not a regular file", name) from None


def open_regular_for_reading(path: str) -> int:
    """Open an existing regular file read-only without following symlinks or blocking.

    Raises:
        OSError: not there, not readable, or not a regular file.
    """
    fd = os.open(path, os.O_RDONLY | _NO_SURPRISES)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"is {describe_mode(info.st_mode)}, not a regular file", path)
    return fd


def open_shared_dir(path: str, create: bool = True) -> int:
    """An O_DIRECTORY fd on a shared lock dir, created 1777 if missing.

    Raises:
        OSError: with a readable `strerror`: a symlink, not a directory, world-writable
            without the sticky bit (anyone could delete the slot files), or unusable.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if not create:
            raise
        # Only the last component is created: a missing parent is a typo in the
        # configuration more often than not, and root must not build paths on a whim.
        try:
            os.mkdir(path, 0o700)  # private until chmod: no window with the wrong mode
            os.chmod(path, SHARED_DIR_MODE)
        except FileExistsError:
            pass
        except FileNotFoundError:
            # Why: a bare "No such file or directory" reads as if the lock dir itself were
            # the problem; say that it is the parent, which is never created.
            parent = os.path.dirname(os.path.abspath(path))
            raise OSError(
                errno.ENOENT,
                f"its parent directory {parent} does not exist (only the last component is created)",
                path,
            ) from None
        fd = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP or (error.errno == errno.ENOTDIR and os.path.islink(path)):
            raise OSError(error.errno, "is a symbolic link (refusing to follow it)", path) from None
        if error.errno == errno.ENOTDIR:
            raise OSError(error.errno, "is not a directory", path) from None
        raise
    info = os.fstat(fd)
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        os.close(fd)
        raise OSError(errno.EPERM, "is world-writable without the sticky bit (chmod 1777 it)", path)
    return fd


def write_replacing(path: str, data: bytes, mode: int) -> str:
    """Write beside `path`, fsync, rename over it: a crash leaves the old file or the new, whole.

    Only a regular file (or nothing) is replaced (issue 12: `report --html /dev/full` run as root
    replaced the device node, and a FIFO or a symlinked config became a plain file):
    - a symlink is followed: its target is the file written (a symlinked config stays a symlink);
    - a character device (/dev/null, /dev/tty, /dev/stdout on a terminal) or a FIFO that has a
      reader is written through, like a shell redirection; a FIFO with no reader is refused at
      once (never a wait for one);
    - anything else (a directory, a block device, a socket) is refused.

    Returns:
        The path written: `path`, or the file its symlink points at.

    Raises:
        OSError: with a readable `strerror` (and `filename`) for what is refused or fails.
    """
    import tempfile

    target = os.path.realpath(path)
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        if stat.S_ISCHR(info.st_mode) or stat.S_ISFIFO(info.st_mode):
            _write_through(target, data, info.st_mode)
            return target
        raise OSError(
            errno.EINVAL,
            f"is {describe_mode(info.st_mode)}, not a regular file (refusing to replace it)",
            path,
        )
    fd, temp = tempfile.mkstemp(
        prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=os.path.dirname(target)
    )
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fchmod(stream.fileno(), mode)
            os.fsync(stream.fileno())
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    return target


def _write_through(path: str, data: bytes, mode: int) -> None:
    """Write into a character device or a FIFO (no rename, no chmod); never wait for a FIFO reader."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ENXIO and stat.S_ISFIFO(mode):
            raise OSError(error.errno, "is a FIFO with no reader (refusing to wait for one)", path) from None
        raise
    try:
        os.set_blocking(fd, True)  # a reader is there: let it take the data at its pace
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as error:
        raise OSError(error.errno, error.strerror, path) from None
    finally:
        os.close(fd)
