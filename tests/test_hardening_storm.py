"""Storm: hundreds of concurrent invocations on pools of 1, 2 and 8 slots.

Fail-fast under a retrying runner and blocking: never more jobs at once than slots (from the
jobs' own start/end lines), every job ran exactly once (refused ones ran on a retry), one
`start` record per run and one `busy` per refusal, every journal line valid JSON, each slot
held by one job at a time, and nothing held afterwards.

$GPUROUTER_STORM_JOBS sets the invocations per scenario (default 300).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Box
from test_hardening_support import Storm, check_storm, journal_lines, record_figures

JOBS = int(os.environ.get("GPUROUTER_STORM_JOBS", "300"))
JOB_SLEEP = 0.01


def storm_config(box: Box, slots: int, wait: str) -> None:
    box.write_config(f"[profiles.transcribe]\nwait = '{wait}'\n[profiles.transcribe.gpu]\nslots = {slots}\n")


@pytest.mark.parametrize("slots", [1, 2, 8])
def test_fail_fast_storm_under_a_retrying_runner(box: Box, slots: int) -> None:
    storm_config(box, slots, "fail")
    ids = [f"ff{slots}-{i:03d}" for i in range(JOBS)]
    storm = Storm(
        box, ids, in_flight=max(8, 4 * slots), job_sleep=JOB_SLEEP, retry_delay=(0.03, 0.15), seed=slots
    )
    exits = storm.run()
    figures = check_storm(box, ids, exits, slots)
    assert figures["refusals"] > 0  # it was a storm: some attempts found every slot busy
    for err in storm.stderr:  # a refused attempt says so in one line
        assert err.startswith("gpurouter: no free slot") and err.count("\n") == 1, err
    record_figures("storm", mode="fail-fast, Python retrying runner", **figures)


@pytest.mark.parametrize("slots", [1, 2, 8])
def test_blocking_storm_all_at_once(box: Box, slots: int) -> None:
    storm_config(box, slots, "block")
    ids = [f"bl{slots}-{i:03d}" for i in range(JOBS)]
    storm = Storm(box, ids, in_flight=JOBS, job_sleep=JOB_SLEEP, seed=slots)
    exits = storm.run()
    figures = check_storm(box, ids, exits, slots)
    assert figures["refusals"] == 0 and storm.stderr == []
    waits = sum(record["event"] == "wait" for record in journal_lines(box.journal))
    assert waits > 0  # most of them really waited in the kernel
    record_figures("storm", mode="blocking, all started at once", **figures)


@pytest.mark.skipif(
    shutil.which("parallel") is None, reason="GNU parallel is not installed (scripts/setup installs it)"
)
def test_fail_fast_storm_under_gnu_parallel_retries(box: Box) -> None:
    slots = 2
    storm_config(box, slots, "fail")
    attempts = box.root / "attempts"
    attempt = box.root / "attempt.sh"  # records each attempt's status: parallel's joblog keeps only the last
    attempt.write_text(
        f'gpurouter run -- transcribe "$1" >/dev/null; rc=$?; echo "$1 $rc" >> {attempts}; '
        "[ $rc = 75 ] && sleep 0.05; exit $rc\n"
    )
    ids = [f"gp-{i:03d}" for i in range(JOBS)]
    done = subprocess.run(
        ["parallel", "-j", "12", "--retries", "100000", "sh", str(attempt), "{}", ":::", *ids],
        env={**box.env, "JOB_SLEEP": str(JOB_SLEEP)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    exits: dict[str, list[int]] = {job: [] for job in ids}
    for line in attempts.read_text().splitlines():
        job, code = line.split()
        exits[job].append(int(code))
    figures = check_storm(box, ids, exits, slots)
    record_figures("storm", mode="fail-fast, GNU parallel --retries", **figures)


def test_concurrent_appends_of_records_spanning_pages_stay_whole_lines(tmp_path: Path) -> None:
    """8 writers, records larger than a page (long argv): no torn, merged or blank line."""
    journal = tmp_path / "journal.jsonl"
    code = (
        "import sys; from gpurouter.job import journal\n"
        "for i in range(300): journal.append_record(sys.argv[1], 'start', profile='p', route='gpu',"
        " metric=None, reason='r', pid=i, argv=['x' * 5000, sys.argv[2], str(i)])\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", code, str(journal), f"w{n}"]) for n in range(8)]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    records = journal_lines(journal)  # each line one JSON object
    assert len(records) == 8 * 300
    assert {(r["argv"][1], r["argv"][2]) for r in records} == {
        (f"w{n}", str(i)) for n in range(8) for i in range(300)
    }
    record_figures(
        "storm", journal_writers=8, journal_records=len(records), kind="concurrent page-spanning appends"
    )
