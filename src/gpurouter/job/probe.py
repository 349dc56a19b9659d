"""Measure a job's input: duration, size, pixels, or a number printed by a user command.

Duration and pixels are read natively from the container header where that is exact
(see `media.py`: ~0.1 ms instead of ~100 ms for ffprobe); everything else goes to ffprobe,
run with a timeout, given `file:` + the absolute path so that names like `-x.wav`,
`a|b.wav` or `http:x` are plain local files, and never an option or URL from the job's
arguments. ffprobe and command results are cached per input identity (`probecache.py`).
"""

from __future__ import annotations

import os
import stat

from gpurouter.job import probe_cache
from gpurouter.job.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Literal

    MetricKind = Literal["duration", "size", "pixels", "number"]

    from gpurouter.job.settings import Profile, Settings

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY  # a FIFO input must not hang us
KIND_OF_PROBE: dict[str, MetricKind] = {
    "duration": "duration",
    "size": "size",
    "pixels": "pixels",
    "command": "number",
}


class ProbeResult(Record):
    """What a probe found: a metric, or why there is none."""

    __slots__ = ("input", "metric", "kind", "via", "problem")
    input: str | None
    metric: float | None
    kind: MetricKind | None
    via: str | None  # native:wav, ffprobe, cache, stat, command
    problem: str | None  # why there is no metric


def select_input(args: Sequence[str], rule: str | int) -> tuple[str | None, str | None]:
    """The job's input path per the profile's `input` rule, or (None, why not).

    Args:
        args: the job's arguments (without the command itself).
        rule: "last" / "first" existing regular file, an index into `args`, or a flag
            such as "--input" (its value, `--input VALUE` or `--input=VALUE`; the first one
            wins: ffmpeg's first `-i` is its main input, later ones are overlays and subtitles).
    """
    value_at, _, why_not = locate_input(args, rule)
    if value_at is None:
        return None, why_not
    arg = args[value_at]
    if isinstance(rule, str) and rule not in ("last", "first") and arg != rule and arg.startswith(rule + "="):
        return arg[len(rule) + 1 :], None
    return arg, None


def locate_input(args: Sequence[str], rule: str | int) -> tuple[int | None, int | None, str | None]:
    """Where the job's input is in `args`: (index of its value, index to insert input options before, None),
    or (None, None, why not). The one selection that the probe and `input_args` placement share.

    The insertion index is the flag's own for `--input VALUE` (options go before the flag that
    introduces the input), else the input argument's.
    """
    if rule in ("last", "first"):
        positions = range(len(args) - 1, -1, -1) if rule == "last" else range(len(args))
        for position in positions:
            if args[position] and _is_regular_file(args[position]):
                return position, position, None
        return None, None, "no existing input file among the arguments"
    if isinstance(rule, int):
        position = rule + len(args) if rule < 0 else rule
        if 0 <= position < len(args):
            return position, position, None
        return None, None, f"the job has no argument {rule}"
    for position, arg in enumerate(args):
        if arg == rule and position + 1 < len(args):
            return position + 1, position, None
        if arg.startswith(rule + "="):
            return position, position, None
    return None, None, f"no {rule} argument"


def _is_regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def probe_file(
    path: str, probe: str, settings: Settings, probe_command: tuple[str, ...] | None = None
) -> ProbeResult:
    """Measure one input file with one probe; never raises for a bad input."""
    kind = KIND_OF_PROBE[probe]

    def failed(problem: str, via: str | None = None) -> ProbeResult:
        return ProbeResult(input=path, metric=None, kind=kind, via=via, problem=problem)

    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError) as error:
        return failed(f"cannot open {path!r}: {getattr(error, 'strerror', None) or error}")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            from gpurouter.job.fsutil import describe_mode

            return failed(f"{path!r} is {describe_mode(info.st_mode)}, not a regular file")
        if probe == "size":
            return ProbeResult(input=path, metric=float(info.st_size), kind=kind, via="stat", problem=None)
        if info.st_size == 0:
            return failed(f"{path!r} is empty")
        if probe in ("duration", "pixels"):
            native = _native(fd, info.st_size, probe)
            if native is not None:
                return ProbeResult(input=path, metric=native[0], kind=kind, via=native[1], problem=None)
    finally:
        os.close(fd)

    cache_name = probe_cache.entry_name(probe, info, probe_command) if settings.probe_cache else None
    if cache_name:
        hit = probe_cache.recall(settings.lock_dir, cache_name)
        if hit is not None:
            metric, note = hit
            return ProbeResult(
                input=path,
                metric=metric,
                kind=kind,
                via="cache",
                problem=None if metric is not None else note,
            )
    if probe == "command":
        assert probe_command is not None
        metric, problem, lasting = _run_command_probe(probe_command, path, settings.probe_timeout_s)
        via = "command"
    else:
        metric, problem, lasting = _run_ffprobe(path, probe, settings)
        via = "ffprobe"
    if cache_name and lasting:
        probe_cache.remember(settings.lock_dir, cache_name, metric, problem or via)
    return ProbeResult(input=path, metric=metric, kind=kind, via=via, problem=problem)


def _native(fd: int, size: int, probe: str) -> tuple[float, str] | None:
    try:
        from gpurouter.job.media import read_media_info
    except ImportError:  # pragma: no cover - media.py ships with the package
        return None
    info = read_media_info(fd, size)
    if info is None:
        return None
    if probe == "duration" and info.duration_s is not None:
        return float(info.duration_s), f"native:{info.container}"
    if probe == "pixels" and info.width and info.height:
        return float(info.width * info.height), f"native:{info.container}"
    return None


def _run_ffprobe(path: str, probe: str, settings: Settings) -> tuple[float | None, str | None, bool]:
    """(metric, problem, whether the outcome is worth caching)."""
    from gpurouter.job.execute import find_executable

    ffprobe = find_executable(settings.ffprobe)
    if ffprobe is None:
        return None, f"ffprobe not found ({settings.ffprobe!r} is not on PATH)", False
    # Compact sections ("stream|codec_type=video|width=320|...", "format|duration=2.0") rather than
    # JSON: `import json` pulls in `re`, several ms on a path that is already ffprobe-bound.
    argv = [
        ffprobe,
        "-v",
        "error",
        "-protocol_whitelist",
        "file",
        "-show_entries",
        "format=duration:stream=codec_type,width,height,duration:stream_disposition=attached_pic",
        "-of",
        "compact=p=1",
        "file:" + os.path.abspath(path),
    ]
    output, problem = _run_bounded(argv, settings.probe_timeout_s, "ffprobe")
    if output is None:
        return None, problem, problem is not None and "timed out" not in problem and "exit" in problem
    sections = _compact_sections(output)
    if sections is None:
        return None, "ffprobe printed something that is not its report", False
    streams = [fields for name, fields in sections if name == "stream"]
    if probe == "pixels":
        for stream in streams:
            cover_art = stream.get("disposition:attached_pic") == "1"  # cover art is not a video stream
            width, height = stream.get("width", ""), stream.get("height", "")
            numeric = (width + height).isascii() and width.isdigit() and height.isdigit()
            if (
                stream.get("codec_type") == "video"
                and not cover_art
                and numeric
                and int(width)
                and int(height)
            ):
                return float(int(width) * int(height)), None, True
        return None, f"{path!r} has no video stream", True
    durations = [fields.get("duration") for name, fields in sections if name == "format"]
    durations += [stream.get("duration") for stream in streams]
    values = []
    for text in durations:
        try:
            value = float(text or "nan")
        except ValueError:
            continue
        if value == value and 0 <= value < float("inf"):
            values.append(value)
    if not values:
        return None, f"ffprobe found no duration in {path!r}", True
    return values[0], None, True


def _compact_sections(output: str) -> list[tuple[str, dict[str, str]]] | None:
    """Parse ffprobe's `-of compact=p=1` output; None if it is not that."""
    sections = []
    for line in output.splitlines():
        if not line.strip():
            continue
        name, *pairs = line.split("|")
        if name not in ("stream", "format") or not all("=" in pair for pair in pairs):
            return None
        sections.append((name, dict(pair.split("=", 1) for pair in pairs)))
    return sections


def _run_command_probe(
    command: tuple[str, ...], path: str, timeout_s: float
) -> tuple[float | None, str | None, bool]:
    from gpurouter.job.execute import find_executable

    program = find_executable(command[0])
    if program is None:
        return None, f"probe command {command[0]!r} not found", False
    # The input is one argv element (never through a shell): '{}' marks its place, else it goes last.
    # A relative name goes as ./name (issue 12): an input called `--files0-from=list` or `http:x`
    # is a file, never an option or a URL to the probe command.
    path = path if os.path.isabs(path) else os.path.join(os.curdir, path)
    argv = [program] + [path if arg == "{}" else arg for arg in command[1:]]
    if "{}" not in command[1:]:
        argv.append(path)
    output, problem = _run_bounded(argv, timeout_s, "probe command")
    if output is None:
        return None, problem, False
    words = output.split()
    try:
        metric = float(words[0]) if words else float("nan")
    except ValueError:
        metric = float("nan")
    if not (metric == metric and 0 <= metric < float("inf")):
        return None, f"probe command printed {output[:60].strip()!r}, not a number >= 0", True
    return metric, None, True


_MAX_OUTPUT = 1 << 20  # ffprobe's JSON for one file is a few KiB: a helper printing more is broken
_LONGEST_TIMEOUT_S = 1e9  # the clocks under subprocess overflow near 9.2e9 s (an OverflowError, not a wait)


def _run_bounded(argv: list[str], timeout_s: float, what: str) -> tuple[str | None, str | None]:
    """Run a helper with a timeout and a cap on what it prints: (stdout, None) or (None, problem).

    posix_spawn + poll rather than `subprocess`: its import costs ~10 ms, a tenth of an ffprobe call.
    The helper dies with gpurouter (issue 12: a SIGTERM or Ctrl-C during a slow probe left it
    running past probe_timeout): SIGINT, SIGTERM and SIGHUP kill its process group before
    gpurouter goes, and a kill -9 of gpurouter reaches it through PR_SET_PDEATHSIG (setpriv).
    """
    import time

    # Why not capture everything: an ffprobe that loops printing garbage fills gigabytes before
    # the timeout (2 GB in 2 s). Why the clamp: probe_timeout = "99999999999d" passed validation,
    # then overflowed here.
    timeout_s = min(timeout_s, _LONGEST_TIMEOUT_S)
    deadline = time.monotonic() + timeout_s
    opened: list[int] = []
    previous = _catch_fatal_signals()
    try:
        try:
            # Every descriptor inside the try: under `ulimit -n` a pipe fails with EMFILE (issue 12).
            out_read, out_write = _pipe(opened)
            err_read, err_write = _pipe(opened)
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            opened.append(devnull)
            # Its own process group (setpgroup=0): on a timeout its children go too (a wrapper's
            # hung ffprobe).
            pid = os.posix_spawn(
                *_dying_with_us(argv),
                dict(os.environ),
                setpgroup=0,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, devnull, 0),
                    (os.POSIX_SPAWN_DUP2, out_write, 1),
                    (os.POSIX_SPAWN_DUP2, err_write, 2),
                ],
            )
        except OSError as error:
            for fd in opened:
                os.close(fd)
            return None, f"{what} could not run: {error.strerror or error}"
        for fd in (devnull, out_write, err_write):
            os.close(fd)
            opened.remove(fd)
        try:
            return _collect(pid, out_read, err_read, opened, deadline, timeout_s, what)
        finally:
            for fd in opened:
                os.close(fd)
            _reap(pid)  # a no-op when _collect waited for it; else (a signal, an error) it dies now
    except _FatalSignal as fatal:
        # The helper is dead (the finally above): now die of the signal, as gpurouter did before.
        import _signal  # type: ignore[import-not-found]

        _signal.signal(fatal.number, _signal.SIG_DFL)
        previous.pop(fatal.number, None)
        os.kill(os.getpid(), fatal.number)
        raise SystemExit(128 + fatal.number) from None  # not reached: the signal ends the process
    finally:
        _restore_signals(previous)


def _pipe(opened: list[int]) -> tuple[int, int]:
    read_end, write_end = os.pipe()
    opened += (read_end, write_end)
    return read_end, write_end


def _collect(
    pid: int, out_read: int, err_read: int, opened: list[int], deadline: float, timeout_s: float, what: str
) -> tuple[str | None, str | None]:
    """Read the helper's output until it exits, the deadline passes or it prints too much."""
    import select
    import time

    chunks: dict[int, list[bytes]] = {out_read: [], err_read: []}
    try:
        pidfd = os.pidfd_open(pid)  # readable when the helper exits: no polling for its end either
    except OSError as error:
        return None, f"{what} could not be watched: {error.strerror or error}"
    opened.append(pidfd)
    poller = select.poll()
    for fd in (*chunks, pidfd):
        poller.register(fd, select.POLLIN)
    waiting, total, problem = {out_read, err_read, pidfd}, 0, None
    while waiting and problem is None:
        left = deadline - time.monotonic()
        if left <= 0:
            problem = "timed out"
            break
        for fd, _ in poller.poll(min(left, 60.0) * 1000):
            data = b"" if fd == pidfd else os.read(fd, 1 << 16)
            if not data:
                poller.unregister(fd)
                waiting.discard(fd)
                continue
            chunks[fd].append(data)
            total += len(data)
            if total > _MAX_OUTPUT:
                problem = f"printed more than {_MAX_OUTPUT >> 20} MiB (not a probe's output)"
    if problem is not None:
        return (
            None,
            f"{what} timed out after {timeout_s:g}s" if problem == "timed out" else f"{what} {problem}",
        )
    status = os.waitpid(pid, 0)[1]
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        # Why apart from the exit below: a helper killed by a signal (the OOM killer, a crash)
        # says nothing lasting about the input, and "exit" outcomes are cached per input.
        return None, f"{what} was killed by signal {-code}"
    if code != 0:
        tail = b"".join(chunks[err_read]).decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return None, f"{what} failed (exit {code}): {tail[0][:200]}"
    return b"".join(chunks[out_read]).decode("utf-8", "replace"), None


def _reap(pid: int) -> None:
    """Kill the helper's process group unless it has been waited for already, then wait for it."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return
    except ChildProcessError:
        return  # _collect waited for it
    try:
        os.killpg(pid, 9)
    except OSError:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


_SETPRIV_PATHS = ("/usr/bin/setpriv", "/bin/setpriv")


def _dying_with_us(argv: list[str]) -> tuple[str, list[str]]:
    """(path, argv) that runs `argv` with PR_SET_PDEATHSIG = SIGKILL, via util-linux setpriv when present.

    Why setpriv: posix_spawn cannot call prctl in the child, and fork + ctypes costs more than the
    ~1 ms of one more exec on a path that already waits ~100 ms for ffprobe. Without setpriv, a
    kill -9 of gpurouter leaves the helper to finish (or to die of SIGPIPE when it prints).
    """
    for setpriv in _SETPRIV_PATHS:
        if os.access(setpriv, os.X_OK):
            return setpriv, [setpriv, "--pdeathsig", "KILL", "--", *argv]
    return argv[0], argv


class _FatalSignal(BaseException):
    """A SIGTERM or SIGHUP that arrived while a helper ran: kill it, then die of the signal."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.number = number


def _catch_fatal_signals() -> dict[int, object]:
    """Turn SIGTERM and SIGHUP into _FatalSignal while a helper runs (SIGINT is KeyboardInterrupt already)."""
    import _signal  # the C module: `signal` imports enum (~3 ms)

    def on_signal(number: int, frame: object) -> None:
        raise _FatalSignal(number)

    previous: dict[int, object] = {}
    for number in (_signal.SIGTERM, _signal.SIGHUP):
        try:
            if _signal.getsignal(number) == _signal.SIG_DFL:  # a caller's own handler (library use) is kept
                previous[number] = _signal.signal(number, on_signal)
        except (OSError, ValueError):  # not the main thread (library use from a thread): leave them
            pass
    return previous


def _restore_signals(previous: dict[int, object]) -> None:
    import _signal

    for number, handler in previous.items():
        _signal.signal(number, handler)


def probe_job(profile: Profile, args: Sequence[str], settings: Settings) -> ProbeResult | None:
    """Pick the input per the profile and probe it; None when the profile has no probe."""
    if profile.probe is None:
        return None
    path, why_not = select_input(args, profile.input)
    if path is None:
        return ProbeResult(
            input=None, metric=None, kind=KIND_OF_PROBE[profile.probe], via=None, problem=why_not
        )
    return probe_file(path, profile.probe, settings, profile.probe_command)
