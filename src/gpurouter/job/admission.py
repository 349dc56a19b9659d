"""One admission path: refuse, wait, take a slot (or devices), and journal `busy`/`wait`/`start`.

The local runner, monitored runs, the Slurm backend and the asyncio library all admit a job
through here, so "what happens when there is no slot" lives in one place (issue 13):
`Admission` writes every record of a job's admission, `acquire` carries a decision out.
"""

from __future__ import annotations

import os
import sys

from gpurouter.errors import GpurouterError, NoFreeSlot, ProbeRefused
from gpurouter.job import guard, journal, route, slots
from gpurouter.job.decision import HELD_VAR, ROUTED_VAR, held_pools, routed_value
from gpurouter.job.units import format_wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from gpurouter.gpu.placement import Placement
    from gpurouter.job.decision import Decision
    from gpurouter.job.settings import Settings
    from gpurouter.job.slots import Slot


def job_record(decision: Decision, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fields every journal record of this job carries (start, wait, busy, end...)."""
    taken = decision.taken_route  # None for a no_input pass: it takes no route and no pool
    return {
        "profile": decision.profile,
        "route": taken,
        "metric": decision.metric,
        "reason": decision.reason,
        "pid": os.getpid(),
        "argv": decision.argv,
        "pool": decision.pool if taken else None,
        "kind": decision.kind,
        "via": decision.via,
        "input": decision.input,
        "uid": os.getuid(),
        "priority": decision.rules.priority,
        **(extra or {}),
    }


class Admission:
    """The journal records of one job's admission, each written by one method.

    `record` is the job's common fields; a device placement or a CPU fallback updates it, so
    the `start` record says where the job really went.
    """

    __slots__ = ("settings", "decision", "record", "verbose", "quiet", "_announced")

    def __init__(
        self,
        settings: Settings,
        decision: Decision,
        verbose: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings, self.decision, self.verbose = settings, decision, verbose
        self.record = job_record(decision, extra)
        self.quiet = False  # True while a caller's fail-fast tries find nothing: those are not refusals
        self._announced = False

    def busy(self, waited_s: float, error: NoFreeSlot) -> NoFreeSlot:
        """Journal `busy` (unless quiet) and return `error` to raise."""
        if not self.quiet:
            journal.append_record(self.settings.journal, "busy", **self.record, waited_s=round(waited_s, 3))
        return error

    def refused(self, error: str | GpurouterError) -> GpurouterError:
        """Journal `refused` and return the error to raise (a ProbeRefused made from a message)."""
        journal.append_record(self.settings.journal, "refused", **self.record)
        return ProbeRefused(error) if isinstance(error, str) else error

    def wait(self) -> None:
        """Journal `wait` (and say so with --verbose) the first time the job starts to wait."""
        if self._announced:
            return
        self._announced = True
        journal.append_record(
            self.settings.journal, "wait", **self.record, wait=format_wait(self.decision.wait_s)
        )
        if self.verbose:
            say(f"waiting for a {self.decision.pool} slot ({format_wait(self.decision.wait_s)})")

    def escape(self, waited_s: float) -> None:
        """Journal `escape`: max_wait ran out and the job runs without a slot."""
        journal.append_record(self.settings.journal, "escape", **self.record, waited_s=round(waited_s, 3))

    def start(self, slot: str | None, waited_s: float, **fields: Any) -> None:
        """Journal `start`: the job is launched (a pass-through is counted by its parent instead)."""
        journal.append_record(
            self.settings.journal, "start", **self.record, slot=slot, waited_s=round(waited_s, 3), **fields
        )

    def prelude(self, decision: Decision) -> float:
        """The verdicts that come before any slot: busy or refused outright, or a wait for the GPU
        window. Returns the seconds spent waiting for the window.

        Raises:
            NoFreeSlot, ProbeRefused: after journalling `busy` / `refused`.
        """
        if decision.action == route.BUSY:
            raise self.busy(0.0, NoFreeSlot(decision.pool, decision.slots, 0.0, why=decision.reason))
        if decision.action == route.FAIL:
            raise self.refused(f"refused: {decision.reason}")
        if decision.action == route.WAIT_WINDOW:
            return self._wait_for_window(decision)
        return 0.0

    def _wait_for_window(self, decision: Decision) -> float:
        """Sleep until the profile's GPU window opens (outside_hours = "wait"); returns the seconds slept."""
        import time

        rules = decision.rules
        assert rules.hours is not None
        now = time.localtime()
        wait = route.seconds_until_window(
            rules.hours, now.tm_hour * 3600 + now.tm_min * 60 + now.tm_sec + time.time() % 1
        )
        if 0 < decision.wait_s < float("inf") and wait > decision.wait_s:
            why = f"the GPU window {rules.hours_text} opens in {wait:.0f}s, after the wait limit"
            raise self.busy(0.0, NoFreeSlot(decision.pool, decision.slots, 0.0, why=why))
        journal.append_record(
            self.settings.journal,
            "wait",
            **self.record,
            wait=f"window {rules.hours_text}",
            window_in_s=round(wait, 1),
        )
        if self.verbose:
            say(f"outside hours {rules.hours_text}: waiting {wait:.0f}s for the window")
        time.sleep(wait)  # one timed sleep until the window opens: nothing to poll
        return wait


class Held:
    """What `acquire` took for a job: slots (and devices), the env to add, the guard to apply."""

    __slots__ = (
        "decision",
        "slots",
        "extra_fds",
        "env",
        "guard",
        "escaped_after_s",
        "waited_s",
        "record",
        "placement",
    )

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

    @property
    def first_slot(self) -> str | None:
        """The name of the first slot taken (None: none taken)."""
        return self.slots[0].name if self.slots else None

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


def acquire(
    settings: Settings,
    decision: Decision,
    environ: Mapping[str, str] | None = None,
    verbose: bool = False,
    extra: Mapping[str, Any] | None = None,
    admission: Admission | None = None,
    journal_start: bool = True,
) -> Held:
    """Carry out the decision up to the exec: window wait, devices or slot, escape; journal `start`.

    Args:
        admission: the job's records (made here when None); the asyncio form passes its own so that
            its fail-fast tries and its kernel waits journal through the same methods.
        journal_start: False when the caller journals `start` itself (asyncio, after its wait).

    Raises:
        NoFreeSlot: no slot (the caller exits with busy_exit_code); a `busy` record is written.
        ProbeRefused, LockDirError, TooManyGpus: see their exit codes.
    """
    env_in = os.environ if environ is None else environ
    log = admission or Admission(settings, decision, verbose, extra)
    record = log.record
    if decision.action == route.NO_INPUT:  # no_input = "pass": nothing to take, no route args, no ROUTED_VAR
        journal.append_record(settings.journal, "pass", **record)
        if verbose:
            say(f"pass ({decision.reason}): untouched, no slot")
        return Held(decision, record)
    waited_window = log.prelude(decision)
    held = Held(decision, record)
    if decision.no_slot_because is None and decision.device_mode:
        placement, decision = _take_devices(log, decision, environ)
        held.decision = decision
        record.update(route=decision.route, reason=decision.reason, argv=decision.argv, pool=decision.pool)
        if placement is not None:
            record.update(
                gpus=[g.index for g in placement.gpus],
                uuids=[g.uuid for g in placement.gpus],
                vram_mib=placement.need_mib,
                placed=placement.reason,
            )
            held.placement = placement
            held.slots = list(placement.slots)
            held.waited_s = placement.slots[0].waited_s + waited_window
            held.env["CUDA_VISIBLE_DEVICES"] = placement.visible_devices()
            held.env[HELD_VAR] = ",".join(
                [*held_pools(env_in), decision.pool, *(s.pool for s in placement.slots)]
            )
    held.guard = (
        decision.spec.guard
    )  # after placement: a low-VRAM fallback may have switched to the CPU route
    if not held.slots and decision.no_slot_because is None:
        slot, escaped, gate_fds = _take_slot(log, decision, waited_window)
        held.extra_fds = gate_fds
        if slot is not None:
            held.slots = [slot]
            held.waited_s = slot.waited_s + waited_window
            held.env[HELD_VAR] = ",".join([*held_pools(env_in), decision.pool])
        else:
            held.escaped_after_s = escaped
            held.waited_s = escaped or 0.0
            held.guard = guard.merged(
                held.guard, decision.rules.escape
            )  # capped and niced as configured for an escape
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
    if journal_start and decision.action != route.PASS:  # the parent's `start` already counts this job
        log.start(
            held.first_slot,
            held.waited_s,
            escaped=held.escaped_after_s is not None,
            no_slot_because=decision.no_slot_because,
        )
    if verbose:
        slot_text = held.first_slot or (
            "none: escaped after max_wait" if held.escaped_after_s is not None else "none"
        )
        say(f"{decision.route} ({decision.reason}), slot {slot_text}")
    return held


def to_cpu(decision: Decision, why: str, environ: Mapping[str, str] | None = None) -> Decision:
    """The same job on the CPU route (args, pool, slots, env and thread caps of the CPU table).

    The caller's `environ` decides which route variables it already set, as `decide` does (the
    library's `environ=` was ignored here before issue 13).
    """
    env_in = os.environ if environ is None else environ
    spec = decision.rules.cpu
    env = {k: v for k, v in spec.env.items() if k not in env_in}
    env.update(guard.thread_env(spec.guard, env_in))
    return decision.replace(
        route="cpu",
        spec=spec,
        reason=f"{decision.reason}; {why}",
        pool=spec.pool,
        slots=spec.slots,
        argv=route.job_argv(decision.base_argv, spec, decision.input_at),
        env=env,
        need_mib=None,
        gpu_count=None,
    )


def _take_devices(
    log: Admission, decision: Decision, environ: Mapping[str, str] | None
) -> tuple[Placement | None, Decision]:
    """Place a device-aware GPU job; on low VRAM or no GPU, apply the profile's policy.

    Returns:
        (placement, decision) or (None, a CPU decision) when the job falls back to the CPU route.

    Raises:
        NoFreeSlot (journalled busy), TooManyGpus / NoGpu (journalled refused).
    """
    from gpurouter.gpu import placement as devices

    settings = log.settings
    spec, rules = decision.spec, decision.rules
    policy = spec.on_low_vram
    for attempt in range(4):
        try:
            return devices.place(
                settings,
                spec,
                decision.need_mib,
                decision.gpu_count or 1,
                decision.wait_s,
                log.wait,
                low_vram_waits=policy == "wait",
                environ=environ,
            ), decision
        except devices.NoGpu as missing:
            if rules.no_gpu in (None, "cpu"):
                return None, to_cpu(decision, f"{missing}: cpu", environ)
            if rules.no_gpu == "busy":
                raise log.busy(
                    0.0, NoFreeSlot(decision.pool, decision.slots, 0.0, why=str(missing))
                ) from None
            raise log.refused(f'refused: {missing} and no_gpu = "fail"') from None
        except devices.TooManyGpus as too_many:
            raise log.refused(too_many) from None
        except devices.LowVram as short:
            if policy == "evict" and attempt < 3:
                from gpurouter.gpu import residents

                if residents.make_room(settings, decision, short.why, log.record, environ):
                    continue
            if policy in ("cpu", "evict"):
                return None, to_cpu(decision, f"{short.why}: cpu", environ)
            raise log.busy(short.waited_s, short) from None
        except NoFreeSlot as busy:
            raise log.busy(busy.waited_s, busy) from None
    return None, to_cpu(decision, "evictions did not make room: cpu", environ)


def _take_slot(
    log: Admission, decision: Decision, already_waited: float
) -> tuple[Slot | None, float | None, list[int]]:
    """(slot, None, fds to inherit) or (None, seconds waited, fds) after a max_wait escape.

    Raises:
        NoFreeSlot: after journalling `busy`.
    """
    import time

    settings, rules = log.settings, decision.rules
    began = time.monotonic()
    limit = max(0.0, decision.wait_s - already_waited) if decision.wait_s else 0.0
    # The escape is for the CPU route: a GPU job run without its slot is the OOM the slot prevents.
    escape_after = rules.max_wait_s if decision.route == "cpu" else None
    wait_s = limit if escape_after is None else min(limit, escape_after)
    inherited: list[int] = []
    if rules.priority is not None:
        from gpurouter.job import priority  # deferred: only realtime/batch profiles use the gates
    try:
        if rules.priority == "realtime":
            held, inherited = priority.take_as_realtime(
                settings.lock_dir, decision.pool, decision.slots, wait_s, log.wait
            )
        elif rules.priority == "batch":
            held = priority.take_as_batch(
                settings.lock_dir,
                decision.pool,
                decision.slots,
                wait_s,
                log.wait,
                began,
                yield_to_running=rules.batch_yields == "running",
            )
        else:
            held = slots.acquire_slot(
                settings.lock_dir, decision.pool, decision.slots, wait_s, on_wait=log.wait
            )
    except NoFreeSlot as busy:
        waited = time.monotonic() - began
        if escape_after is not None and limit > escape_after and waited >= escape_after:
            log.escape(waited)
            return None, waited, inherited
        raise log.busy(busy.waited_s, busy) from None
    held.waited_s = time.monotonic() - began  # includes time at a priority gate, not only on the slot
    return held, None, inherited


def say(message: str) -> None:
    """One `gpurouter: ...` line on stderr (stdout belongs to the job)."""
    stream = sys.stderr  # None when started with fd 2 closed: the job must run all the same (issue 12)
    if stream is None:
        return
    try:
        stream.write(f"gpurouter: {message}\n")
    except (OSError, ValueError):
        pass


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    say(f"warning: {message}")
