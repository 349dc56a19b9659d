"""`gpurouter stats`: figures from the journal and its rotated files, and advice that points
the right way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from journal_factory import T0, monitored_run, record, settings_for, touch, write

from gpurouter.cli import cli
from gpurouter.job import journal_reader
from gpurouter.observe import stats

GPU_FAIL_FAST = """
[profiles.whisper]
probe = "duration"
threshold = "1h"
wait = "fail"
"""


def _summary(tmp_path: Path, records: list[dict], body: str = "", **kwargs: object) -> dict:
    path = write(tmp_path / "journal.jsonl", records)
    return stats.summarise(settings_for(tmp_path, body, path), **kwargs)  # type: ignore[arg-type]


def test_jobs_are_counted_by_profile_and_route_and_refusals_by_pool(tmp_path: Path) -> None:
    records = [record("start", "whisper", "gpu", T0 + i, waited_s=float(i)) for i in range(6)]
    records += [record("start", "whisper", "cpu", T0 + 10 + i) for i in range(2)]
    records += [record("busy", "whisper", "gpu", T0 + 20 + i) for i in range(2)]
    records += [record("busy", "ffmpeg", "cpu", T0 + 30)]
    summary = _summary(tmp_path, records)
    whisper = summary["profiles"]["whisper"]
    assert (whisper["gpu"], whisper["cpu"], whisper["busy"], whisper["busy_gpu"]) == (6, 2, 2, 2)
    assert whisper["busy_rate"] == pytest.approx(2 / 10)
    assert whisper["busy_by_pool"] == {"gpu": 2}
    assert (whisper["wait_p50_s"], whisper["wait_p95_s"], whisper["wait_max_s"]) == (2.0, 5.0, 5.0)
    assert summary["pools"] == {
        "cpu": {"route": "cpu", "starts": 2, "busy": 1, "busy_rate": pytest.approx(1 / 3, abs=1e-4)},
        "gpu": {"route": "gpu", "starts": 6, "busy": 2, "busy_rate": 0.25},
    }
    assert (summary["records"], summary["lines"]) == (11, 11)


def _foreign(rec: dict) -> str:
    """The same record as another writer would lay it out: spaces, keys in another order."""
    return json.dumps(dict(reversed(list(rec.items()))), indent=None)


def test_lines_decoded_as_json_and_lines_cut_from_the_bytes_give_the_same_figures(tmp_path: Path) -> None:
    records = [record("start", "whisper", "gpu", T0 + i, waited_s=i / 10) for i in range(20)]
    records += [record("busy", "whisper", "cpu", T0 + 30 + i, pool="cpu-big") for i in range(5)]
    records += [record("escape", "whisper", "cpu", T0 + 40), record("refused", "whisper", "cpu", T0 + 41)]
    records += monitored_run("whisper", 10, 900, T0 + 50) + monitored_run(
        "whisper", 30, None, T0 + 55, exit_status=1
    )
    records += [record("oom", "whisper", "gpu", T0 + 56, 1800.0, run_id="00aa11bb22cc")]
    records += monitored_run("whisper", 30, None, T0 + 60, route="cpu", retry_of="00aa11bb22cc")
    records += [
        record("end", "whisper", "gpu", T0 + 70, slurm_job_id=7, exit=0, signal=None, elapsed_s=12.5),
        record("end", "whisper", "cpu", T0 + 80, duration_s=3.25),
    ]  # slurm's and the library's
    fast = _summary(tmp_path, records)
    assert fast["decoded"] == 1  # only the `oom` record went through the JSON decoder
    (tmp_path / "journal.jsonl").write_text("".join(_foreign(r) + "\n" for r in records))
    slow = stats.summarise(settings_for(tmp_path, "", tmp_path / "journal.jsonl"))
    assert slow["decoded"] == len(records)
    for key in ("profiles", "pools", "waits", "records", "first", "last"):
        assert fast[key] == slow[key], key


def test_a_quote_in_the_arguments_cannot_fake_a_pool(tmp_path: Path) -> None:
    rec = record(
        "busy",
        "whisper",
        "gpu",
        T0,
        argv=["whisper", 'x","pool":"evil', "in.wav"],
        input='in","pool":"evil.wav',
    )
    summary = _summary(tmp_path, [rec, rec])
    assert list(summary["pools"]) == ["gpu"]
    assert summary["profiles"]["whisper"]["busy_by_pool"] == {"gpu": 2}


def test_an_escaped_profile_name_is_read_and_filtered_exactly(tmp_path: Path) -> None:
    odd = 'caf\u00e9 "tab"\there'
    records = [record("start", odd, "gpu", T0), record("start", "plain", "gpu", T0 + 1)]
    assert list(_summary(tmp_path, records)["profiles"]) == sorted([odd, "plain"])
    only = _summary(tmp_path, records, profile=odd)
    assert list(only["profiles"]) == [odd] and only["records"] == 1


def test_torn_and_foreign_lines_are_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "journal.jsonl", [record("start", "whisper", "gpu", T0)])
    with path.open("a") as stream:
        stream.write('not json at all\n[1, 2]\n{"event": 3}\n')
        stream.write(
            '{"v":1,"ts":"2026-09-21T14:13:20.000+00:00","event":"start","profile":"whisper","route":"g'
        )
    summary = stats.summarise(settings_for(tmp_path, "", path))
    assert summary["profiles"]["whisper"]["gpu"] == 1
    assert (summary["records"], summary["lines"]) == (1, 5)


def test_rotated_journals_are_read_oldest_first_gzip_included(tmp_path: Path) -> None:
    live = tmp_path / "journal.jsonl"
    write(tmp_path / "journal.jsonl.2.gz", [record("start", "whisper", "gpu", T0)], compress=True)
    write(tmp_path / "journal.jsonl.1", [record("start", "whisper", "cpu", T0 + 100)])
    write(tmp_path / "journal.jsonl-20260922.gz", [record("busy", "whisper", "gpu", T0 + 50)], compress=True)
    write(live, [record("start", "whisper", "gpu", T0 + 200)])
    (tmp_path / "journal.jsonl.bak").write_text("ignored\n")
    touch(tmp_path / "journal.jsonl.2.gz", T0 + 10)
    touch(tmp_path / "journal.jsonl-20260922.gz", T0 + 60)
    touch(tmp_path / "journal.jsonl.1", T0 + 110)
    assert [Path(p).name for p in journal_reader.journal_files(str(live))] == [
        "journal.jsonl.2.gz",
        "journal.jsonl-20260922.gz",
        "journal.jsonl.1",
        "journal.jsonl",
    ]
    summary = stats.summarise(settings_for(tmp_path, "", live))
    whisper = summary["profiles"]["whisper"]
    assert (whisper["gpu"], whisper["cpu"], whisper["busy"]) == (2, 1, 1)
    assert summary["first"] == record("start", "x", at=T0)["ts"]


def test_since_counts_only_recent_records_and_skips_old_rotated_files(tmp_path: Path) -> None:
    # ~2000 records over 2000 minutes: big enough (> 64 KiB) for the bisection to seek.
    records = [record("start", "whisper", "gpu" if i % 3 else "cpu", T0 + 60 * i) for i in range(2000)]
    live = write(tmp_path / "journal.jsonl", records)
    old = write(tmp_path / "journal.jsonl.1", [record("start", "whisper", "gpu", T0 - 86400)])
    touch(old, T0 - 86400)
    assert live.stat().st_size > 1 << 17
    now = T0 + 60 * 1999
    summary = stats.summarise(settings_for(tmp_path, "", live), since_s=3 * 3600, now=now)
    expected = [r for i, r in enumerate(records) if T0 + 60 * i >= now - 3 * 3600]
    assert summary["records"] == len(expected) == 181
    assert summary["profiles"]["whisper"]["cpu"] == sum(1 for r in expected if r["route"] == "cpu")
    assert summary["lines"] < 1000  # it seeked instead of reading every line
    assert str(old) not in summary["files"]


def test_monitored_runs_give_durations_peak_vram_and_oom_fallbacks(tmp_path: Path) -> None:
    records = monitored_run("whisper", 10, 900, T0) + monitored_run(
        "whisper", 20, 1300, T0 + 1000, run_id="b"
    )
    records += monitored_run("whisper", 30, None, T0 + 2000, run_id="c", exit_status=1)
    records.append(
        record(
            "oom",
            "whisper",
            "gpu",
            T0 + 2100,
            1800.0,
            run_id="c",
            pattern="CUDA out of memory",
            exit_status=1,
        )
    )
    records += monitored_run("whisper", 30, None, T0 + 2200, route="cpu", run_id="d", retry_of="c")
    row = _summary(tmp_path, records)["profiles"]["whisper"]
    assert row["duration_s"]["gpu"]["n"] == 3 and row["duration_s"]["cpu"]["n"] == 1
    assert (row["peak_vram_mib"]["n"], row["peak_vram_mib"]["max"]) == (2, 1300.0)
    assert (row["oom"], row["oom_min_metric"], row["oom_retries"], row["oom_retries_ok"]) == (1, 1800.0, 1, 1)
    assert row["monitored"] == 4


def test_evictions_are_counted_by_victim(tmp_path: Path) -> None:
    records = [
        record(
            "evict",
            "comfy",
            "gpu",
            T0 + i,
            victim="ollama",
            ok=i != 2,
            problem=None,
            device=0,
            free_mib_before=1000,
            free_mib_after=9000,
            asked_by="comfy",
        )
        for i in range(3)
    ]
    assert _summary(tmp_path, records)["evictions"] == {"ollama": {"ok": 2, "failed": 1}}


# --- advice: the direction matters ------------------------------------------------------------


def test_gpu_pool_refusals_under_fail_fast_advise_waiting_not_a_higher_threshold(tmp_path: Path) -> None:
    records = [record("start", "whisper", "gpu", T0 + i) for i in range(5)]
    records += [record("busy", "whisper", "gpu", T0 + 10 + i) for i in range(5)]
    advice = _summary(tmp_path, records, GPU_FAIL_FAST)["advice"]
    assert len(advice) == 1
    assert 'wait = "block"' in advice[0] and "more GPU slots if VRAM allows" in advice[0]
    assert "raise the threshold" not in advice[0]


def test_gpu_pool_refusals_after_a_bounded_wait_advise_a_longer_wait_or_lower_threshold(
    tmp_path: Path,
) -> None:
    records = [record("start", "whisper", "gpu", T0 + i) for i in range(5)]
    records += [record("busy", "whisper", "gpu", T0 + 10 + i) for i in range(5)]
    advice = _summary(tmp_path, records, GPU_FAIL_FAST.replace('"fail"', '"10m"'))["advice"]
    assert len(advice) == 1 and "10m" in advice[0] and "lower threshold" in advice[0]


def test_cpu_pool_refusals_beyond_cpu_runs_advise_a_higher_threshold(tmp_path: Path) -> None:
    records = [record("start", "whisper", "cpu", T0 + i) for i in range(2)]
    records += [record("busy", "whisper", "cpu", T0 + 10 + i) for i in range(6)]
    advice = _summary(tmp_path, records, GPU_FAIL_FAST)["advice"]
    assert len(advice) == 1
    assert (
        "raise the threshold (more jobs to the GPU)" in advice[0] and "CPU slots if RAM allows" in advice[0]
    )


def test_gpu_ooms_advise_a_lower_threshold(tmp_path: Path) -> None:
    records = [record("oom", "whisper", "gpu", T0, 2700.0, run_id="a", pattern="CUDA out of memory")]
    advice = _summary(tmp_path, records, GPU_FAIL_FAST)["advice"]
    assert (
        len(advice) == 1 and "lower the threshold" in advice[0] and "45m" in advice[0] and "1h" in advice[0]
    )


def test_many_escapes_advise_more_slots_or_a_longer_max_wait(tmp_path: Path) -> None:
    records = [record("start", "whisper", "cpu", T0 + i, escaped=True) for i in range(5)]
    records += [record("escape", "whisper", "cpu", T0 + i, waited_s=600.0) for i in range(4)]
    advice = _summary(tmp_path, records, GPU_FAIL_FAST + 'max_wait = "10m"\n')["advice"]
    assert len(advice) == 1 and "longer max_wait" in advice[0] and "(10m)" in advice[0]


def test_a_quiet_journal_gets_no_advice(tmp_path: Path) -> None:
    records = [record("start", "whisper", "gpu", T0 + i) for i in range(50)]
    records += [record("busy", "whisper", "gpu", T0 + 100), record("busy", "whisper", "cpu", T0 + 101)]
    assert _summary(tmp_path, records, GPU_FAIL_FAST)["advice"] == []


# --- the command -------------------------------------------------------------------------------


def test_stats_command_reads_the_named_journals_and_prints_tables_and_advice(tmp_path: Path) -> None:
    records = [record("start", "whisper", "gpu", T0 + i) for i in range(5)]
    records += [record("busy", "whisper", "gpu", T0 + 10 + i) for i in range(5)] + monitored_run(
        "whisper", 10, 900
    )
    path = write(tmp_path / "elsewhere.jsonl", records)
    settings_for(tmp_path, GPU_FAIL_FAST)
    config = str(tmp_path / "config.toml")
    result = CliRunner().invoke(cli, ["stats", "--config", config, "--journal", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"journal: {path}  lines: 12  records: 12")
    assert any(line.split()[:4] == ["whisper", "6", "0", "5"] for line in lines)
    assert any(line.split()[:2] == ["gpu", "gpu"] for line in lines)
    assert any(line.startswith("whisper") and "900/900 MiB" in line for line in lines)
    assert lines[-1].startswith("advice: whisper: 5 refusals on the GPU pool")
    data = json.loads(
        CliRunner().invoke(cli, ["stats", "--config", config, "--journal", str(path), "--json"]).output
    )
    assert data["files"] == [str(path)] and data["profiles"]["whisper"]["busy"] == 5


def test_stats_command_rejects_a_bad_since_with_exit_2(tmp_path: Path) -> None:
    settings_for(tmp_path)
    result = CliRunner().invoke(cli, ["stats", "--config", str(tmp_path / "config.toml"), "--since", "soon"])
    assert result.exit_code == 2 and "--since" in result.output


# --- import discipline ------------------------------------------------------------------------

OBSERVABILITY = (
    "gpurouter.observe.stats",
    "gpurouter.observe.prometheus",
    "gpurouter.observe.top",
    "gpurouter.observe.report",
    "gpurouter.observe.tune",
)
HEAVY_EXTRAS = ("PIL", "tomlkit", "prometheus_client", "rich", "matplotlib")


def test_run_and_the_interception_form_load_none_of_the_observability_modules(tmp_path: Path) -> None:
    from test_architecture import _modules_loaded_by

    loaded = _modules_loaded_by(["gpurouter", "run", "--route", "cpu", "--", "/bin/true"], tmp_path)
    assert "gpurouter.job.runner" in loaded
    assert sorted(set(OBSERVABILITY + HEAVY_EXTRAS) & loaded) == []


def test_heavy_extras_are_imported_only_inside_functions() -> None:
    import ast

    from test_architecture import SRC

    for name in ("stats.py", "prometheus.py", "top.py", "report.py", "charts.py", "drawing.py", "tune.py"):
        tree = ast.parse((SRC / "observe" / name).read_text())
        for node in tree.body:  # module level only: function bodies may import them
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in (*HEAVY_EXTRAS, "click") for n in names), (name, names)


def test_the_cli_loads_no_observability_module_until_a_command_needs_it() -> None:
    import subprocess
    import sys

    code = "import sys, gpurouter.cli; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert sorted(set(OBSERVABILITY + HEAVY_EXTRAS) & set(done.stdout.split())) == []
