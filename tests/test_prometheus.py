"""`gpurouter stats --prometheus FILE`: node_exporter textfile metrics, checked by parsing them
with prometheus_client's own parser; the example systemd timer is checked by systemd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import GPUROUTER, wait_for
from journal_factory import T0, monitored_run, record, settings_for, write

from gpurouter.cli import cli
from gpurouter.observe import prometheus, status

parser = pytest.importorskip("prometheus_client.parser", reason="prometheus_client is in the test extra")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "prometheus"
DEVICES = {
    "devices": [
        {
            "index": 0,
            "uuid": "GPU-6f1c2a00-0000-0000-0000-000000000000",
            "name": "NVIDIA RTX A4000",
            "memory_total_mib": 16376,
            "memory_used_mib": 1200,
            "utilization_percent": 5,
            "temperature_c": 41,
            "power_w": 35.5,
        },
        {
            "index": 1,
            "uuid": "GPU-00000000-0000-0000-0000-000000000001",
            "name": "NVIDIA T4",
            "memory_total_mib": 15360,
            "memory_used_mib": 0,
        },
    ]
}
PROFILES = """
[profiles.whisper.gpu]
slots = 2
[profiles.whisper.cpu]
slots = 1
"""


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _types(text: str) -> dict[str, str]:
    return {family.name: family.type for family in parser.text_string_to_metric_families(text)}


@pytest.fixture
def holder(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real job holding gpu.0 through `gpurouter run` (killed at the end)."""
    settings_for(tmp_path, PROFILES)
    env = {
        **os.environ,
        "GPUROUTER_CONFIG": str(tmp_path / "config.toml"),
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    env.pop("GPUROUTER_NVML_FILE", None)
    job = subprocess.Popen(
        [GPUROUTER, "run", "--profile", "whisper", "--route", "gpu", "--", "sleep", "60"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    settings = settings_for(tmp_path, PROFILES)
    assert wait_for(lambda: any(r.holder for r in status.slot_rows(settings) if r.pool == "gpu"))
    yield job
    job.kill()
    job.communicate()


def test_the_textfile_parses_and_carries_jobs_refusals_waits_slots_and_gpus(tmp_path: Path, holder) -> None:  # type: ignore[no-untyped-def]
    journal = tmp_path / "locks" / "journal.jsonl"
    with journal.open("a") as stream:  # the holder's own start record is already there
        for rec in [
            record("start", "whisper", "cpu", T0, waited_s=2.0),
            record("busy", "whisper", "gpu", T0 + 1),
            record("busy", "whisper", "cpu", T0 + 2, pool="cpu-big"),
            record("escape", "whisper", "cpu", T0 + 3, waited_s=600.0),
            record("oom", "whisper", "gpu", T0 + 4, run_id="a", pattern="CUDA out of memory"),
            record("evict", "whisper", "gpu", T0 + 5, victim='oll"ama', ok=False, problem="timeout"),
        ]:
            stream.write(json.dumps(rec) + "\n")
    devices = tmp_path / "devices.json"
    devices.write_text(json.dumps(DEVICES))
    settings = settings_for(tmp_path, PROFILES)
    target = tmp_path / "textfile" / "gpurouter.prom"
    target.parent.mkdir()
    result = prometheus.write_textfile(settings, str(target), environ={"GPUROUTER_NVML_FILE": str(devices)})
    text = target.read_text()
    got = _samples(text)
    assert result["samples"] == len(got)
    assert got[("gpurouter_jobs_total", (("profile", "whisper"), ("route", "gpu")))] == 1  # the holder
    assert got[("gpurouter_jobs_total", (("profile", "whisper"), ("route", "cpu")))] == 1
    assert got[("gpurouter_busy_total", (("pool", "cpu-big"), ("profile", "whisper")))] == 1
    assert got[("gpurouter_busy_total", (("pool", "gpu"), ("profile", "whisper")))] == 1
    assert got[("gpurouter_escapes_total", (("profile", "whisper"),))] == 1
    assert got[("gpurouter_oom_fallbacks_total", (("profile", "whisper"),))] == 1
    assert (
        got[("gpurouter_evictions_total", (("victim", 'oll"ama'),))] == 0
    )  # a failed unload evicted nothing
    assert got[("gpurouter_eviction_failures_total", (("victim", 'oll"ama'),))] == 1
    assert got[("gpurouter_wait_seconds_count", (("profile", "whisper"),))] == 2
    assert got[("gpurouter_wait_seconds", (("profile", "whisper"), ("quantile", "0.95")))] == 2.0
    assert got[("gpurouter_slots_in_use", (("pool", "gpu"),))] == 1
    assert got[("gpurouter_slots_total", (("pool", "gpu"),))] == 2
    assert got[("gpurouter_slots_in_use", (("pool", "cpu"),))] == 0
    gpu0 = (("gpu", "0"), ("uuid", DEVICES["devices"][0]["uuid"]))
    assert got[("gpurouter_gpu_memory_free_bytes", gpu0)] == (16376 - 1200) * 2**20
    assert got[("gpurouter_gpu_memory_total_bytes", gpu0)] == 16376 * 2**20
    assert got[("gpurouter_gpu_utilization_ratio", gpu0)] == 0.05
    assert got[("gpurouter_gpu_temperature_celsius", gpu0)] == 41
    assert got[("gpurouter_gpu_power_watts", gpu0)] == 35.5
    gpu1 = (("gpu", "1"), ("uuid", DEVICES["devices"][1]["uuid"]))
    assert ("gpurouter_gpu_power_watts", gpu1) not in got  # unknown is left out, not reported as 0
    types = _types(text)
    assert types["gpurouter_jobs"] == "counter" and types["gpurouter_wait_seconds"] == "summary"
    assert types["gpurouter_slots_in_use"] == "gauge"
    for family in parser.text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no HELP"
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in target.parent.iterdir()) == ["gpurouter.prom"]  # no temp file left


def test_without_a_gpu_there_are_no_gpu_metrics(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, "", write(tmp_path / "j.jsonl", monitored_run("whisper", 10, 900)))
    devices = tmp_path / "devices.json"
    devices.write_text('{"devices": []}')
    target = tmp_path / "gpurouter.prom"
    prometheus.write_textfile(settings, str(target), environ={"GPUROUTER_NVML_FILE": str(devices)})
    names = set(_types(target.read_text()))
    assert "gpurouter_jobs" in names and not any(name.startswith("gpurouter_gpu_") for name in names)


def test_the_file_is_replaced_whole_and_an_unwritable_directory_fails_cleanly(tmp_path: Path) -> None:
    target = tmp_path / "gpurouter.prom"
    target.write_text("old\n")
    prometheus.replace_atomically(str(target), "new 1\n")
    assert target.read_text() == "new 1\n" and [p.name for p in tmp_path.iterdir()] == ["gpurouter.prom"]
    settings_for(tmp_path)
    result = CliRunner().invoke(
        cli,
        [
            "stats",
            "--config",
            str(tmp_path / "config.toml"),
            "--prometheus",
            str(tmp_path / "missing" / "x.prom"),
        ],
    )
    assert result.exit_code == 125 and "--prometheus" in result.output


def test_since_does_not_apply_to_prometheus_counters(tmp_path: Path) -> None:
    settings_for(tmp_path)
    result = CliRunner().invoke(
        cli,
        [
            "stats",
            "--config",
            str(tmp_path / "config.toml"),
            "--since",
            "1h",
            "--prometheus",
            str(tmp_path / "x.prom"),
        ],
    )
    assert result.exit_code == 2 and not (tmp_path / "x.prom").exists()


def test_label_values_are_escaped() -> None:
    summary = {"profiles": {}, "evictions": {'a"b\\c\nd': {"ok": 1, "failed": 0}}}
    got = _samples(prometheus.exposition(summary, [], []))
    assert got[("gpurouter_evictions_total", (("victim", 'a"b\\c\nd'),))] == 1


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_example_systemd_timer_and_service_verify(tmp_path: Path) -> None:
    # `verify` wants the ExecStart binary to exist: point it at the installed launcher.
    for name in ("gpurouter-stats.service", "gpurouter-stats.timer"):
        text = (EXAMPLES / name).read_text().replace("/usr/local/bin/gpurouter", GPUROUTER)
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            str(tmp_path / "gpurouter-stats.timer"),
            str(tmp_path / "gpurouter-stats.service"),
        ],
        capture_output=True,
        text=True,
    )
    problems = [line for line in done.stderr.splitlines() if "gpurouter-stats" in line]
    assert done.returncode == 0 and problems == [], done.stderr
    timer = (EXAMPLES / "gpurouter-stats.timer").read_text()
    assert "OnUnitActiveSec=30s" in timer
    assert (
        "/var/lib/node_exporter/textfile_collector/gpurouter.prom"
        in (EXAMPLES / "gpurouter-stats.service").read_text()
    )
