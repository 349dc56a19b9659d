"""The library form: the same decision and slot code as the CLI, for Python callers.

    import gpurouter

    decision = gpurouter.decide("whisper", ["whisper", "talk.wav"])
    with gpurouter.slot(decision, wait="block") as held:
        run_model(device=held.env.get("CUDA_VISIBLE_DEVICES"), extra_args=decision.args)

Nothing here re-implements a rule: `decide` is `decision.decide`, `slot` is `admission.acquire`
(journal records included), and the slot is released on exit, on exception, and by the
kernel when the process dies.
"""

from __future__ import annotations

import math
import os
import time

from gpurouter.errors import GpurouterError, NoFreeSlot
from gpurouter.gpu import nvml
from gpurouter.job import admission, config, options, units
from gpurouter.job import decision as decisions

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

    from gpurouter.gpu.nvml import GpuSnapshot

Busy = NoFreeSlot  # raised by `slot` when no slot is free: carries .pool and .waited_s
Gpu = nvml.GpuSnapshot


class GpuWaitTimeout(GpurouterError, TimeoutError):
    """`wait_for_gpus` ran out of time."""

    def __init__(self, count: int, min_free_mib: int, waited_s: float, seen: str) -> None:
        self.count, self.min_free_mib, self.waited_s = count, min_free_mib, waited_s
        super().__init__(f"no {count} GPU(s) with {min_free_mib} MiB free after {waited_s:.1f}s ({seen})")


class Decision:
    """Route, metric, reason, the args to add, the env to set; devices once a slot is held."""

    __slots__ = ("settings", "inner")

    def __init__(self, settings: config.Settings, inner: decisions.Decision) -> None:
        self.settings, self.inner = settings, inner

    route = property(lambda self: self.inner.route, doc="gpu or cpu")
    metric = property(lambda self: self.inner.metric, doc="the probe's figure, or None")
    reason = property(lambda self: self.inner.reason, doc="why this route, in words")
    profile = property(lambda self: self.inner.profile, doc="the profile used")
    argv = property(lambda self: list(self.inner.argv), doc="the job's argv with the route args")
    env = property(
        lambda self: dict(self.inner.env), doc="variables to set for the job (thread caps, route env)"
    )
    gpu_count = property(lambda self: self.inner.gpu_count, doc="devices the job needs (device-aware routes)")
    vram_mib = property(lambda self: self.inner.need_mib, doc="VRAM per device (device-aware routes)")

    @property
    def args(self) -> list[str]:
        """The route's args (added to the job's own)."""
        return list(self.inner.spec.args)

    def as_dict(self) -> dict[str, object]:
        """The decision as plain data (what `gpurouter route --json` prints)."""
        return self.inner.summary()

    def __repr__(self) -> str:
        return f"Decision(profile={self.profile!r}, route={self.route!r}, reason={self.reason!r})"


class Held:
    """A held slot (and devices): context manager; `env` has CUDA_VISIBLE_DEVICES when devices were picked."""

    __slots__ = ("_held", "_settings", "_started")

    def __init__(self, settings: config.Settings, held: admission.Held) -> None:
        self._settings, self._held, self._started = settings, held, time.monotonic()

    @property
    def env(self) -> dict[str, str]:
        """Variables for the work done under the slot (GPUROUTER_HELD, CUDA_VISIBLE_DEVICES, caps)."""
        return dict(self._held.env)

    @property
    def route(self) -> str:
        """The route taken: "cpu" when a device-aware GPU decision fell back on low VRAM or no GPU."""
        return self._held.decision.route

    @property
    def devices(self) -> list[GpuSnapshot]:
        """The GPUs picked (device-aware routes), else []."""
        return list(self._held.placement.gpus) if self._held.placement else []

    @property
    def slots(self) -> list[str]:
        """Names of the slots held, e.g. ['gpu.0'] or ['gpu0.0', 'gpu1.0']."""
        return [slot.name for slot in self._held.slots]

    @property
    def waited_s(self) -> float:
        """Seconds waited for the slot."""
        return self._held.waited_s

    def release(self) -> None:
        """Give the slot back (idempotent); journals `end`."""
        if self._held.slots or self._held.extra_fds:
            from gpurouter.job import journal

            self._held.release()
            journal.append_record(
                self._settings.journal,
                "end",
                **self._held.record,
                duration_s=round(time.monotonic() - self._started, 3),
            )
            self._held.slots = []

    def __enter__(self) -> Held:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


def _settings(config_file: str | None, environ: Mapping[str, str] | None) -> config.Settings:
    return config.load(config_file, environ)


def decide(
    profile: str,
    argv: Sequence[str],
    *,
    route: str | None = None,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Decision:
    """Probe and route a job; nothing is taken.

    Args:
        profile: profile name ("default" for the built-in defaults).
        argv: the job's command line, argv[0] first (the input is picked from it per the profile).
        route: force "gpu" or "cpu".
        config_file: a config file (else the contract's search order).
        environ: the environment to decide for (default os.environ).

    Raises:
        ConfigError: a bad configuration (or an unknown profile).
        UsageError: a bad forced route.
    """
    env = os.environ if environ is None else environ
    settings = _settings(config_file, env)
    chosen = options.pick_profile(settings, argv[0] if argv else profile, profile, {})
    executable = argv[0] if argv else profile
    inner = decisions.decide(
        settings, chosen, list(argv) or [profile], executable, decisions.forced_route(route, env), env
    )
    return Decision(settings, inner)


def _wait_seconds(wait: str | float) -> float:
    if isinstance(wait, str):
        return units.parse_wait(wait)
    if wait < 0:
        raise ValueError("wait must be >= 0 seconds, 'fail' or 'block'")
    return float(wait)


def slot(decision: Decision, wait: str | float = "fail", environ: Mapping[str, str] | None = None) -> Held:
    """Take the decision's slot (and device reservation) in this process.

    Args:
        decision: from `decide`.
        wait: "fail" (at once), "block" (forever) or seconds.
        environ: the environment (GPUROUTER_HELD / GPUROUTER_SKIP_LOCK are honoured).

    Returns:
        A `Held`; use it as a context manager. Released on exit, on exception, and on process death.

    Raises:
        Busy: no slot free (or the wait ran out); `.pool` and `.waited_s` say which and how long.
    """
    inner = decision.inner.replace(wait_s=_wait_seconds(wait))
    return Held(decision.settings, admission.acquire(decision.settings, inner, environ))


def gpus(environ: Mapping[str, str] | None = None) -> list[GpuSnapshot]:
    """The box's GPUs now (NVML, or the device file in $GPUROUTER_NVML_FILE); [] without a GPU."""
    return list(nvml.query_gpus(environ, full=True).gpus)


def wait_for_gpus(
    count: int = 1,
    min_free_mib: int = 0,
    timeout_s: float = math.inf,
    *,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[GpuSnapshot]:
    """Wait until `count` GPUs each have `min_free_mib` free (plus the cushion, minus promised MiB).

    Wakes when a gpurouter slot on a device is released, and re-reads NVML at least every 2 s
    (memory freed outside gpurouter has no event). Nothing is reserved: take a `slot` next.

    Raises:
        GpuWaitTimeout: not within `timeout_s`.
        TooManyGpus: `count` exceeds the GPUs of the box (never a wait that cannot end).
    """
    from gpurouter.gpu import placement, selection

    settings = _settings(config_file, environ)
    began = time.monotonic()
    while True:
        found = selection.eligible(nvml.query_gpus(environ).gpus, settings.gpu.devices)
        if found and count > len(found):
            raise placement.TooManyGpus(f"{count} GPUs asked for but this box has {len(found)} usable")
        promised = placement.read_claims(settings.lock_dir, found, "gpu")
        chosen = selection.pick(
            found, min_free_mib or None, settings.gpu.cushion_mib, settings.gpu.select, count, promised
        )
        if chosen is not None and len(chosen) == count:
            return chosen
        remaining = timeout_s - (time.monotonic() - began)
        if remaining <= 0:
            seen = ", ".join(f"GPU {g.index}: {g.memory_free_mib} MiB free" for g in found) or "no GPU"
            raise GpuWaitTimeout(count, min_free_mib, time.monotonic() - began, seen)
        candidates = [(f"gpu{g.index}", i) for g in found for i in range(_slot_count(settings))]
        placement._sleep_until_a_release(settings.lock_dir, candidates, min(remaining, placement.RECHECK_S))


def _slot_count(settings: config.Settings) -> int:
    return max([p.gpu.slots for p in settings.profiles.values()] + [1])
