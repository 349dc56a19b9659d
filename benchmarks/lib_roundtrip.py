"""The library form in-process: one `gpurouter.decide` + `gpurouter.slot` round trip.

    lib_roundtrip.py --out FILE [--n 200] [--warmup 20] [--profile true] [--route cpu] [-- ARGV...]

Run with the venv's interpreter, in run.sh's environment (its config, lock_dir and journal).
Per iteration, in one process: t0 = perf_counter_ns(); decision = gpurouter.decide(PROFILE, ARGV,
route=ROUTE); `with gpurouter.slot(decision, wait="fail"): pass`; t1 after the slot is
released. The round trip therefore holds what a CLI job pays between its interpreter start-up
and its exec: the config (memo check), the decision, the slot's flock, the `start` journal
record, plus the release and the `end` record the library writes. The defaults are the
decision of (a)'s `gpurouter run --route cpu -- /bin/true` (profile `true`, CPU route forced,
slot cpu.0). Writes the samples (µs, warm-up excluded) and the in-process import time of
`gpurouter` + `gpurouter.api`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from _bench import say


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--profile", default="true")
    parser.add_argument("--route", default="cpu")
    parser.add_argument("argv", nargs="*", default=["/bin/true"])
    args = parser.parse_args()

    began = time.perf_counter_ns()
    import gpurouter  # timed: imported here, not at the top

    gpurouter.decide  # noqa: B018 - loads gpurouter.api (lazy)
    import_us = (time.perf_counter_ns() - began) / 1e3

    samples, slots = [], None
    for i in range(args.warmup + args.n):
        t0 = time.perf_counter_ns()
        decision = gpurouter.decide(args.profile, args.argv, route=args.route or None)
        with gpurouter.slot(decision, wait="fail") as held:
            slots = held.slots
        t1 = time.perf_counter_ns()
        if not slots:
            raise SystemExit(f"lib_roundtrip.py: the slot call took no slot ({decision!r})")
        if i >= args.warmup:
            samples.append((t1 - t0) / 1e3)
    median = statistics.median(samples)
    say(
        f"decide + slot round trip: median {median:.0f} µs over {len(samples)} "
        f"(slot {slots[0]}, {decision!r})"
    )
    with open(args.out, "w") as handle:
        json.dump(
            {
                "samples_us": samples,
                "median_us": median,
                "import_us": import_us,
                "slot": slots[0],
                "route": decision.route,
                "profile": decision.profile,
            },
            handle,
        )


if __name__ == "__main__":
    main()
