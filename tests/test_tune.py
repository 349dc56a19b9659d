"""`gpurouter tune`: a least-squares fit of peak VRAM against the metric, the threshold under
which a job fits its budget, and `--apply` that keeps the config file's comments."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from journal_factory import T0, monitored_run, record, settings_for, write

from gpurouter.cli import cli
from gpurouter.gpu import fit
from gpurouter.job import config
from gpurouter.observe import tune

DEVICES = {
    "devices": [
        {"index": 0, "uuid": "GPU-0", "name": "RTX A4000", "memory_total_mib": 16376, "memory_used_mib": 3000}
    ]
}
CONFIG = """\
# gpurouter on the transcription box
lock_dir = "{lock_dir}"   # shared by every user
journal = "{journal}"

[profiles.whisper]        # the whisper-ctranslate2 job
probe = "duration"
threshold = "1h"          # picked by hand in March
wait = "block"

[profiles.whisper.gpu]
args = ["--device", "cuda"]   # float16 on the A4000
slots = 2
"""


def _curve(minutes: list[float], start: float = T0) -> list[dict]:
    """Monitored GPU runs whose peak follows 500 MiB + 40 MiB per minute of input, exactly."""
    records = []
    for n, m in enumerate(minutes):
        records += monitored_run("whisper", m, 500 + 40 * m, start + n * 1000, run_id=f"r{n}")  # type: ignore[arg-type]
    return records


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    devices = tmp_path / "devices.json"
    devices.write_text(json.dumps(DEVICES))
    monkeypatch.setenv("GPUROUTER_NVML_FILE", str(devices))
    (tmp_path / "locks").mkdir()
    journal = tmp_path / "locks" / "journal.jsonl"
    (tmp_path / "config.toml").write_text(CONFIG.format(lock_dir=tmp_path / "locks", journal=journal))
    write(journal, _curve([5, 12, 20, 33, 41, 58, 75]))
    return tmp_path


def _tune(box: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["tune", "whisper", "--config", str(box / "config.toml"), *args])
    return result.exit_code, result.output


def test_a_line_through_exact_points_is_found_exactly() -> None:
    model = fit.fit([(60 * m, 500 + 40 * m) for m in (5, 10, 30)])
    assert model.slope == pytest.approx(40 / 60) and model.intercept == pytest.approx(500)
    assert (model.r2, model.max_residual_mib, model.n) == (pytest.approx(1.0), pytest.approx(0, abs=1e-9), 3)
    assert (model.max_metric, model.max_metric_peak_mib, model.min_metric) == (1800, 1700, 300)


def test_the_threshold_keeps_the_worst_under_estimate_as_margin() -> None:
    model = fit.fit(
        [(0, 1000), (10, 1100), (20, 1000), (30, 1100)]
    )  # noisy: 1020 + 2x misses (10, 1100) by 60
    assert (model.slope, model.intercept, model.max_residual_mib) == (
        pytest.approx(2),
        pytest.approx(1020),
        pytest.approx(60),
    )
    assert fit.predict_peak_mib(model, 10) == pytest.approx(model.intercept + model.slope * 10 + 60)
    assert fit.threshold_for(model, 2000) == pytest.approx((2000 - model.intercept - 60) / model.slope)


@pytest.mark.parametrize(
    ("points", "budget", "expected"),
    [
        pytest.param([(1, 500), (2, 500), (3, 500)], 600, math.inf, id="flat-and-fits: any job fits"),
        pytest.param([(1, 500), (2, 500), (3, 500)], 400, 0.0, id="flat-and-too-big: none fits"),
        pytest.param([(1, 500), (2, 600), (3, 700)], 300, 0.0, id="even-metric-0-is-too-big"),
    ],
)
def test_edge_budgets(points: list[tuple[float, float]], budget: float, expected: float) -> None:
    assert fit.threshold_for(fit.fit(points), budget) == expected


def test_a_fit_needs_two_distinct_metrics() -> None:
    with pytest.raises(ValueError):
        fit.fit([(5, 100)])
    with pytest.raises(ValueError):
        fit.fit([(5, 100), (5, 200)])


def test_tune_proposes_the_threshold_under_which_a_job_fits_device_total_less_cushion_over_slots(
    box: Path,
) -> None:
    code, output = _tune(box)
    assert code == 0, output
    # (16376 MiB - 256 cushion) / 2 slots = 8060 MiB per job; 500 + 40 m <= 8060  ->  m <= 189 minutes
    assert "budget:     8060 MiB per job = (GPU 0 RTX A4000 16376 MiB - cushion 256) / 2 slot(s)" in output
    assert "threshold:  189m   (now 1h; GPU when the metric is below it)" in output
    assert "fit:        peak VRAM = 500 MiB + 40.0 MiB per minute   (R² 1.000)" in output
    assert "the largest run that fit was 1h15m, peak 3500 MiB" in output
    assert "profile whisper: 7 monitored GPU runs fitted" in output
    assert "extrapolated beyond the largest run seen (1h15m)" in output
    data = json.loads(_tune(box, "--json")[1])
    assert (data["threshold"], data["threshold_text"], data["runs"]) == (189 * 60, "189m", 7)
    assert data["fit"]["slope"] == pytest.approx(40 / 60)


def test_the_budget_leaves_out_what_the_gpus_other_users_held_beside_the_runs(box: Path) -> None:
    # issue 15: a 4.5 GiB resident and a trainer's 6 GiB were on the card beside some runs. The
    # budget was (16376 - 256) / 2 = 8060 MiB and proposed 189 minutes where ~54 is the edge.
    journal = box / "locks" / "journal.jsonl"
    busy = [
        r
        for n, (minutes, others) in enumerate(((20, 4608), (33, 10752), (41, 4608)))
        for r in monitored_run(
            "whisper",
            minutes,
            500 + 40 * minutes,
            T0 + 20000 + n * 1000,
            run_id=f"b{n}",
            others_vram_mib=others,
        )
    ]
    write(journal, _curve([5, 12, 58, 75]) + busy)
    code, output = _tune(box)
    assert code == 0, output
    # (16376 - 256 - 10752) / 2 = 2684 MiB per job; 500 + 40 m <= 2684  ->  m <= 54.6 minutes
    assert (
        "budget:     2684 MiB per job = (GPU 0 RTX A4000 16376 MiB - cushion 256 - 10752 held by other "
        "users, the most seen beside 3 monitored run(s)) / 2 slot(s)"
    ) in output
    assert "threshold:  54m" in output
    data = json.loads(_tune(box, "--json")[1])
    assert (data["others_mib"], data["threshold_text"]) == (10752, "54m")


@pytest.mark.parametrize("others", [-5, "10752", 2e6, float("nan"), True])
def test_an_others_figure_that_is_no_plausible_mib_is_left_out_of_the_budget(
    box: Path, others: object
) -> None:
    journal = box / "locks" / "journal.jsonl"
    odd = monitored_run("whisper", 30, 1700, T0 + 20000, run_id="odd", others_vram_mib=others)
    write(journal, _curve([5, 12, 20, 33, 41, 58, 75]) + odd)
    data = json.loads(_tune(box, "--json")[1])
    assert (data["budget_mib"], data["others_mib"], data["threshold_text"]) == (8060, None, "189m")


def test_a_configured_vram_mib_is_the_budget(box: Path) -> None:
    text = (box / "config.toml").read_text().replace("slots = 2\n", "slots = 2\nvram_mib = 6000\n")
    (box / "config.toml").write_text(text)
    data = json.loads(_tune(box, "--json")[1])
    assert data["budget_mib"] == 6000 and data["budget_why"] == "vram_mib = 6000 (configured)"
    assert data["threshold_text"] == "137m"  # (6000 - 500) / 40 = 137.5 minutes, rounded down


def test_a_gpu_oom_below_the_fitted_threshold_caps_it(box: Path) -> None:
    with (box / "locks" / "journal.jsonl").open("a") as stream:
        stream.write(json.dumps(record("oom", "whisper", "gpu", T0 + 9999, 150 * 60.0, run_id="x")) + "\n")
    data = json.loads(_tune(box, "--json")[1])
    assert data["threshold_text"] == "150m" and data["capped_by_oom"] == 9000
    assert any("ran out of memory" in note for note in data["notes"])


def test_failed_runs_cpu_runs_and_other_profiles_are_left_out(box: Path) -> None:
    extra = monitored_run("whisper", 100, 100000, T0 + 50000, run_id="f", exit_status=1)
    extra += monitored_run("whisper", 100, 100000, T0 + 60000, run_id="c", route="cpu")
    extra += monitored_run("other", 100, 100000, T0 + 70000, run_id="o")
    extra += monitored_run("whisper", 100, 100000, T0 + 80000, run_id="m", gpus=[0, 1])  # summed over 2 GPUs
    with (box / "locks" / "journal.jsonl").open("a") as stream:
        stream.writelines(json.dumps(r) + "\n" for r in extra)
    data = json.loads(_tune(box, "--json")[1])
    assert (data["runs"], data["skipped"], data["threshold_text"]) == (7, 2, "189m")


def test_fewer_than_three_runs_are_refused_with_exit_1(box: Path) -> None:
    write(box / "locks" / "journal.jsonl", _curve([5, 10]))
    code, output = _tune(box)
    assert code == 1
    assert (
        "whisper: 2 monitored GPU run(s)" in output and "at least 3" in output and "monitor = true" in output
    )


def test_without_a_gpu_or_vram_mib_tune_asks_for_a_budget(box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUROUTER_NVML_FILE", str(box / "missing.json"))
    code, output = _tune(box)
    assert code == 1 and "--budget-mib" in output
    code, output = _tune(box, "--budget-mib", "4500")
    assert code == 0 and "threshold:  100m" in output  # (4500 - 500) / 40


def test_apply_writes_the_threshold_keeping_comments_and_a_backup(box: Path) -> None:
    path = box / "config.toml"
    before = path.read_text()
    code, output = _tune(box, "--apply")
    assert code == 0, output
    assert output.splitlines()[-1] == f'applied:    threshold = "189m" in {path} (backup {path}.bak)'
    assert (box / "config.toml.bak").read_text() == before
    after = path.read_text()
    assert after == before.replace(
        'threshold = "1h"          # picked by hand in March',
        'threshold = "189m"          # picked by hand in March',
    )
    assert config.load(str(path)).profile("whisper").threshold == 189 * 60


def test_apply_adds_the_key_to_a_profile_that_has_none(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        textwrap.dedent("""\
        # top comment
        [profiles.whisper]
        probe = "duration"   # no threshold yet: invalid on its own, so give one
        threshold = 10
        """)
    )
    tune.apply(str(path), "whisper", "45m")
    text = path.read_text()
    assert text.startswith("# top comment\n") and 'threshold = "45m"' in text and "# no threshold yet" in text


def test_apply_refuses_an_edit_that_would_not_validate(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[profiles.x]\n# no probe: a threshold would be invalid\n")
    with pytest.raises(tune.TuneRefused, match="would not be valid"):
        tune.apply(str(path), "x", "10m")
    assert path.read_text() == "[profiles.x]\n# no probe: a threshold would be invalid\n"
    assert not (tmp_path / "c.toml.bak").exists()


def test_tune_reads_only_the_monitored_runs_not_every_line(tmp_path: Path) -> None:
    noise = [record("start", "whisper", "gpu", T0 + i) for i in range(500)]
    settings = settings_for(tmp_path, "", write(tmp_path / "j.jsonl", noise + _curve([5, 10, 20])))
    found = fit.runs(settings, "whisper")
    assert sorted(found["points"]) == [(300.0, 700.0), (600.0, 900.0), (1200.0, 1300.0)]
