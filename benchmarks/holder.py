"""A slot holder for the hand-off and waiter benchmarks.

    holder.py [--lock FILE]... [--lock-shared FILE]... --ready FILE [--go FIFO --t0 FILE]

Takes an exclusive flock(2) on each --lock file (none under GNU parallel `sem`, which is
the lock itself) and a shared one on each --lock-shared file (what a realtime gpurouter
waiter holds on its pool's `realtime-waiting` gate), creates --ready, then either sleeps
until killed (no --go), or blocks
reading one byte from the --go FIFO, writes time.time_ns() (CLOCK_REALTIME) to --t0 and
exits at once with os._exit: the kernel releases the flock while tearing the process down,
so T0 is taken a few microseconds before the release, the same way for every tool.
"""

import fcntl
import os
import signal
import sys
import time


def main(argv: list[str]) -> None:
    locks, ready, go, t0 = [], None, None, None
    it = iter(argv)
    for arg in it:
        if arg == "--lock":
            locks.append((next(it), fcntl.LOCK_EX))
        elif arg == "--lock-shared":
            locks.append((next(it), fcntl.LOCK_SH))
        elif arg == "--ready":
            ready = next(it)
        elif arg == "--go":
            go = next(it)
        elif arg == "--t0":
            t0 = next(it)
        else:
            sys.exit(f"holder.py: unknown argument {arg!r}")
    for path, mode in locks:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        fcntl.flock(fd, mode | fcntl.LOCK_NB)  # the harness made sure it is free
    if ready:
        os.close(os.open(ready, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    if go is None:
        while True:
            signal.pause()
    out = os.open(t0, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    fifo = os.open(go, os.O_RDONLY | os.O_CLOEXEC)  # blocks until the harness opens it to write
    os.read(fifo, 1)
    os.write(out, b"%d\n" % time.time_ns())
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
