"""A tiny per-user memo on disk for values that are costly to compute and cheap to key.

Used for the validated configuration (tomllib import + parse ~20 ms, validation ~0.4 ms). `marshal` is built
in, so reading a memo costs no import. Files live in the user's own cache directory, are
opened without following symlinks, must be owned by the user, and are replaced atomically;
anything unexpected is ignored, never trusted, and never an error.
"""

from __future__ import annotations

import marshal
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def xdg_base(variable: str, under_home: str, environ: Mapping[str, str] | None = None) -> str | None:
    """`$XDG_...` when it is an absolute path, else `$HOME/<under_home>` (HOME absolute too), else None.

    Why (issue 12): the XDG Base Directory spec says a relative path in these variables is
    invalid and must be ignored; used as it was, XDG_CACHE_HOME=cache wrote memos into
    whatever directory the job was started in.
    """
    env = os.environ if environ is None else environ
    base = env.get(variable, "")
    if os.path.isabs(base):
        return base
    home = env.get("HOME", "")
    return os.path.join(home, under_home) if os.path.isabs(home) else None


def memo_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """`$XDG_CACHE_HOME/gpurouter` or `~/.cache/gpurouter`; None without a home."""
    base = xdg_base("XDG_CACHE_HOME", ".cache", environ)
    return os.path.join(base, "gpurouter") if base else None


def _memo_name(kind: str, identity: object) -> str:
    # One file per config path: two configs used alternately by one user must not evict each other.
    # (zlib.crc32 is built in and stable across processes, unlike hash() of a str.)
    import zlib

    key = identity[0] if isinstance(identity, tuple) and identity else identity
    return f"{kind}-{zlib.crc32(str(key).encode('utf-8', 'surrogateescape')):08x}.memo"


def recall(kind: str, identity: object, environ: Mapping[str, str] | None = None) -> object:
    """The value remembered for `identity`, or None."""
    directory = memo_dir(environ)
    if directory is None:
        return None
    try:
        fd = os.open(os.path.join(directory, _memo_name(kind, identity)), _READ_FLAGS)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or info.st_size > 1 << 20 or (info.st_mode & 0o170000) != 0o100000:
            return None
        stored = marshal.loads(os.read(fd, info.st_size + 1))
        if isinstance(stored, tuple) and len(stored) == 2 and stored[0] == identity:
            return stored[1]
    except (OSError, ValueError, EOFError, TypeError):
        pass
    finally:
        os.close(fd)
    return None


def remember(kind: str, identity: object, value: object, environ: Mapping[str, str] | None = None) -> None:
    """Store `value` for `identity`; failures are silent (a memo is only an optimisation)."""
    directory = memo_dir(environ)
    if directory is None:
        return
    try:
        payload = marshal.dumps((identity, value))  # type: ignore[arg-type]  # checked at run time: ValueError
    except ValueError:  # e.g. a TOML datetime: not worth memoising
        return
    temporary = os.path.join(directory, f".{kind}.{os.getpid()}.tmp")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
        os.replace(temporary, os.path.join(directory, _memo_name(kind, identity)))
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass


def forget(kind: str, identity: object, environ: Mapping[str, str] | None = None) -> None:
    """Drop what is remembered under `identity`'s file (the evidence behind it changed)."""
    directory = memo_dir(environ)
    if directory is not None:
        try:
            os.unlink(os.path.join(directory, _memo_name(kind, identity)))
        except OSError:
            pass
