"""Find, read and validate the configuration into frozen records.

The search order is the contract's: `--config FILE`, `$GPUROUTER_CONFIG`,
`$XDG_CONFIG_HOME/gpurouter/config.toml` (or `~/.config/...`), `/etc/gpurouter/config.toml`.
With no file at all the built-in defaults apply and everything still works.

`tomllib` costs ~10-20 ms to import and validation ~0.4 ms of imports more, so the validated
settings are memoised per user (see `load`).
"""

from __future__ import annotations

import os

from gpurouter.errors import ConfigError
from gpurouter.job.settings import BUILTIN, Settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = ["Settings", "find_config", "load", "validate"]


def validate(document: Mapping[str, Any], source: str, path: str | None) -> Settings:
    """`validate.validate`: a parsed document into Settings (for callers that have one already)."""
    return _validate(document, source, path)


def find_config(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The config file to use, or None for the built-in defaults.

    Raises:
        ConfigError: a file named by `--config` or `$GPUROUTER_CONFIG` does not exist.
    """
    env = os.environ if environ is None else environ
    for named, origin in ((explicit, "--config"), (env.get("GPUROUTER_CONFIG"), "GPUROUTER_CONFIG")):
        if named:
            if not _config_exists(named):
                raise ConfigError(named, "", f"no such file (named by {origin})")
            return named
    from gpurouter.job.memo import xdg_base

    xdg = xdg_base("XDG_CONFIG_HOME", ".config", env) or "/nonexistent"  # a relative XDG path is ignored
    for candidate in (os.path.join(xdg, "gpurouter", "config.toml"), "/etc/gpurouter/config.toml"):
        if _config_exists(candidate):
            return candidate
    return None


def _config_exists(path: str) -> bool:
    """Is there a file at `path`? Only "no such file" (ENOENT, ENOTDIR) means absent.

    Raises:
        ConfigError: it cannot be looked up (EACCES on a folder, ELOOP...). Why (issue 12, item 5):
            `os.path.exists` says False for an unreadable ~/.config/gpurouter, and the built-in
            defaults then ran silently (another lock dir: other slots).
    """
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as error:
        raise ConfigError(path, "", f"cannot be looked up: {error.strerror or error}") from None
    except ValueError:  # an embedded NUL byte: no file can have that name
        return False
    return True


def load(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Find, read and validate the configuration.

    The validated settings are memoised per user, keyed by the file's identity (device, inode,
    size, mtime, ctime) and by the validation code's own: a job whose config did not change
    neither imports tomllib (~15 ms) nor the validation modules (~0.4 ms, issue 13), and errors
    are never memoised, so a broken file is reported on every call.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a key is unknown or wrong.
    """
    from gpurouter.job import memo

    path = find_config(explicit, environ)
    if path is None:
        identity: tuple[object, ...] = (BUILTIN, *_code_identity())
        remembered = _recall(identity, environ)
        if remembered is not None:
            return remembered
        settings = _validate({}, BUILTIN, None)
    else:
        fd = _open_config(path)
        try:
            info = os.fstat(fd)
            if not _is_regular(info.st_mode):
                raise ConfigError(path, "", "not a regular file")
            identity = (os.path.abspath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
                        info.st_ctime_ns, *_code_identity())  # fmt: skip
            remembered = _recall(identity, environ)
            if remembered is not None:
                return remembered
            settings = _validate(_parse_toml(path, fd), path, path)
        except OSError as error:
            raise ConfigError(path, "", f"cannot read: {error.strerror}") from None
        finally:
            os.close(fd)
    from gpurouter.job.records import to_plain

    memo.remember("config", identity, to_plain(settings), environ)
    return settings


def _code_identity() -> tuple[object, ...]:
    """What the memoised settings were made by: the version and the validation modules' mtimes (a
    developer editing a rule must not be served the old verdict)."""
    from gpurouter import __version__

    here = os.path.dirname(__file__)
    stamps = []
    for name in ("settings.py", "validate.py", "validate_box.py", "config_values.py"):
        try:
            stamps.append(os.stat(os.path.join(here, name)).st_mtime_ns)
        except OSError:
            stamps.append(0)
    return (__version__, *stamps)


def _recall(identity: tuple[object, ...], environ: Mapping[str, str] | None) -> Settings | None:
    """The memoised settings for `identity`, or None (none, unreadable, or of another shape)."""
    from gpurouter.job import memo, settings
    from gpurouter.job.records import from_plain

    stored = memo.recall("config", identity, environ)
    if stored is None:
        return None
    classes = {name: value for name, value in vars(settings).items() if isinstance(value, type)}
    try:
        rebuilt = from_plain(stored, classes)
    except (ValueError, TypeError, KeyError):
        return None
    return rebuilt if isinstance(rebuilt, Settings) else None


def _validate(document: Mapping[str, Any], source: str, path: str | None) -> Settings:
    from gpurouter.job.validate import validate  # deferred: a memoised config needs none of it

    return validate(document, source, path)


def _open_config(path: str) -> int:
    try:
        # O_NONBLOCK: a FIFO planted under the config name must not hang us.
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as error:
        raise ConfigError(path, "", f"cannot read: {error.strerror}") from None


def _parse_toml(path: str, fd: int) -> dict[str, Any]:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    import tomllib  # deferred: ~10-20 ms, paid only when the memo misses

    try:
        return tomllib.loads(b"".join(chunks).decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(path, "", f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, "", f"not valid TOML: {error}") from None
    except ValueError as error:  # an integer of more than 4300 digits (Python's int-to-str limit; issue 12)
        raise ConfigError(path, "", f"not usable TOML: {str(error).split(';')[0]}") from None


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)
