"""gpurouter: probe a job's input, pick GPU or CPU arguments, take a flock slot, exec the job.

The library form (`gpurouter.decide`, `gpurouter.slot`, `gpurouter.gpus`,
`gpurouter.wait_for_gpus`, and their asyncio twins `aslot` / `await_gpus`) is loaded on
first use, so `import gpurouter` stays as cheap as the CLI's hot path.
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = {"decide", "slot", "gpus", "wait_for_gpus", "Decision", "Held", "Busy", "Gpu", "GpuWaitTimeout"}
_AIO = {"aslot", "await_gpus"}
__all__ = sorted(_API | _AIO | {"__version__"})


def __getattr__(name: str) -> object:
    if name in _API:
        from gpurouter import api

        return getattr(api, name)
    if name in _AIO:
        from gpurouter import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'gpurouter' has no attribute {name!r}")
