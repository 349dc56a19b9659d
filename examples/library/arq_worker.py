"""An ARQ queue worker that checks GPU availability before a task and waits for it, bounded.

    pip install arq gpurouter && arq examples.library.arq_worker.WorkerSettings

ARQ because the seeds' GPU scheduler was an ARQ worker, and because it is asyncio-native:
`gpurouter.await_gpus` and `gpurouter.aslot` wait without a thread per waiting task (the
wait parks in the kernel through flock(1) helpers watched by pidfds), so one worker
process can hold many queued GPU tasks cheaply. A task that finds no GPU within its
budget raises `Retry`, and ARQ re-queues it with a delay: the fail-fast-and-retry contract
of the CLI (exit 75), expressed in the queue's own terms.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

import gpurouter

try:
    from arq import Retry
except ImportError:  # documentation example: importable without arq for the tests

    class Retry(Exception):  # type: ignore[no-redef]
        def __init__(self, defer: float = 0) -> None:
            super().__init__(f"retry in {defer}s")


async def run_experiment(ctx: dict[str, object], model: str, args: list[str]) -> dict[str, object]:
    """One GPU task: `args` are the serving flags (e.g. ["--tensor-parallel-size", "2"])."""
    decision = gpurouter.decide("vllm", ["vllm", "serve", model, *args])
    try:
        await gpurouter.await_gpus(decision.gpu_count or 1, decision.vram_mib or 0, timeout_s=300)
        held = await gpurouter.aslot(decision, wait=60)
    except (gpurouter.GpuWaitTimeout, gpurouter.Busy) as short:
        raise Retry(defer=60) from short
    with held:
        process = await asyncio.create_subprocess_exec(*decision.argv, env={**held.env})
        return {
            "exit": await process.wait(),
            "devices": [g.uuid for g in held.devices],
            "reason": decision.reason,
        }


class WorkerSettings:
    functions: ClassVar[list[object]] = [run_experiment]  # arq reads its settings off the class
    max_jobs = 16  # queued tasks waiting for GPUs cost a few flock helpers each, no threads
