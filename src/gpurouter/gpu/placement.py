"""Placing a GPU job on devices: per-device slots, free VRAM, promised VRAM, and the pick.

Slot first, then decide: a job that has just started has not allocated its VRAM yet, so
NVML still shows it free and the next caller would be sent to the same device (the
task-spooler failure: 128 jobs on a GPU that still looked empty). So each placement runs
under one short exclusive lock (`<pool>.decide`), takes the device slots, and writes a
*claim* beside each slot (`<pool><index>.<slot>.claim`: pid and MiB). Later deciders count
the part of a claim that NVML does not yet show as used by the claimant's process tree as
promised, so two callers never spend the same free MiB. A claim only counts while its slot
is held (a non-blocking flock probe of the slot file), so a crashed job's claim is void.
"""

from __future__ import annotations

import fcntl
import os
import time

from gpurouter.errors import ExitCode, GpurouterError, LockDirError, NoFreeSlot
from gpurouter.gpu import nvml, selection
from gpurouter.job import fsutil, kernel, slots
from gpurouter.job.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from gpurouter.gpu.nvml import GpuSnapshot
    from gpurouter.job.settings import RouteSpec, Settings
    from gpurouter.job.slots import Slot

CLAIM_GRACE_S = 60.0  # with per-process memory unknown, a claim counts in full this long after its start
RECHECK_S = 2.0  # a VRAM wait re-reads NVML at least this often (memory freed outside gpurouter has no event)


class NoGpu(GpurouterError):
    """No usable device (no driver, no device, or none allowed by [gpu] devices)."""


class TooManyGpus(GpurouterError):
    """The job asks for more devices than the box has: refused at once, never a wait that cannot end."""

    exit_code = ExitCode.WRAPPER_FAILED


class LowVram(NoFreeSlot):
    """Devices have free slots but not the VRAM the job needs (plus the cushion)."""

    def __init__(self, pool: str, slots: int, waited_s: float, why: str) -> None:
        super().__init__(pool, slots, waited_s, why=why)


class Placement(Record):
    """The devices a job got, the slots it holds on them, and what was seen when deciding."""

    __slots__ = ("gpus", "slots", "need_mib", "promised", "reason")
    gpus: list[GpuSnapshot]
    slots: list[Slot]
    need_mib: int | None
    promised: dict[int, int]
    reason: str

    def visible_devices(self) -> str:
        """CUDA_VISIBLE_DEVICES: UUIDs, since NVML and CUDA may number devices differently."""
        return ",".join(gpu.uuid or str(gpu.index) for gpu in self.gpus)


def device_pool(spec: RouteSpec, index: int) -> str:
    """'gpu0', 'gpu1', ... (or '<pool><index>' for a route with its own pool)."""
    return f"{spec.pool}{index}"


def read_claims(
    lock_dir: str,
    gpus: Sequence[GpuSnapshot],
    spec_pool: str,
    exclude_pid: int | None = None,
    decide_held: bool = False,
) -> dict[int, int]:
    """MiB promised on each device to slot holders that NVML does not yet show as using it.

    Args:
        decide_held: the caller holds `<spec_pool>.decide` (a placement does). Otherwise the
            lock is tried without waiting, for the span of the judging, and where it is busy
            (or missing) the claims are judged from /proc/locks instead.
    """
    try:
        names = os.listdir(lock_dir)
    except OSError:
        return {}
    found: list[tuple[GpuSnapshot, str, tuple[int, int, float]]] = []
    for gpu in gpus:
        prefix = f"{spec_pool}{gpu.index}."
        for name in names:
            if not (name.startswith(prefix) and name.endswith(".claim")):
                continue
            claim = _read_claim(os.path.join(lock_dir, name))
            if claim is not None and claim[0] != exclude_pid:
                found.append((gpu, os.path.join(lock_dir, name[: -len(".claim")]), claim))
    if not found:
        return {}
    decide = -1 if decide_held else _try_decide_lock(lock_dir, spec_pool)
    try:
        # Why a flock probe and not /proc/locks (issue 16): the first read of /proc/locks in a
        # process waits for an RCU grace period (locks_start takes file_rwsem for writing),
        # ~13 ms for a job that arrives on its own, i.e. on every spaced device-mode decision.
        # The probe takes the slot for an instant when nobody holds it, which only the decide
        # lock makes harmless: no other decider is between its claim reading and its slot taking.
        # It does not say *who* holds the slot, and it need not: claims are keyed by slot and
        # every job that takes a device slot (re)writes that slot's claim under the same decide
        # lock before anyone can judge it (0 MiB without vram_mib), so the claim beside a held
        # slot is its holder's. The pid is still what NVML's per-process use is matched with.
        locks: dict[tuple[int, int, int], dict[str, list[int]]] | None = None
        foreign: bool | None = None  # in a PID namespace (read only if there is a live claim)
        promised: dict[int, int] = {}
        for gpu, slot_path, (pid, mib, since) in found:
            if decide_held or decide >= 0:
                if not _slot_is_held(slot_path):
                    continue  # nobody holds that slot: a stale claim
            else:  # a tool while a placement runs: the kernel's list names the holders' pids
                if locks is None:
                    locks = kernel.kernel_flocks()
                try:
                    info = os.stat(slot_path, follow_symlinks=False)
                except OSError:
                    continue
                if pid not in locks.get(kernel.file_key(info), {}).get("held", []):
                    continue  # the claimant no longer holds that slot: a stale claim
            if foreign is None:
                from gpurouter.gpu.evidence import foreign_pids  # deferred: only when a live claim exists

                foreign = foreign_pids(nvml.GpuQuery(gpus=list(gpus), source="", message=None)) is not None
            if foreign:
                owed = mib  # NVML's host pids cannot be matched here: the claim counts in full
            elif gpu.processes is None:
                owed = mib if time.time() - since < CLAIM_GRACE_S else 0
            else:
                used = sum(p.used_mib or 0 for p in gpu.processes if kernel.descends_from(p.pid, pid))
                owed = max(0, mib - used)
            promised[gpu.index] = promised.get(gpu.index, 0) + owed
        return promised
    finally:
        if decide >= 0:
            os.close(decide)


def _try_decide_lock(lock_dir: str, pool: str) -> int:
    """`<pool>.decide` locked exclusively if that can be had at once (never created), else -1."""
    try:
        fd = fsutil.open_regular_for_reading(os.path.join(lock_dir, f"{pool}.decide"))
    except OSError:
        return -1
    try:
        if os.fstat(fd).st_nlink == 1:  # placements refuse a hard-linked name: it would not exclude them
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
    except OSError:
        pass  # held by a placement (or unlockable): judge from /proc/locks
    os.close(fd)
    return -1


def _slot_is_held(path: str) -> bool:
    """Does anyone hold the slot file `path`? A LOCK_EX|LOCK_NB probe on a fresh open file description.

    flock locks belong to open file descriptions, so the probe conflicts with every holder,
    this process included (a library process placing a second job while it holds a slot
    counts its own claim): only a slot that nobody holds is taken, and given back at once.
    """
    try:
        fd = fsutil.open_regular_for_reading(path)
    except OSError:
        return False  # no slot file, or a planted symlink/FIFO/...: no job can hold it
    try:
        if os.fstat(fd).st_nlink > 1:
            return False  # slots refuse a hard-linked name (fsutil.open_shared_file): no job holds it
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True  # EWOULDBLOCK: held
    except OSError:
        return True  # cannot tell (ENOLCK on some network file systems): count it, never double-spend
    finally:
        os.close(fd)  # the probe's lock goes with its only fd
    return False


def _read_claim(path: str) -> tuple[int, int, float] | None:
    try:
        fd = fsutil.open_regular_for_reading(path)
    except OSError:
        return None
    try:
        pid, mib, since = os.read(fd, 128).decode("ascii").split()[:3]
        return int(pid), int(mib), float(since)
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # torn or foreign: not trusted
    finally:
        os.close(fd)


def write_claim(dir_fd: int, slot: Slot, need_mib: int) -> None:
    """Record the holder's promise beside its slot (fixed-width, rewritten in place, never truncated)."""
    fd = fsutil.open_shared_file(f"{slot.pool}.{slot.index}.claim", os.O_WRONLY, dir_fd=dir_fd)
    try:
        os.pwrite(fd, f"{os.getpid()} {need_mib} {time.time():.3f}".ljust(63).encode("ascii") + b"\n", 0)
    finally:
        os.close(fd)


def place(
    settings: Settings,
    spec: RouteSpec,
    need_mib: int | None,
    count: int,
    wait_s: float,
    on_wait: Callable[[], None],
    low_vram_waits: bool,
    environ: Mapping[str, str] | None = None,
) -> Placement:
    """Take slots on `count` devices that each have `need_mib` free (plus the cushion).

    Raises:
        NoGpu: no usable device.
        TooManyGpus: more devices asked for than the box has.
        LowVram: free slots but not enough VRAM, and `low_vram_waits` is off (or the wait ran out).
        NoFreeSlot: every device slot is held and the wait is 0 or ran out.
    """
    began = time.monotonic()
    announced = False
    while True:
        outcome = _try_place(settings, spec, need_mib, count, environ)
        if isinstance(outcome, Placement):
            for slot in outcome.slots:
                slot.waited_s = time.monotonic() - began
            return outcome
        short, candidates, detail = outcome
        remaining = wait_s - (time.monotonic() - began)
        if short == "vram" and not low_vram_waits:
            raise LowVram(spec.pool, count, time.monotonic() - began, why=detail)
        if remaining <= 0:
            if short == "vram":
                raise LowVram(spec.pool, count, time.monotonic() - began, why=detail)
            raise NoFreeSlot(spec.pool, len(candidates), time.monotonic() - began, why=detail)
        if not announced:
            on_wait()
            announced = True
        # Sleep in flock until one of the relevant held slots is released (the event), or, when
        # VRAM is short, at most RECHECK_S: memory freed by processes outside gpurouter has no event.
        bound = min(remaining, RECHECK_S) if short == "vram" else remaining
        _sleep_until_a_release(settings.lock_dir, candidates, bound)


def _try_place(
    settings: Settings, spec: RouteSpec, need_mib: int | None, count: int, environ: Mapping[str, str] | None
) -> Placement | tuple[str, list[tuple[str, int]], str]:
    dir_fd = slots.open_lock_dir(settings.lock_dir)
    try:
        decide = fsutil.open_shared_file(f"{spec.pool}.decide", os.O_RDONLY, dir_fd=dir_fd)
    except OSError as error:
        os.close(dir_fd)
        raise LockDirError(
            os.path.join(settings.lock_dir, f"{spec.pool}.decide"), str(error.strerror)
        ) from None
    try:
        fcntl.flock(decide, fcntl.LOCK_EX)  # one placement at a time: read, pick, take, claim
        query = nvml.query_gpus(environ)
        gpus = selection.eligible(query.gpus, settings.gpu.devices)
        if not gpus:
            raise NoGpu(f"no usable GPU: {query.message or 'none allowed by [gpu] devices'}")
        if count > len(gpus):
            raise TooManyGpus(f"the job asks for {count} GPUs but this box has {len(gpus)} usable; refused")
        promised = read_claims(settings.lock_dir, gpus, spec.pool, decide_held=True)
        cushion = settings.gpu.cushion_mib
        rotation = _next_rotation(dir_fd, spec.pool) if settings.gpu.select == "round-robin" else 0
        ranked = selection.rank(gpus, settings.gpu.select, promised, rotation)
        fitting = [
            g
            for g in ranked
            if need_mib is None or selection.fits(g, need_mib, cushion, promised.get(g.index, 0))
        ]
        taken: list[tuple[GpuSnapshot, Slot]] = []
        for gpu in fitting:  # best first, per [gpu] select
            if len(taken) == count:
                break
            try:
                slot = slots.acquire_slot(settings.lock_dir, device_pool(spec, gpu.index), spec.slots, 0.0)
            except NoFreeSlot:
                continue
            taken.append((gpu, slot))
        if len(taken) < count:
            # Slots before VRAM: a device whose slots are all held is a wait for a slot, never the
            # low-VRAM action (its memory is its own jobs'; evicting or going to the CPU gains nothing).
            open_devices = len(taken) + sum(
                1 for g in ranked if g not in fitting and has_free_slot(settings, spec, g)
            )
            if open_devices < count:
                for _, slot in taken:
                    slot.release()
                candidates = [(device_pool(spec, g.index), i) for g in gpus for i in range(spec.slots)]
                return "slots", candidates, f"all slots of the GPU(s) are busy ({spec.slots} per device)"
        if len(taken) == count:
            taken.sort(key=lambda pair: pair[0].index)
            # Every taker (re)writes its slot's claim, 0 MiB without vram_mib: see read_claims.
            for _, slot in taken:
                try:
                    write_claim(dir_fd, slot, need_mib or 0)
                except OSError as error:  # a name planted in the shared lock dir: no silent double-spend
                    for _, held in taken:
                        held.release()
                    claim = os.path.join(settings.lock_dir, f"{slot.pool}.{slot.index}.claim")
                    raise LockDirError(claim, f"claim file unusable: {error.strerror or error}") from None
            chosen = [gpu for gpu, _ in taken]
            reason = ", ".join(_describe(g, need_mib, promised.get(g.index, 0)) for g in chosen)
            return Placement(
                gpus=chosen,
                slots=[slot for _, slot in taken],
                need_mib=need_mib,
                promised=promised,
                reason=reason,
            )
        for _, slot in taken:
            slot.release()
        if len(fitting) < count:
            seen = "; ".join(_describe(g, need_mib, promised.get(g.index, 0)) for g in gpus)
            wanted = f"{need_mib} MiB + {cushion} MiB cushion" if need_mib is not None else "a device"
            candidates = [(device_pool(spec, g.index), i) for g in gpus for i in range(spec.slots)]
            return "vram", candidates, f"not enough free VRAM for {count} x {wanted} ({seen})"
        candidates = [(device_pool(spec, g.index), i) for g in fitting for i in range(spec.slots)]
        return "slots", candidates, f"all slots of the {len(fitting)} GPU(s) with room are busy"
    finally:
        os.close(decide)
        os.close(dir_fd)


def claimants(lock_dir: str, pool: str, index: int) -> set[int]:
    """Pids named by the claim files of a device (whether or not they still hold the slot)."""
    try:
        names = os.listdir(lock_dir)
    except OSError:
        return set()
    prefix = f"{pool}{index}."
    claims = (
        _read_claim(os.path.join(lock_dir, n)) for n in names if n.startswith(prefix) and n.endswith(".claim")
    )
    return {claim[0] for claim in claims if claim is not None}


def has_free_slot(settings: Settings, spec: RouteSpec, gpu: GpuSnapshot) -> bool:
    """Is one of the device's slots free right now? (Taken and given back at once, under the decide lock.)"""
    try:
        slots.acquire_slot(settings.lock_dir, device_pool(spec, gpu.index), spec.slots, 0.0).release()
    except NoFreeSlot:
        return False
    return True


def _describe(gpu: GpuSnapshot, need_mib: int | None, promised: int) -> str:
    free = (
        "?" if gpu.memory_free_mib is None else f"{max(0, gpu.memory_free_mib - promised)}"
    )  # promises can exceed it
    return f"GPU {gpu.index} {free} MiB free" + (f" ({promised} promised)" if promised else "")


def _next_rotation(dir_fd: int, pool: str) -> int:
    """A counter shared by all callers (under the decide lock) for round-robin."""
    try:
        fd = fsutil.open_shared_file(f"{pool}.rr", os.O_RDWR, dir_fd=dir_fd)
    except OSError:
        return 0
    try:
        try:
            turn = int(os.pread(fd, 32, 0).decode("ascii").strip() or 0)
        except ValueError:
            turn = 0
        os.pwrite(fd, f"{turn + 1}".ljust(31).encode("ascii") + b"\n", 0)
        return turn
    finally:
        os.close(fd)


def _sleep_until_a_release(lock_dir: str, candidates: list[tuple[str, int]], bound_s: float) -> None:
    """Sleep until one of the held `candidates` is released, or `bound_s` passes."""
    held = []
    for pool, index in candidates:
        try:
            with slots.acquire_any(lock_dir, [(pool, index)], 0.0):
                pass  # free right now: nothing to wait for on it
        except NoFreeSlot:
            held.append((pool, index))
    if not held:
        time.sleep(min(bound_s, RECHECK_S))
        return
    try:
        slots.acquire_any(lock_dir, held, bound_s).release()
    except NoFreeSlot:
        pass
