"""The runbook's advice in words, from the figures `stats.summarise` made."""

from __future__ import annotations

from gpurouter.job.units import format_coarse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

    from gpurouter.job.settings import Settings

# Advice thresholds: below these the figures are noise, not a pattern.
ADVISE_MIN_COUNT: Final = 3
ADVISE_REFUSAL_RATE: Final = 0.2
ADVISE_ESCAPE_RATE: Final = 0.1


def advise(
    settings: Settings, profiles: dict[str, dict[str, Any]], evictions: dict[str, dict[str, int]]
) -> list[str]:
    """The runbook's advice, in words, where the figures call for it (and only then).

    Direction matters: refusals on the GPU pool are not cured by a higher threshold (that sends
    *more* jobs to the GPU); refusals on the CPU pool are, and GPU OOMs call for a lower one.
    """
    from gpurouter.job import units
    from gpurouter.job.units import format_wait

    advice = []
    for name, row in profiles.items():
        rules = settings.profile(name)
        gpu_attempts = row["gpu"] + row["busy_gpu"]
        cpu_attempts = row["cpu"] + row["busy_cpu"]
        if row["busy_gpu"] >= ADVISE_MIN_COUNT and row["busy_gpu"] / gpu_attempts > ADVISE_REFUSAL_RATE:
            share = (
                f"{row['busy_gpu']} refusals on the GPU pool "
                f"({row['busy_gpu'] / gpu_attempts:.0%} of GPU attempts)"
            )
            if rules.wait_s == 0:
                advice.append(
                    f'{name}: {share} under wait = "fail": a runner that retries at once (GNU parallel, '
                    'the PeerTube runner) burns its retries in a second; set wait = "block" or a bounded '
                    'wait (e.g. "30m"), or more GPU slots if VRAM allows (gpurouter config --check)'
                )
            else:
                advice.append(
                    f"{name}: {share} after waiting up to {format_wait(rules.wait_s)}: a longer wait, "
                    "more GPU slots if VRAM allows (gpurouter config --check), or a lower threshold "
                    "(more jobs to the CPU)"
                )
        if (
            row["busy_cpu"] >= ADVISE_MIN_COUNT
            and row["busy_cpu"] > row["cpu"]
            and row["busy_cpu"] / cpu_attempts > ADVISE_REFUSAL_RATE
        ):
            advice.append(
                f"{name}: {row['busy_cpu']} refusals on the CPU pool against {row['cpu']} CPU runs: "
                "the threshold sends too many jobs to the CPU; raise the threshold (more jobs to the GPU) "
                "or the CPU slots if RAM allows"
            )
        if row["oom"]:
            kind = rules.probe if rules.probe in ("duration", "size", "pixels") else row["oom_kind"]
            smallest = format_coarse(row["oom_min_metric"], kind)
            advice.append(
                f"{name}: {row['oom']} GPU run(s) ran out of memory (smallest input {smallest}, "
                f"threshold {rules.threshold_text or 'none'}): lower the threshold below that "
                f"(gpurouter tune {name} fits it to the runs)"
            )
        started = row["gpu"] + row["cpu"]
        if row["escapes"] >= ADVISE_MIN_COUNT and started and row["escapes"] / started > ADVISE_ESCAPE_RATE:
            limit = "unset" if rules.max_wait_s is None else units.format_duration(rules.max_wait_s)
            advice.append(
                f"{name}: {row['escapes']} of {started} jobs ran without a slot after max_wait ({limit}): "
                "more slots (if memory allows) or a longer max_wait"
            )
    for victim, tally in evictions.items():
        if tally["failed"] >= ADVISE_MIN_COUNT and tally["failed"] > tally["ok"]:
            advice.append(
                f"resident {victim}: {tally['failed']} evictions failed against {tally['ok']} that worked: "
                "check its unload action (gpurouter gpus)"
            )
    return advice
