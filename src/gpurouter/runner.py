"""One wrapped call: resolve → probe → route → slot → journal → exec.

Everything on this path is stdlib and imported lazily where it is rare, because it runs
in front of every job (see docs/performance.md).
"""

from __future__ import annotations

import os
import sys

from gpurouter import journal, probe, route, slots
from gpurouter._record import Record
from gpurouter.config import ROUTES, format_wait
from gpurouter.errors import GpurouterError, NoFreeSlot, NotExecutable, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping, NoReturn, Sequence

    from gpurouter.config import Profile, Settings

HELD_VAR = "GPUROUTER_HELD"
SKIP_VAR = "GPUROUTER_SKIP_LOCK"


class Decision(Record):
    """Everything decided for one job before a slot is taken."""

    __slots__ = ("profile", "route", "reason", "metric", "kind", "via", "input", "executable", "argv",
                 "pool", "slots", "wait_s", "env", "no_slot_because", "spec")  # fmt: skip
    profile: str
    route: str
    reason: str
    metric: float | None
    kind: str | None
    via: str | None
    input: str | None
    executable: str
    argv: list[str]
    pool: str
    slots: int
    wait_s: float
    env: dict[str, str]  # variables the job gets on top of the caller's environment
    no_slot_because: str | None  # GPUROUTER_SKIP_LOCK or a held pool: take no slot

    def summary(self) -> dict[str, Any]:
        """The decision as JSON-ready data (for `route --json` and the journal)."""
        return {
            "profile": self.profile, "route": self.route, "reason": self.reason, "metric": self.metric,
            "kind": self.kind, "via": self.via, "input": self.input, "executable": self.executable,
            "argv": self.argv, "pool": self.pool, "slots": self.slots, "wait": format_wait(self.wait_s),
            "env": self.env, "slot": None if self.no_slot_because else "pending",
            "no_slot_because": self.no_slot_because,
        }  # fmt: skip


def held_pools(environ: Mapping[str, str]) -> list[str]:
    """Pools an ancestor holds, from GPUROUTER_HELD ('gpu,cpu')."""
    return [p for p in environ.get(HELD_VAR, "").split(",") if p]


def forced_route(option: str | None, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(route, who forced it) from `--route` or GPUROUTER_ROUTE.

    Raises:
        UsageError: a value other than gpu or cpu.
    """
    for value, origin in ((option, "--route"), (environ.get("GPUROUTER_ROUTE"), "GPUROUTER_ROUTE")):
        if value:
            if value not in ROUTES:
                raise UsageError(f"{origin} must be gpu or cpu, got {value!r}")
            return value, origin
    return None, None


def decide(settings: Settings, profile: Profile, argv: Sequence[str], executable: str,
           forced: tuple[str | None, str | None] = (None, None),
           environ: Mapping[str, str] | None = None) -> Decision:  # fmt: skip
    """Probe and route one job; takes nothing and runs nothing.

    Raises:
        ProbeRefused: no metric under `fallback = "fail"`.
    """
    env_in = os.environ if environ is None else environ
    result = None if forced[0] else probe.probe_job(profile, argv[1:], settings)
    chosen = route.choose_route(profile, result, *forced)
    spec = chosen.spec
    no_slot = None
    if env_in.get(SKIP_VAR, "") not in ("", "0"):
        no_slot = f"{SKIP_VAR}={env_in[SKIP_VAR]}"
    elif spec.pool in held_pools(env_in):
        no_slot = f"pool {spec.pool!r} is held by a parent gpurouter ({HELD_VAR})"
    env = {k: v for k, v in spec.env.items() if k not in env_in}  # the caller's explicit setting wins
    return Decision(
        profile=profile.name, route=chosen.name, reason=chosen.reason,
        metric=None if result is None else result.metric, kind=None if result is None else result.kind,
        via=None if result is None else result.via, input=None if result is None else result.input,
        executable=executable, argv=route.job_argv(argv, spec), pool=spec.pool, slots=spec.slots,
        wait_s=profile.wait_s, env=env, no_slot_because=no_slot, spec=spec,
    )  # fmt: skip


def run(settings: Settings, decision: Decision, environ: Mapping[str, str] | None = None,
        verbose: bool = False) -> NoReturn:  # fmt: skip
    """Take the decision's slot, journal the start, and exec the job.

    Raises:
        NoFreeSlot: no slot (the caller exits with busy_exit_code); a `busy` record is written.
        LockDirError, CommandNotFound, NotExecutable: see their exit codes.
    """
    from gpurouter import execute

    env = dict(os.environ if environ is None else environ)
    record = {"profile": decision.profile, "route": decision.route, "metric": decision.metric,
              "reason": decision.reason, "pid": os.getpid(), "argv": decision.argv, "pool": decision.pool,
              "kind": decision.kind, "via": decision.via, "input": decision.input, "uid": os.getuid()}  # fmt: skip
    held = None
    if decision.no_slot_because is None:

        def announce_wait() -> None:
            journal.append_record(settings.journal, "wait", **record, wait=format_wait(decision.wait_s))
            if verbose:
                _say(f"waiting for a {decision.pool} slot ({format_wait(decision.wait_s)})")

        try:
            held = slots.acquire_slot(settings.lock_dir, decision.pool, decision.slots, decision.wait_s,
                                      on_wait=announce_wait)  # fmt: skip
        except NoFreeSlot as busy:
            journal.append_record(settings.journal, "busy", **record, waited_s=round(busy.waited_s, 3))
            raise
        env[HELD_VAR] = ",".join([*held_pools(env), decision.pool])
    env.update(decision.env)
    journal.append_record(settings.journal, "start", **record,
                          slot=held.name if held else None, waited_s=round(held.waited_s, 3) if held else 0.0,
                          no_slot_because=decision.no_slot_because)  # fmt: skip
    if verbose:
        _say(f"{decision.route} ({decision.reason}), slot {held.name if held else 'none'}")
    execute.exec_command(decision.executable, decision.argv, env, held)


def intercept_target(argv0: str, profile: Profile, environ: Mapping[str, str] | None = None) -> str:
    """The real binary for the interception form: the profile's `binary`, else NAME-real beside the link.

    Raises:
        CommandNotFound / NotExecutable: missing, not executable, or gpurouter itself (a loop).
    """
    from gpurouter.execute import find_executable, resolve_command

    env = os.environ if environ is None else environ
    name = os.path.basename(argv0)
    link = argv0 if "/" in argv0 else (find_executable(name, env.get("PATH")) or name)
    target = profile.binary or os.path.join(os.path.dirname(os.path.abspath(link)), f"{name}-real")
    target = resolve_command(target, env.get("PATH"))
    # Never exec ourselves: a NAME-real (or binary) that resolves back to this launcher would
    # loop forever, re-taking slots each time.
    if os.path.realpath(target) in {os.path.realpath(link), os.path.realpath(sys.argv[0] or link)}:
        raise NotExecutable(target, f"resolves to gpurouter itself (a loop): rename the real {name} to {target}")
    return target


def _say(message: str) -> None:
    sys.stderr.write(f"gpurouter: {message}\n")


def error_line(error: GpurouterError) -> str:
    """The one line a user sees for an error."""
    return f"gpurouter: {error}"
