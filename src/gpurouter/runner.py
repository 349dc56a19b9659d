"""One wrapped call: resolve → probe → route → slot → journal → exec.

Everything on this path is stdlib and imported lazily where it is rare, because it runs
in front of every job (see docs/design.md).
"""

from __future__ import annotations

import os
import sys

from gpurouter import guard, journal, priority, probe, route, slots
from gpurouter._record import Record
from gpurouter.config import ROUTES, format_wait
from gpurouter.errors import ExecFailed, NoFreeSlot, NotExecutable, ProbeRefused, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping, NoReturn, Sequence

    from gpurouter.config import Profile, RouteSpec, Settings
    from gpurouter.devices import Placement
    from gpurouter.slots import Slot

HELD_VAR = "GPUROUTER_HELD"
ROUTED_VAR = "GPUROUTER_ROUTED"  # the profile a parent gpurouter already routed (its args are in argv)
SKIP_VAR = "GPUROUTER_SKIP_LOCK"


class Decision(Record):
    """Everything decided for one job before a slot is taken."""

    __slots__ = ("profile", "route", "reason", "metric", "kind", "via", "input", "executable", "argv",
                 "pool", "slots", "wait_s", "env", "no_slot_because", "spec", "rules", "action",
                 "base_argv", "need_mib", "gpu_count")  # fmt: skip
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
    spec: RouteSpec
    rules: Profile
    action: str  # run | busy | fail | wait-window (see route.py)
    base_argv: list[str]  # the job's argv before route args
    need_mib: int | None  # device mode: VRAM per device (None: not device-aware)
    gpu_count: int | None  # device mode: devices per job (None: not device-aware)

    @property
    def device_mode(self) -> bool:
        """Does this GPU job pick devices by free VRAM (vram_mib or gpus configured)?"""
        return self.route == "gpu" and self.gpu_count is not None

    def summary(self) -> dict[str, Any]:
        """The decision as JSON-ready data (for `route --json` and the journal)."""
        return {
            "profile": self.profile, "route": self.route, "reason": self.reason, "metric": self.metric,
            "kind": self.kind, "via": self.via, "input": self.input, "executable": self.executable,
            "argv": self.argv, "pool": self.pool, "slots": self.slots, "wait": format_wait(self.wait_s),
            "env": self.env, "action": self.action, "priority": self.rules.priority,
            "gpus": self.gpu_count, "vram_mib": self.need_mib,
            "slot": None if self.no_slot_because else "pending", "no_slot_because": self.no_slot_because,
        }  # fmt: skip


def routed_value(profile: str, route_name: str, command: str) -> str:
    """GPUROUTER_ROUTED for a job: 'PROFILE:ROUTE:COMMAND-NAME'."""
    return f"{profile}:{route_name}:{os.path.basename(command)}"


def parse_routed(value: str) -> tuple[str, str, str]:
    """(profile, route, command name) from GPUROUTER_ROUTED; empty strings when absent or foreign."""
    for route_name in ROUTES:  # split at the route: profile names may hold ':' themselves
        profile, marker, command = value.partition(f":{route_name}:")
        if marker:
            return profile, route_name, command
    return "", "", ""


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


def gpu_problem(settings: Settings, environ: Mapping[str, str]) -> str | None:
    """Why no GPU is usable on this box, or None (queries NVML or the device file)."""
    if not settings.gpu.enabled:
        return "gpu.enabled = false"
    from gpurouter import nvml  # deferred: only profiles that ask about the GPU pay for it

    query = nvml.query_gpus(environ)
    if not query.gpus:
        return query.message or "no GPU found"
    return None


def decide(settings: Settings, profile: Profile, argv: Sequence[str], executable: str,
           forced: tuple[str | None, str | None] = (None, None),
           environ: Mapping[str, str] | None = None, intercepted: bool = False) -> Decision:  # fmt: skip
    """Probe and route one job; takes nothing and runs nothing.

    Raises:
        ProbeRefused: no metric under `fallback = "fail"`.
    """
    env_in = os.environ if environ is None else environ
    parent_profile, parent_route, parent_command = parse_routed(env_in.get(ROUTED_VAR, ""))
    if intercepted and parent_profile == profile.name and parent_command == os.path.basename(argv[0]):
        # `gpurouter run -- NAME` where NAME is itself an intercepting link: the parent already
        # probed, added the route args and holds the slot. Only the interception form passes
        # through; a nested `gpurouter run` routes as usual (and takes no slot of a held pool).
        return _pass_through(profile, argv, executable, parent_route or "gpu")
    result = None if forced[0] else probe.probe_job(profile, argv[1:], settings)
    if profile.threshold_text == "auto" and result is not None and result.metric is not None:
        from gpurouter import autotune  # deferred: only threshold = "auto" reads the fit and the GPUs

        threshold, why = autotune.threshold(settings, profile, env_in)
        if threshold is None:
            result = result.replace(metric=None, problem=why)  # no evidence yet: the profile's fallback
        else:
            profile = profile.replace(threshold=threshold)
    minute = None
    if profile.hours is not None:
        import time

        now = time.localtime()
        minute = now.tm_hour * 60 + now.tm_min
    chosen = route.choose_route(profile, result, *forced, minute_of_day=minute)
    if chosen.name == "gpu" and chosen.action == route.RUN and not forced[0] and settings.backend.kind == "local" \
            and (profile.no_gpu is not None or not settings.gpu.enabled):  # on Slurm the cluster knows the GPUs
        problem = gpu_problem(settings, env_in)
        if problem is not None:
            chosen = route.choose_route(profile, result, minute_of_day=minute, gpu_problem=problem)
    spec = chosen.spec
    no_slot = None
    if env_in.get(SKIP_VAR, "") not in ("", "0"):
        no_slot = f"{SKIP_VAR}={env_in[SKIP_VAR]}"
    elif spec.pool in held_pools(env_in):
        no_slot = f"pool {spec.pool!r} is held by a parent gpurouter ({HELD_VAR})"
    env = {k: v for k, v in spec.env.items() if k not in env_in}  # the caller's explicit setting wins
    env.update(guard.thread_env(spec.guard, env_in))
    need_mib, gpu_count = None, None
    if chosen.name == "gpu" and (spec.vram_mib is not None or spec.gpus is not None):
        from gpurouter import parallelism

        gpu_count, need_mib = parallelism.requirements(spec, argv[1:], settings.gpu)
        if any(p.startswith(spec.pool) for p in held_pools(env_in)):
            no_slot = no_slot or f"a {spec.pool} device is held by a parent gpurouter ({HELD_VAR})"
    return Decision(
        profile=profile.name, route=chosen.name, reason=chosen.reason,
        metric=None if result is None else result.metric, kind=None if result is None else result.kind,
        via=None if result is None else result.via, input=None if result is None else result.input,
        executable=executable, argv=route.job_argv(argv, spec), pool=spec.pool, slots=spec.slots,
        wait_s=profile.wait_s, env=env, no_slot_because=no_slot, spec=spec, rules=profile, action=chosen.action,
        base_argv=list(argv), need_mib=need_mib, gpu_count=gpu_count,
    )  # fmt: skip


def _pass_through(profile: Profile, argv: Sequence[str], executable: str, parent_route: str) -> Decision:
    """A nested call of a profile its parent gpurouter already routed (e.g. `run -- NAME` where NAME is
    itself an intercepting link): the parent probed, added the route args and holds the slot, so
    this call execs the real binary with the argv untouched."""
    return Decision(
        profile=profile.name, route=parent_route, reason=f"already routed by a parent gpurouter ({ROUTED_VAR})",
        metric=None, kind=None, via=None, input=None, executable=executable, argv=list(argv),
        pool=profile.route(parent_route).pool, slots=profile.route(parent_route).slots, wait_s=0.0, env={},
        no_slot_because="already routed by a parent gpurouter", spec=profile.route(parent_route), rules=profile,
        action=route.PASS,
        base_argv=list(argv), need_mib=None, gpu_count=None,
    )  # fmt: skip


class Held:
    """What `acquire` took for a job: slots (and devices), the env to add, the guard to apply."""

    __slots__ = ("decision", "slots", "extra_fds", "env", "guard", "escaped_after_s", "waited_s", "record",
                 "placement")  # fmt: skip

    def __init__(self, decision: Decision, record: dict[str, Any]) -> None:
        self.decision = decision
        self.slots: list[Slot] = []
        self.extra_fds: list[int] = []  # e.g. the realtime-running gate, held for the job's life
        self.env: dict[str, str] = {}
        self.guard = decision.spec.guard
        self.escaped_after_s: float | None = None
        self.waited_s = 0.0
        self.record = record
        self.placement: Placement | None = None

    @property
    def fds(self) -> list[int]:
        """Every fd the job must inherit to keep what was taken."""
        return [slot.fd for slot in self.slots] + self.extra_fds

    def release(self) -> None:
        """Give everything back (idempotent); process death does the same."""
        for slot in self.slots:
            slot.release()
        for fd in self.extra_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.extra_fds = []


def job_record(decision: Decision, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fields every journal record of this job carries (start, wait, busy, end...)."""
    return {"profile": decision.profile, "route": decision.route, "metric": decision.metric,
            "reason": decision.reason, "pid": os.getpid(), "argv": decision.argv, "pool": decision.pool,
            "kind": decision.kind, "via": decision.via, "input": decision.input, "uid": os.getuid(),
            "priority": decision.rules.priority, **(extra or {})}  # fmt: skip


def _wait_announcer(settings: Settings, decision: Decision, record: dict[str, Any],
                    verbose: bool) -> Callable[[], None]:  # fmt: skip
    """A callback that journals `wait` (and says so with --verbose) the first time a job starts to wait."""
    announced: list[bool] = []

    def announce_wait() -> None:
        if not announced:
            announced.append(True)
            journal.append_record(settings.journal, "wait", **record, wait=format_wait(decision.wait_s))
            if verbose:
                _say(f"waiting for a {decision.pool} slot ({format_wait(decision.wait_s)})")

    return announce_wait


def acquire(settings: Settings, decision: Decision, environ: Mapping[str, str] | None = None,
            verbose: bool = False, extra: Mapping[str, Any] | None = None) -> Held:  # fmt: skip
    """Carry out the decision up to the exec: window wait, devices or slot, escape; journal `start`.

    Raises:
        NoFreeSlot: no slot (the caller exits with busy_exit_code); a `busy` record is written.
        ProbeRefused, LockDirError, TooManyGpus: see their exit codes.
    """
    env_in = os.environ if environ is None else environ
    rules = decision.rules
    record = job_record(decision, extra)
    if decision.action == route.BUSY:
        journal.append_record(settings.journal, "busy", **record, waited_s=0.0)
        raise NoFreeSlot(decision.pool, decision.slots, 0.0, why=decision.reason)
    if decision.action == route.FAIL:
        journal.append_record(settings.journal, "refused", **record)
        raise ProbeRefused(f"refused: {decision.reason}")
    waited_window = 0.0
    if decision.action == route.WAIT_WINDOW:
        waited_window = _wait_for_window(settings, decision, record, verbose)
    held = Held(decision, record)
    if decision.no_slot_because is None and decision.device_mode:
        placement, decision = _take_devices(settings, decision, record, verbose, environ)
        held.decision = decision
        record.update(route=decision.route, reason=decision.reason, argv=decision.argv, pool=decision.pool)
        if placement is not None:
            record.update(gpus=[g.index for g in placement.gpus], uuids=[g.uuid for g in placement.gpus],
                          vram_mib=placement.need_mib, placed=placement.reason)  # fmt: skip
            held.placement = placement
            held.slots = list(placement.slots)
            held.waited_s = placement.slots[0].waited_s + waited_window
            held.env["CUDA_VISIBLE_DEVICES"] = placement.visible_devices()
            held.env[HELD_VAR] = ",".join([*held_pools(env_in), decision.pool, *(s.pool for s in placement.slots)])
    held.guard = decision.spec.guard  # after placement: a low-VRAM fallback may have switched to the CPU route
    if not held.slots and decision.no_slot_because is None:
        slot, escaped, gate_fds = _take_slot(settings, decision, record, verbose, waited_window)
        held.extra_fds = gate_fds
        if slot is not None:
            held.slots = [slot]
            held.waited_s = slot.waited_s + waited_window
            held.env[HELD_VAR] = ",".join([*held_pools(env_in), decision.pool])
        else:
            held.escaped_after_s = escaped
            held.waited_s = escaped or 0.0
            held.guard = guard.merged(held.guard, rules.escape)  # capped and niced as configured for an escape
    if decision.action != route.PASS:
        # Whether or not a slot was taken (skip-lock, escape, held pool): the route args are in argv
        # now, so an intercepting link this job execs must not add them again.
        final = held.decision
        held.env[ROUTED_VAR] = routed_value(final.profile, final.route, final.argv[0])
    # The final route's env (a low-VRAM fallback may have switched to the CPU route), under the slot and
    # placement variables: a route's env must not override CUDA_VISIBLE_DEVICES or GPUROUTER_HELD.
    held.env = {**held.decision.env, **held.env}
    if held.escaped_after_s is not None:
        held.env.update(guard.thread_env(held.guard, env_in))
    first = held.slots[0].name if held.slots else None
    if decision.action != route.PASS:  # the parent's `start` already counts this job
        journal.append_record(settings.journal, "start", **record, slot=first, waited_s=round(held.waited_s, 3),
                              escaped=held.escaped_after_s is not None,
                              no_slot_because=decision.no_slot_because)  # fmt: skip
    if verbose:
        slot_text = first or ("none: escaped after max_wait" if held.escaped_after_s is not None else "none")
        _say(f"{decision.route} ({decision.reason}), slot {slot_text}")
    return held


def run(settings: Settings, decision: Decision, environ: Mapping[str, str] | None = None,
        verbose: bool = False) -> NoReturn:  # fmt: skip
    """Take the decision's slot, journal the start, and exec the job (which keeps the slot).

    Raises:
        NoFreeSlot: no slot (the caller exits with busy_exit_code); a `busy` record is written.
        LockDirError, CommandNotFound, NotExecutable, GpurouterError: see their exit codes.
    """
    from gpurouter import execute

    if settings.backend.kind == "slurm" and decision.no_slot_because is None:
        from gpurouter import slurm  # deferred: only the Slurm backend pays for it

        slurm.run_slurm(settings, decision, environ, verbose=verbose)  # exits like the job (never returns)
    if decision.rules.monitor:
        from gpurouter import monitor  # deferred: monitored runs start the job as a child instead of exec

        raise SystemExit(monitor.run_monitored(settings, decision, environ, verbose))
    held = acquire(settings, decision, environ, verbose)
    decision = held.decision
    for note in guard.apply_to_self(held.guard):
        journal_warn(note)
    if settings.residents and decision.route == "gpu":
        from gpurouter import residents

        residents.note_job(settings, decision.profile, held.record)
    env = dict(os.environ if environ is None else environ)
    env.update(held.env)
    for fd in held.fds:
        os.set_inheritable(fd, True)  # the job keeps every slot (and gate) it was given
    try:
        execute.exec_command(decision.executable, decision.argv, env, held.slots[0] if held.slots else None)
    except ExecFailed as failed:
        held.release()
        # Why (issue 12): the `start` above claims a job that never ran; this record, same pid,
        # tells the readers (stats, report) to take it back.
        journal.append_record(settings.journal, "exec_failed", **held.record, errno=failed.errno,
                              error=str(failed))  # fmt: skip
        raise


def _take_devices(settings: Settings, decision: Decision, record: dict[str, Any], verbose: bool,
                  environ: Mapping[str, str] | None) -> tuple[Placement | None, Decision]:  # fmt: skip
    """Place a device-aware GPU job; on low VRAM or no GPU, apply the profile's policy.

    Returns:
        (placement, decision) or (None, a CPU decision) when the job falls back to the CPU route.

    Raises:
        NoFreeSlot (journalled busy), TooManyGpus / NoGpu (journalled refused).
    """
    from gpurouter import devices

    spec, rules = decision.spec, decision.rules
    announce_wait = _wait_announcer(settings, decision, record, verbose)
    policy = spec.on_low_vram
    for attempt in range(4):
        try:
            return devices.place(settings, spec, decision.need_mib, decision.gpu_count or 1, decision.wait_s,
                                 announce_wait, low_vram_waits=policy == "wait", environ=environ), decision  # fmt: skip
        except devices.NoGpu as missing:
            if rules.no_gpu in (None, "cpu"):
                return None, _to_cpu(decision, f"{missing}: cpu")
            journal.append_record(settings.journal, "busy" if rules.no_gpu == "busy" else "refused", **record)
            if rules.no_gpu == "busy":
                raise NoFreeSlot(decision.pool, decision.slots, 0.0, why=str(missing)) from None
            raise ProbeRefused(f"refused: {missing} and no_gpu = \"fail\"") from None
        except devices.TooManyGpus:
            journal.append_record(settings.journal, "refused", **record)
            raise
        except devices.LowVram as short:
            if policy == "evict" and attempt < 3:
                from gpurouter import residents

                if residents.make_room(settings, decision, short.why, record, environ):
                    continue
            if policy in ("cpu", "evict"):
                return None, _to_cpu(decision, f"{short.why}: cpu")
            journal.append_record(settings.journal, "busy", **record, waited_s=round(short.waited_s, 3))
            raise
        except NoFreeSlot as busy:
            journal.append_record(settings.journal, "busy", **record, waited_s=round(busy.waited_s, 3))
            raise
    return None, _to_cpu(decision, "evictions did not make room: cpu")


def _to_cpu(decision: Decision, why: str) -> Decision:
    """The same job on the CPU route (args, pool, slots and guard of the CPU table)."""
    spec = decision.rules.cpu
    env = {k: v for k, v in spec.env.items() if k not in os.environ}
    env.update(guard.thread_env(spec.guard, os.environ))
    return decision.replace(route="cpu", spec=spec, reason=f"{decision.reason}; {why}", pool=spec.pool,
                            slots=spec.slots, argv=route.job_argv(decision.base_argv, spec), env=env,
                            need_mib=None, gpu_count=None)  # fmt: skip


def _wait_for_window(settings: Settings, decision: Decision, record: dict[str, Any], verbose: bool) -> float:
    """Sleep until the profile's GPU window opens (outside_hours = "wait"); returns the seconds slept."""
    import time

    rules = decision.rules
    assert rules.hours is not None
    now = time.localtime()
    wait = route.seconds_until_window(rules.hours, now.tm_hour * 3600 + now.tm_min * 60 + now.tm_sec + time.time() % 1)
    bounded = 0 < decision.wait_s < float("inf")
    if bounded and wait > decision.wait_s:
        journal.append_record(settings.journal, "busy", **record, waited_s=0.0)
        raise NoFreeSlot(decision.pool, decision.slots, 0.0,
                         why=f"the GPU window {rules.hours_text} opens in {wait:.0f}s, after the wait limit")  # fmt: skip
    journal.append_record(settings.journal, "wait", **record, wait=f"window {rules.hours_text}", window_in_s=round(wait, 1))
    if verbose:
        _say(f"outside hours {rules.hours_text}: waiting {wait:.0f}s for the window")
    time.sleep(wait)  # one timed sleep until the window opens: nothing to poll
    return wait


def _take_slot(settings: Settings, decision: Decision, record: dict[str, Any], verbose: bool,
               already_waited: float) -> tuple[Slot | None, float | None, list[int]]:  # fmt: skip
    """(slot, None, fds to inherit) or (None, seconds waited, fds) after a max_wait escape.

    Raises:
        NoFreeSlot: after journalling `busy`.
    """
    import time

    rules = decision.rules
    began = time.monotonic()
    limit = max(0.0, decision.wait_s - already_waited) if decision.wait_s else 0.0
    # The escape is for the CPU route: a GPU job run without its slot is the OOM the slot prevents.
    escape_after = rules.max_wait_s if decision.route == "cpu" else None
    wait_s = limit if escape_after is None else min(limit, escape_after)
    announce_wait = _wait_announcer(settings, decision, record, verbose)
    inherited: list[int] = []
    try:
        if rules.priority == "realtime":
            held, inherited = _take_as_realtime(settings, decision, wait_s, announce_wait)
        elif rules.priority == "batch":
            held = _take_as_batch(settings, decision, wait_s, announce_wait, began)
        else:
            held = slots.acquire_slot(settings.lock_dir, decision.pool, decision.slots, wait_s, on_wait=announce_wait)
    except NoFreeSlot as busy:
        waited = time.monotonic() - began
        if escape_after is not None and limit > escape_after and waited >= escape_after:
            journal.append_record(settings.journal, "escape", **record, waited_s=round(waited, 3))
            return None, waited, inherited
        journal.append_record(settings.journal, "busy", **record, waited_s=round(busy.waited_s, 3))
        raise
    held.waited_s = time.monotonic() - began  # includes time at a priority gate, not only on the slot
    return held, None, inherited


def _take_as_realtime(settings: Settings, decision: Decision, wait_s: float,
                      announce_wait: Callable[[], None]) -> tuple[Slot, list[int]]:  # fmt: skip
    waiting = priority.open_gate(settings.lock_dir, decision.pool, priority.WAITING)
    running = priority.open_gate(settings.lock_dir, decision.pool, priority.RUNNING)
    try:
        priority.hold_shared(waiting)  # while we wait, batch jobs step back
        held = slots.acquire_slot(settings.lock_dir, decision.pool, decision.slots, wait_s, on_wait=announce_wait)
        priority.hold_shared(running)  # for batch_yields = "running": held by the job until it exits
    except BaseException:
        os.close(running)
        raise
    finally:
        os.close(waiting)
    return held, [running]


def _take_as_batch(settings: Settings, decision: Decision, wait_s: float,
                   announce_wait: Callable[[], None], began: float) -> Slot:  # fmt: skip
    import time

    gates = [priority.open_gate(settings.lock_dir, decision.pool, priority.WAITING)]
    if decision.rules.batch_yields == "running":
        gates.append(priority.open_gate(settings.lock_dir, decision.pool, priority.RUNNING))
    try:
        while True:
            for gate in gates:
                if not priority.pass_gate(gate, blocking=False):
                    if wait_s <= 0:
                        raise NoFreeSlot(decision.pool, decision.slots, 0.0,
                                         why=f"a realtime job has priority on pool {decision.pool!r}")  # fmt: skip
                    announce_wait()
                    _sleep_at_gate(gate, wait_s - (time.monotonic() - began), decision)
            remaining = wait_s - (time.monotonic() - began) if wait_s > 0 else 0.0
            held = slots.acquire_slot(settings.lock_dir, decision.pool, decision.slots, max(0.0, remaining),
                                      on_wait=announce_wait)  # fmt: skip
            if all(priority.pass_gate(gate, blocking=False) for gate in gates):
                return held
            held.release()  # a realtime job arrived while we waited: step back and let it have the slot
            if wait_s <= 0:
                raise NoFreeSlot(decision.pool, decision.slots, 0.0,
                                 why=f"a realtime job has priority on pool {decision.pool!r}")  # fmt: skip
    finally:
        for gate in gates:
            os.close(gate)


def _sleep_at_gate(gate: int, remaining_s: float, decision: Decision) -> None:
    """Sleep in flock until the gate opens, or raise NoFreeSlot when `remaining_s` runs out."""
    if remaining_s == float("inf"):
        priority.pass_gate(gate, blocking=True)
        return
    if remaining_s <= 0:
        raise NoFreeSlot(decision.pool, decision.slots, 0.0, why=f"a realtime job has priority on pool {decision.pool!r}")
    import threading

    opened = threading.Event()

    def sleeper() -> None:
        try:
            priority.pass_gate(os.dup(gate), blocking=True)  # its own fd number: ours may close first
        except OSError:
            return
        opened.set()

    threading.Thread(target=sleeper, daemon=True).start()
    if not opened.wait(min(remaining_s, threading.TIMEOUT_MAX)):
        raise NoFreeSlot(decision.pool, decision.slots, remaining_s,
                         why=f"a realtime job has priority on pool {decision.pool!r}")  # fmt: skip


def journal_warn(message: str) -> None:
    """A one-line warning on stderr."""
    _say(f"warning: {message}")


def intercept_target(argv0: str, profile: Profile, environ: Mapping[str, str] | None = None) -> str:
    """The real binary for the interception form: the profile's `binary`, else NAME-real beside the link.

    Raises:
        CommandNotFound / NotExecutable: missing, not executable, or gpurouter itself (a loop).
    """
    from gpurouter.execute import find_executable, resolve_command

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
        hint = (f"set profiles.{profile.name}.binary to the real binary" if profile.binary
                else f"rename the real {name} to {target}")  # fmt: skip
        raise NotExecutable(target, f"resolves to gpurouter itself (a loop): {hint}")
    return target


def _say(message: str) -> None:
    stream = sys.stderr  # None when started with fd 2 closed: the job must run all the same (issue 12)
    if stream is None:
        return
    try:
        stream.write(f"gpurouter: {message}\n")
    except (OSError, ValueError):
        pass

