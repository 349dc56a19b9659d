"""Robustness, round 2 (issue 12): closed descriptors, concurrent installs, output files that are
not regular files, jobs whose exec fails, probe helpers and signals, and hostile small inputs.

Every test drives real processes: real closed descriptors, real concurrent installs, real FIFOs,
real signals.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import GPUROUTER, Box

SHOW_FDS = """\
import os, sys
with open(sys.argv[1], "w") as out:
    for fd in range(3):
        try:
            out.write(f"{fd} {os.readlink(f'/proc/self/fd/{fd}')}\\n")
        except OSError:
            out.write(f"{fd} closed\\n")
    for fd in os.listdir("/proc/self/fd"):
        out.write(f"fd {fd} {os.readlink(f'/proc/self/fd/{fd}') if os.path.exists(f'/proc/self/fd/{fd}') else ''}\\n")
"""


def _sh(box: Box, line: str) -> subprocess.CompletedProcess[str]:
    """Run a shell line (its redirections close descriptors for real) in the box's environment."""
    return subprocess.run(["sh", "-c", line], env=box.env, capture_output=True, text=True, timeout=60,
                          cwd=box.root)  # fmt: skip


@pytest.mark.parametrize("closing", ["2>&-", ">&-", "<&-", "<&- >&- 2>&-"],
                         ids=["stderr-closed", "stdout-closed", "stdin-closed", "all-three-closed"])  # fmt: skip
def test_a_job_started_with_a_closed_descriptor_still_runs_and_keeps_its_slot(box: Box, closing: str) -> None:
    done = _sh(box, f"'{GPUROUTER}' run -- touch made {closing}; echo \"rc=$?\"")
    assert done.stdout.strip() == "rc=0", done.stderr
    assert (box.root / "made").exists()
    assert [r["event"] for r in box.records()] == ["start"]


def test_a_job_sees_the_descriptors_its_caller_closed_still_closed_and_no_lock_on_them(box: Box) -> None:
    (box.root / "show.py").write_text(SHOW_FDS)
    done = _sh(box, f"'{GPUROUTER}' run -- python3 show.py fds.txt <&- >&- 2>&-; echo \"rc=$?\"")
    assert done.stdout.strip() == "rc=0"
    lines = (box.root / "fds.txt").read_text().splitlines()
    # fd 0 is the job's own fds.txt (its first open took the lowest free fd); 1 and 2 stay closed
    # like env(1) leaves them, and the slot's lock file is above them, held by the job.
    assert lines[:3] == [f"0 {box.root / 'fds.txt'}", "1 closed", "2 closed"]
    held = [line for line in lines[3:] if str(box.lock_dir) in line]
    assert len(held) == 1 and int(held[0].split()[1]) > 2


def test_an_intercepted_binary_started_with_closed_stdout_and_stderr_still_runs(box: Box) -> None:
    (box.bin / "tool-real").write_text("#!/bin/sh\ntouch \"$1\"\n")
    (box.bin / "tool-real").chmod(0o755)
    (box.bin / "tool").symlink_to(GPUROUTER)
    done = _sh(box, f"'{box.bin / 'tool'}' made >&- 2>&-; echo \"rc=$?\"")
    assert done.stdout.strip() == "rc=0"
    assert (box.root / "made").exists()


def test_a_failure_with_stderr_closed_still_exits_with_its_code_and_writes_nothing_into_the_journal(box: Box) -> None:
    _sh(box, f"'{GPUROUTER}' run -- touch first")  # the journal exists and is well-formed
    done = _sh(box, f"'{GPUROUTER}' run -- no-such-command-here 2>&-; echo \"rc=$?\"")
    assert done.stdout.strip() == "rc=127"
    assert [r["event"] for r in box.records()] == ["start"]  # every line still parses: no message landed in it
