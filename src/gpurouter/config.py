"""Find, read and validate the configuration into frozen records.

The search order is the contract's: `--config FILE`, `$GPUROUTER_CONFIG`,
`$XDG_CONFIG_HOME/gpurouter/config.toml` (or `~/.config/...`), `/etc/gpurouter/config.toml`.
With no file at all the built-in defaults apply and everything still works.

`tomllib` costs ~10-20 ms to import, so the parsed document is memoised per user, keyed by
the file's identity (device, inode, size, mtime, ctime); validation always runs afresh.
"""

from __future__ import annotations

import math
import os

from gpurouter import units
from gpurouter._record import Record
from gpurouter.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

BUILTIN = "built-in"
ROUTES = ("gpu", "cpu")
PROBES = ("duration", "size", "pixels", "command")
FALLBACKS = ("cpu", "gpu", "fail")
ARGS_POSITIONS = ("append", "prepend")

DEFAULT_LOCK_DIR = "/tmp/gpurouter"
DEFAULTS: dict[str, Any] = {
    "lock_dir": DEFAULT_LOCK_DIR,
    "journal": DEFAULT_LOCK_DIR + "/journal.jsonl",
    "busy_exit_code": 75,
    "ffprobe": "ffprobe",
    "probe_timeout": "20s",
    "probe_cache": True,
}
PROFILE_DEFAULTS: dict[str, Any] = {
    "binary": None,
    "probe": None,
    "probe_command": None,
    "threshold": None,
    "input": "last",
    "fallback": "cpu",
    "wait": "fail",
}
ROUTE_DEFAULTS: dict[str, Any] = {"args": [], "slots": 1, "pool": None, "args_position": "append", "env": {}}


class RouteSpec(Record):
    """What one route (gpu or cpu) of a profile adds to the job and which slots it may take."""

    __slots__ = ("name", "args", "slots", "pool", "args_position", "env")
    name: str
    args: tuple[str, ...]
    slots: int
    pool: str
    args_position: str
    env: dict[str, str]


class Profile(Record):
    """The rules for one kind of job."""

    __slots__ = ("name", "binary", "probe", "probe_command", "threshold", "threshold_text",
                 "input", "fallback", "wait_s", "gpu", "cpu")  # fmt: skip
    name: str
    binary: str | None
    probe: str | None
    probe_command: tuple[str, ...] | None
    threshold: float | None
    threshold_text: str | None
    input: str | int
    fallback: str
    wait_s: float  # 0 = fail fast, math.inf = block, else the bound in seconds
    gpu: RouteSpec
    cpu: RouteSpec

    def route(self, name: str) -> RouteSpec:
        """The gpu or cpu route spec."""
        return self.gpu if name == "gpu" else self.cpu


class Settings(Record):
    """The effective, validated configuration."""

    __slots__ = ("path", "lock_dir", "journal", "busy_exit_code", "ffprobe", "probe_timeout_s",
                 "probe_cache", "profiles", "sources")  # fmt: skip
    path: str | None
    lock_dir: str
    journal: str | None
    busy_exit_code: int
    ffprobe: str
    probe_timeout_s: float
    probe_cache: bool
    profiles: dict[str, Profile]
    sources: dict[str, str]  # dotted key -> file that set it (absent = built-in)

    def profile(self, name: str) -> Profile:
        """The named profile, or the defaults under that name when it is not configured."""
        found = self.profiles.get(name)
        if found is not None:
            return found
        default = self.profiles.get("default") or _build_profile("default", {}, BUILTIN)
        return default.replace(name=name)


# ---------------------------------------------------------------- finding and reading


def find_config(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The config file to use, or None for the built-in defaults.

    Raises:
        ConfigError: a file named by `--config` or `$GPUROUTER_CONFIG` does not exist.
    """
    env = os.environ if environ is None else environ
    for named, origin in ((explicit, "--config"), (env.get("GPUROUTER_CONFIG"), "GPUROUTER_CONFIG")):
        if named:
            if not os.path.exists(named):
                raise ConfigError(named, "", f"no such file (named by {origin})")
            return named
    xdg = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or "/nonexistent", ".config")
    for candidate in (os.path.join(xdg, "gpurouter", "config.toml"), "/etc/gpurouter/config.toml"):
        if os.path.exists(candidate):
            return candidate
    return None


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
    from gpurouter import _memo

    try:
        # O_NONBLOCK: a FIFO planted under the config name must not hang us.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as error:
        raise ConfigError(path, "", f"cannot read: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not _is_regular(info.st_mode):
            raise ConfigError(path, "", "not a regular file")
        identity = (os.path.abspath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
                    info.st_ctime_ns)  # fmt: skip
        cached = _memo.recall("config", identity, environ)
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
    _memo.remember("config", identity, document, environ)
    return document


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


# ---------------------------------------------------------------- validation


def validate(document: Mapping[str, Any], source: str, path: str | None) -> Settings:
    """Turn a parsed TOML document into `Settings`, or raise `ConfigError` naming the key.

    Raises:
        ConfigError: a key is unknown or a value has the wrong type or form.
    """
    _check_keys(document, set(DEFAULTS) | {"profiles"}, "", source)
    merged = {**DEFAULTS, **{k: v for k, v in document.items() if k != "profiles"}}
    sources = {key: source for key in document if key != "profiles"}

    lock_dir = _string(merged, "lock_dir", "", source)
    journal = merged.get("journal")
    if journal is not None and not isinstance(journal, str):
        raise ConfigError(source, "journal", f"must be a path string (\"\" turns the journal off), got {journal!r}")
    busy = merged["busy_exit_code"]
    if isinstance(busy, bool) or not isinstance(busy, int) or not 1 <= busy <= 255:
        raise ConfigError(source, "busy_exit_code", f"must be an integer from 1 to 255, got {busy!r}")
    probe_cache = merged["probe_cache"]
    if not isinstance(probe_cache, bool):
        raise ConfigError(source, "probe_cache", f"must be true or false, got {probe_cache!r}")
    timeout_s = _duration(merged, "probe_timeout", "", source)
    if timeout_s <= 0:
        raise ConfigError(source, "probe_timeout", "must be longer than 0s")

    raw_profiles = document.get("profiles", {})
    if not isinstance(raw_profiles, dict):
        raise ConfigError(source, "profiles", "must be a table of [profiles.NAME] tables")
    profiles = {}
    for name, table in raw_profiles.items():
        if not isinstance(table, dict):
            raise ConfigError(source, f"profiles.{name}", "must be a table")
        if not name or "/" in name or "\0" in name:
            raise ConfigError(source, f"profiles.{name}", "a profile name must be a non-empty command name")
        profiles[name] = _build_profile(name, table, source)
        sources.update(_key_sources(table, f"profiles.{name}", source))
    return Settings(
        path=path,
        lock_dir=lock_dir,
        journal=journal or None,
        busy_exit_code=busy,
        ffprobe=_string(merged, "ffprobe", "", source),
        probe_timeout_s=timeout_s,
        probe_cache=probe_cache,
        profiles=profiles,
        sources=sources,
    )


def _key_sources(table: Mapping[str, Any], prefix: str, source: str) -> dict[str, str]:
    found = {}
    for key, value in table.items():
        if isinstance(value, dict) and key in ROUTES:
            found.update(_key_sources(value, f"{prefix}.{key}", source))
        else:
            found[f"{prefix}.{key}"] = source
    return found


def _build_profile(name: str, table: Mapping[str, Any], source: str) -> Profile:
    where = f"profiles.{name}"
    _check_keys(table, set(PROFILE_DEFAULTS) | set(ROUTES), where, source)
    merged = {**PROFILE_DEFAULTS, **table}

    binary = merged["binary"]
    if binary is not None and (not isinstance(binary, str) or not binary):
        raise ConfigError(source, f"{where}.binary", f"must be a path string, got {binary!r}")
    probe = merged["probe"]
    if probe is not None and probe not in PROBES:
        raise ConfigError(source, f"{where}.probe", f"must be one of {', '.join(PROBES)}, got {probe!r}")
    probe_command = merged["probe_command"]
    if probe == "command":
        if not isinstance(probe_command, list) or not probe_command or \
                not all(isinstance(a, str) and a for a in probe_command):
            raise ConfigError(source, f"{where}.probe_command",
                              'probe = "command" needs probe_command = ["program", "arg", ...]')
        probe_command = tuple(probe_command)
    elif probe_command is not None:
        raise ConfigError(source, f"{where}.probe_command", 'only used with probe = "command"')

    threshold_text = merged["threshold"]
    threshold = None
    if probe is None and threshold_text is not None:
        raise ConfigError(source, f"{where}.threshold", "has no effect without a probe; set probe too")
    if probe is not None:
        if threshold_text is None:
            raise ConfigError(source, f"{where}.threshold", f"is required with probe = {probe!r}")
        try:
            threshold = units.parse_threshold(threshold_text, probe)
        except ValueError as error:
            raise ConfigError(source, f"{where}.threshold", str(error)) from None
        threshold_text = str(threshold_text)

    input_rule = merged["input"]
    if isinstance(input_rule, bool) or not isinstance(input_rule, (str, int)) or input_rule == "":
        raise ConfigError(source, f"{where}.input",
                          f'must be "last", "first", an argument index or a flag like "--input", got {input_rule!r}')
    if isinstance(input_rule, str) and input_rule not in ("last", "first") and not input_rule.startswith("-"):
        raise ConfigError(source, f"{where}.input",
                          f'must be "last", "first", an argument index or a flag like "--input", got {input_rule!r}')

    fallback = merged["fallback"]
    if fallback not in FALLBACKS:
        raise ConfigError(source, f"{where}.fallback", f"must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    try:
        wait_s = parse_wait(merged["wait"])
    except ValueError as error:
        raise ConfigError(source, f"{where}.wait", str(error)) from None

    routes = {route: _build_route(route, table.get(route, {}), f"{where}.{route}", source) for route in ROUTES}
    return Profile(
        name=name, binary=binary, probe=probe, probe_command=probe_command, threshold=threshold,
        threshold_text=threshold_text, input=input_rule, fallback=fallback, wait_s=wait_s,
        gpu=routes["gpu"], cpu=routes["cpu"],
    )  # fmt: skip


def _build_route(name: str, table: object, where: str, source: str) -> RouteSpec:
    if not isinstance(table, dict):
        raise ConfigError(source, where, "must be a table")
    _check_keys(table, set(ROUTE_DEFAULTS), where, source)
    merged = {**ROUTE_DEFAULTS, **table}
    args = merged["args"]
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ConfigError(source, f"{where}.args", f"must be a list of strings, got {args!r}")
    slots = merged["slots"]
    if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= 1024:
        raise ConfigError(source, f"{where}.slots", f"must be an integer from 1 to 1024, got {slots!r}")
    pool = merged["pool"] if merged["pool"] is not None else name
    if not isinstance(pool, str) or not is_safe_name(pool):
        raise ConfigError(source, f"{where}.pool",
                          f"must be a name of letters, digits, '-' and '_', got {merged['pool']!r}")
    position = merged["args_position"]
    if position not in ARGS_POSITIONS:
        raise ConfigError(source, f"{where}.args_position", f"must be append or prepend, got {position!r}")
    env = merged["env"]
    if not isinstance(env, dict) or not all(isinstance(v, str) and k and "=" not in k for k, v in env.items()):
        raise ConfigError(source, f"{where}.env", f"must be a table of NAME = \"value\" strings, got {env!r}")
    return RouteSpec(name=name, args=tuple(args), slots=slots, pool=pool, args_position=position, env=dict(env))


def is_safe_name(name: str) -> bool:
    """A pool name usable as a file name prefix: letters, digits, '-', '_' (1-64 chars)."""
    return 0 < len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)


def parse_wait(value: object) -> float:
    """`fail` -> 0, `block` -> inf, a duration -> seconds.

    Raises:
        ValueError: anything else.
    """
    if value == "fail":
        return 0.0
    if value == "block":
        return math.inf
    if isinstance(value, str):
        try:
            return units.parse_duration(value)
        except ValueError as error:
            raise ValueError(f'must be "fail", "block" or a duration like "10m": {error}') from None
    raise ValueError(f'must be "fail", "block" or a duration like "10m", got {value!r}')


def format_wait(wait_s: float) -> str:
    """The inverse of `parse_wait`."""
    if wait_s == 0:
        return "fail"
    if math.isinf(wait_s):
        return "block"
    return units.format_duration(wait_s)


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str, source: str) -> None:
    for key in table:
        if key not in allowed:
            dotted = f"{where}.{key}" if where else key
            raise ConfigError(source, dotted, f"unknown key (known here: {', '.join(sorted(allowed))})")


def _string(table: Mapping[str, Any], key: str, where: str, source: str) -> str:
    value = table[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(source, f"{where}.{key}" if where else key, f"must be a non-empty string, got {value!r}")
    return value


def _duration(table: Mapping[str, Any], key: str, where: str, source: str) -> float:
    value = table[key]
    dotted = f"{where}.{key}" if where else key
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(source, dotted, f"must be a duration like \"20s\", got {value!r}")
    try:
        return units.parse_duration(str(value))
    except ValueError as error:
        raise ConfigError(source, dotted, str(error)) from None
