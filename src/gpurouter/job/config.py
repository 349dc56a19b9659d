"""Find, read and validate the configuration into frozen records.

The search order is the contract's: `--config FILE`, `$GPUROUTER_CONFIG`,
`$XDG_CONFIG_HOME/gpurouter/config.toml` (or `~/.config/...`), `/etc/gpurouter/config.toml`.
With no file at all the built-in defaults apply and everything still works.

`tomllib` costs ~10-20 ms to import, so the parsed document is memoised per user, keyed by
the file's identity (device, inode, size, mtime, ctime); validation always runs afresh.
"""

from __future__ import annotations

import os

from gpurouter.errors import ConfigError
from gpurouter.job.settings import BUILTIN, Settings
from gpurouter.job.validate import validate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = ["Settings", "find_config", "load", "validate"]


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

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a key is unknown or wrong.
    """
    path = find_config(explicit, environ)
    if path is None:
        return validate({}, BUILTIN, None)
    return validate(_read_toml(path, environ), path, path)


def _read_toml(path: str, environ: Mapping[str, str] | None) -> dict[str, Any]:
    from gpurouter.job import memo

    try:
        # O_NONBLOCK: a FIFO planted under the config name must not hang us.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as error:
        raise ConfigError(path, "", f"cannot read: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not _is_regular(info.st_mode):
            raise ConfigError(path, "", "not a regular file")
        identity = (
            os.path.abspath(path),
            info.st_dev,
            info.st_ino,
            info.st_size,
            info.st_mtime_ns,
            info.st_ctime_ns,
        )
        cached = memo.recall("config", identity, environ)
        if isinstance(cached, dict):
            return cached
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError as error:
        raise ConfigError(path, "", f"cannot read: {error.strerror}") from None
    finally:
        os.close(fd)
    import tomllib  # deferred: ~10-20 ms, paid only when the memo misses

    try:
        document = tomllib.loads(b"".join(chunks).decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(path, "", f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, "", f"not valid TOML: {error}") from None
    except ValueError as error:  # an integer of more than 4300 digits (Python's int-to-str limit; issue 12)
        raise ConfigError(path, "", f"not usable TOML: {str(error).split(';')[0]}") from None
    memo.remember("config", identity, document, environ)
    return document


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)
