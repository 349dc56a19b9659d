"""asyncio forms of `slot` and `wait_for_gpus`, with no thread blocked per waiter.

A waiter parks in the kernel through a tiny helper per candidate slot: util-linux
`flock -x FD` on a descriptor we opened and passed down. flock(2) locks belong to the open
file description, which our process shares, so the helper's success is ours to see; the
event loop learns of it through the helper's pidfd (readable when it exits). We then let
go of that lock at once and take the slot through the ordinary `acquire` path (device
placement, claims, priority gates and all), looping if another caller was faster. So the
same rules apply, the wait is event-driven, and a cancelled or timed-out waiter kills its
helpers, which never hold anything of their own.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time

from gpurouter import api
from gpurouter.errors import NoFreeSlot
from gpurouter.gpu import nvml, placement
from gpurouter.job import admission, config, fsutil, slots

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from gpurouter.gpu.nvml import GpuSnapshot


def _flock_binary() -> str | None:
    from gpurouter.job.execute import find_executable

    return find_executable("flock")


async def wait_for_release(lock_dir: str, candidates: list[tuple[str, int]], timeout_s: float) -> bool:
    """Sleep until any of `candidates` is free (True), or `timeout_s` passes (False)."""
    flock = _flock_binary()
    if flock is None or not hasattr(os, "pidfd_open"):  # pragma: no cover - util-linux is everywhere we run
        await asyncio.sleep(min(timeout_s, 0.5))
        return False
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()
    helpers: list[tuple[int, int, int]] = []  # (pid, pidfd, slot fd)
    dir_fd = slots.open_lock_dir(lock_dir)
    try:
        for pool, index in candidates:
            fd = fsutil.open_shared_file(f"{pool}.{index}", os.O_RDONLY, dir_fd=dir_fd)
            os.set_inheritable(fd, True)
            try:
                pid = os.posix_spawn(flock, [flock, "-x", str(fd)], dict(os.environ))
            finally:
                os.set_inheritable(fd, False)
            pidfd = os.pidfd_open(pid)
            helpers.append((pid, pidfd, fd))
            loop.add_reader(pidfd, _settle, done)
    finally:
        os.close(dir_fd)
    try:
        if math.isinf(timeout_s):
            return await done
        return await asyncio.wait_for(done, timeout_s)
    except TimeoutError:
        return False
    finally:
        for pid, pidfd, fd in helpers:
            loop.remove_reader(pidfd)
            try:
                os.kill(pid, signal.SIGKILL)  # a helper still blocked holds nothing
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            os.close(pidfd)
            os.close(fd)  # and a helper that won locked our fd: closing it lets the slot go


def _settle(done: asyncio.Future[bool]) -> None:
    if not done.done():
        done.set_result(True)


async def aslot(
    decision: api.Decision, wait: str | float = "fail", environ: Mapping[str, str] | None = None
) -> api.Held:
    """`slot` for asyncio: `held = await aslot(d, wait="block")`; use `with held:` or `held.release()`.

    Raises:
        Busy: no slot free (or the wait ran out).
    """
    settings = decision.settings
    wait_s = api._wait_seconds(wait)
    log = admission.Admission(settings, decision.inner.replace(wait_s=wait_s))
    began = time.monotonic()
    while True:
        log.quiet = True  # tries that find nothing free are not refusals
        try:
            held = admission.acquire(
                settings, decision.inner.replace(wait_s=0.0), environ, admission=log, journal_start=False
            )
        except NoFreeSlot as busy:
            waited = time.monotonic() - began
            remaining = wait_s - waited
            if remaining <= 0:
                log.quiet = False
                raise log.busy(waited, NoFreeSlot(busy.pool, busy.slots, waited, why=busy.why)) from None
            log.wait()
            await wait_for_release(
                settings.lock_dir,
                _candidates(decision),
                min(remaining, placement.RECHECK_S) if decision.inner.device_mode else remaining,
            )
            continue
        held.waited_s = time.monotonic() - began
        log.start(
            held.first_slot, held.waited_s, escaped=False, no_slot_because=held.decision.no_slot_because
        )
        return api.Held(settings, held)


def _candidates(decision: api.Decision) -> list[tuple[str, int]]:
    inner = decision.inner
    if inner.device_mode:
        found = nvml.query_gpus().gpus
        return [(placement.device_pool(inner.spec, g.index), i) for g in found for i in range(inner.slots)]
    return [(inner.pool, i) for i in range(inner.slots)]


async def await_gpus(
    count: int = 1,
    min_free_mib: int = 0,
    timeout_s: float = math.inf,
    *,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[GpuSnapshot]:
    """`wait_for_gpus` for asyncio (wakes on slot releases, re-reads NVML at least every 2 s).

    Raises:
        GpuWaitTimeout: not within `timeout_s`.
    """
    began = time.monotonic()
    while True:
        try:
            return api.wait_for_gpus(count, min_free_mib, 0.0, config_file=config_file, environ=environ)
        except api.GpuWaitTimeout as short:
            remaining = timeout_s - (time.monotonic() - began)
            if remaining <= 0:
                raise api.GpuWaitTimeout(count, min_free_mib, time.monotonic() - began, str(short)) from None
        settings = config.load(config_file, environ)
        found = nvml.query_gpus(environ).gpus
        candidates = [(f"gpu{g.index}", i) for g in found for i in range(api._slot_count(settings))]
        await wait_for_release(settings.lock_dir, candidates, min(remaining, placement.RECHECK_S))
