"""The pure rules for real workloads (issue 14): where route args and input options land, which
side of the threshold goes to the GPU, how numbers read in reasons, and which failures of a GPU
run count as an OOM or as a GPU error. Real programs run in test_real_ffmpeg.py and test_real_whisper.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpurouter.backends.monitor import gpu_failure
from gpurouter.errors import ConfigError
from gpurouter.job import settings as settings_model
from gpurouter.job import units
from gpurouter.job.config import validate
from gpurouter.job.probe import ProbeResult, locate_input, select_input
from gpurouter.job.route import choose_route, job_argv


def profile_of(table: dict[str, object], name: str = "job") -> settings_model.Profile:
    return validate({"profiles": {name: table}}, "test.toml", None).profiles[name]


def spec_of(**route: object) -> settings_model.RouteSpec:
    return profile_of({"gpu": route}).gpu


FFMPEG = ["ffmpeg", "-y", "-i", "in.mp4", "-map", "0", "out.mp4"]


@pytest.mark.parametrize(
    ("route", "input_at", "expected"),
    [
        (
            {"args": ["-c:v", "h264_nvenc"], "args_position": "before-last"},
            None,
            ["ffmpeg", "-y", "-i", "in.mp4", "-map", "0", "-c:v", "h264_nvenc", "out.mp4"],
        ),
        (
            {
                "args": ["-c:v", "h264_nvenc"],
                "args_position": "before-last",
                "input_args": ["-hwaccel", "cuda"],
            },
            1,
            [
                "ffmpeg",
                "-y",
                "-hwaccel",
                "cuda",
                "-i",
                "in.mp4",
                "-map",
                "0",
                "-c:v",
                "h264_nvenc",
                "out.mp4",
            ],
        ),
        (
            {"args": ["-x"], "args_position": "prepend", "input_args": ["-t", "1"]},
            0,
            ["ffmpeg", "-x", "-t", "1", "-y", "-i", "in.mp4", "-map", "0", "out.mp4"],
        ),
        (
            {"args": ["-x"], "input_args": ["-t", "1"]},
            1,
            ["ffmpeg", "-y", "-t", "1", "-i", "in.mp4", "-map", "0", "out.mp4", "-x"],
        ),
        ({"input_args": ["-t", "1"]}, None, FFMPEG),
    ],
    ids=[
        "before-last-is-before-the-output",
        "input-args-before-the-flag-and-args-before-the-output",
        "prepend-and-input-args-at-one-place-route-args-first",
        "append-with-input-args",
        "no-input-no-input-args",
    ],
)
def test_route_args_and_input_args_land_where_the_profile_says(
    route: dict[str, object], input_at: int | None, expected: list[str]
) -> None:
    assert job_argv(FFMPEG, spec_of(**route), input_at) == expected


def test_before_last_with_the_input_last_puts_route_args_then_input_args_before_it() -> None:
    spec = spec_of(
        args=["--device", "cuda"], args_position="before-last", input_args=["--vad_filter", "true"]
    )
    assert job_argv(["whisper", "--model", "tiny", "audio"], spec, 2) == [
        "whisper",
        "--model",
        "tiny",
        "--device",
        "cuda",
        "--vad_filter",
        "true",
        "audio",
    ]


def test_before_last_on_a_job_with_no_arguments_appends() -> None:
    assert job_argv(["tool"], spec_of(args=["-v"], args_position="before-last")) == ["tool", "-v"]


@pytest.mark.parametrize(
    ("args", "rule", "expected"),
    [
        (["-y", "-i", "a.mp4", "-i", "logo.png", "out.mp4"], "-i", (2, 1, None)),
        (["--input=a.wav", "x"], "--input", (0, 0, None)),
        (["-version"], "-i", (None, None, "no -i argument")),
        (["-f", "lavfi", "-i", "testsrc", "out.mp4"], "-i", (3, 2, None)),
        (["a", "b"], -1, (1, 1, None)),
        (["a"], 3, (None, None, "the job has no argument 3")),
    ],
    ids=[
        "ffmpeg-first-i-wins",
        "flag-equals",
        "no-flag",
        "lavfi-source-is-an-input",
        "negative-index",
        "no-index",
    ],
)
def test_the_input_is_located_by_the_same_rule_the_probe_uses(
    args: list[str], rule: str | int, expected: tuple[int | None, int | None, str | None]
) -> None:
    assert locate_input(args, rule) == expected
    value_at = expected[0]
    chosen = select_input(args, rule)[0]
    assert chosen is None if value_at is None else args[value_at].endswith(chosen or "\0")


def test_the_last_existing_file_is_located_at_its_own_place(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(b"x")
    args = ["--model", "tiny", str(tmp_path / "a.wav"), "--flag"]
    assert locate_input(args, "last") == (2, 2, None)
    assert locate_input(["-version"], "last") == (None, None, "no existing input file among the arguments")


def probed(metric: float, kind: str = "duration") -> ProbeResult:
    return ProbeResult(input="x", metric=metric, kind=kind, via="test", problem=None)


@pytest.mark.parametrize(
    ("gpu_when", "metric", "route", "reason"),
    [
        ("below", 2.784671201814059, "gpu", "duration 2.8s < threshold 10s"),
        ("below", 12.0, "cpu", "duration 12s >= threshold 10s"),
        ("above", 2.784671201814059, "cpu", "duration 2.8s < threshold 10s: cpu (gpu_when = above)"),
        ("above", 3725.4, "gpu", "duration 1h2m5s >= threshold 10s: gpu (gpu_when = above)"),
    ],
    ids=["below-small-gpu", "below-big-cpu", "above-small-cpu", "above-big-gpu"],
)
def test_gpu_when_picks_the_side_of_the_threshold_and_the_reason_says_which(
    gpu_when: str, metric: float, route: str, reason: str
) -> None:
    profile = profile_of({"probe": "duration", "threshold": "10s", "gpu_when": gpu_when})
    chosen = choose_route(profile, probed(metric))
    assert (chosen.name, chosen.reason, chosen.spec.name) == (route, reason, route)


@pytest.mark.parametrize(
    ("value", "kind", "beside", "shown"),
    [
        (2.784671201814059, "duration", None, "2.8s"),
        (9.96, "duration", 10.0, "9.96s"),
        (90.0, "duration", None, "1m30s"),
        (769954784.0, "size", None, "734.3MiB"),
        (1536.0 * 2**20, "size", None, "1.5GiB"),
        (2073600.0, "pixels", None, "2073600"),
        (3.14159265, "number", None, "3.142"),
    ],
    ids=["seconds", "never-reads-as-the-threshold", "minutes", "mib", "gib", "pixels", "number"],
)
def test_reasons_print_numbers_for_people(value: float, kind: str, beside: float | None, shown: str) -> None:
    assert units.format_human(value, kind, beside) == shown


NVENC_FULL = b"[h264_nvenc @ 0x55] OpenEncodeSessionEx failed: out of memory (10): (no details)\n"
CT2_OOM = b"error: CUDA failed with error out of memory\n"
CT2_DRIVER = b"error: CUDA failed with error CUDA driver version is insufficient for CUDA runtime version\n"


@pytest.mark.parametrize(
    ("table", "output", "expected"),
    [
        (
            {"on_gpu_oom": "cpu", "on_gpu_error": "cpu"},
            CT2_OOM,
            ("oom", "CUDA failed with error out of memory", "oom"),
        ),
        ({"on_gpu_error": "cpu"}, CT2_DRIVER, ("gpu_error", "CUDA driver version is insufficient", "driver")),
        (
            {"on_gpu_oom": "cpu", "on_gpu_error": "cpu"},
            NVENC_FULL,
            ("gpu_error", "OpenEncodeSessionEx failed: out of memory", "nvenc_sessions"),
        ),
        ({"on_gpu_oom": "cpu", "oom_patterns": ["out of memory"]}, NVENC_FULL, None),
        ({"on_gpu_oom": "cpu"}, CT2_DRIVER, None),
        (
            {"on_gpu_error": "cpu"},
            b"[h264_nvenc @ 0x1] Cannot load libcuda.so.1\n",
            ("gpu_error", "Cannot load libcuda.so.1", "driver"),
        ),
        (
            {"on_gpu_error": "cpu", "gpu_error_patterns": ["my card fell off"]},
            b"my card fell off\n",
            ("gpu_error", "my card fell off", "custom"),
        ),
        ({"on_gpu_error": "cpu"}, b"Error opening input file\n", None),
    ],
    ids=[
        "ctranslate2-oom",
        "driver-mismatch",
        "nvenc-sessions-are-not-an-oom",
        "nvenc-sessions-never-an-oom-even-by-an-operators-pattern",
        "gpu-error-not-retried-without-on_gpu_error",
        "ffmpeg-without-libcuda",
        "an-operators-pattern",
        "an-ordinary-failure",
    ],
)
def test_a_failed_gpu_runs_output_is_an_oom_a_gpu_error_or_neither(
    table: dict[str, object], output: bytes, expected: tuple[str, str, str] | None
) -> None:
    assert gpu_failure(profile_of(table), output) == expected


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        (
            {"gpu": {"args_position": "after-first"}},
            "profiles.job.gpu.args_position",
            "must be one of append, prepend, before-last, got 'after-first'",
        ),
        (
            {"cpu": {"input_args": "-t 1"}},
            "profiles.job.cpu.input_args",
            "must be a list of strings, got '-t 1'",
        ),
        ({"no_input": "skip"}, "profiles.job.no_input", "must be one of fallback, pass, got 'skip'"),
        ({"gpu_when": "over"}, "profiles.job.gpu_when", "must be one of below, above, got 'over'"),
        ({"on_gpu_error": "retry"}, "profiles.job.on_gpu_error", "must be one of cpu, got 'retry'"),
        (
            {"gpu_error_patterns": ["ok", ""]},
            "profiles.job.gpu_error_patterns",
            "must be a list of non-empty strings, got ['ok', '']",
        ),
    ],
    ids=["args_position", "input_args", "no_input", "gpu_when", "on_gpu_error", "gpu_error_patterns"],
)
def test_a_bad_value_for_a_workload_key_names_the_file_the_key_and_the_problem(
    table: dict[str, object], key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        profile_of(table)
    assert str(caught.value) == f"test.toml: {key}: {problem}"
    assert caught.value.exit_code == 78


def test_nvenc_session_errors_are_not_among_the_default_oom_patterns() -> None:
    profile = profile_of({})
    assert not any(p.encode() in NVENC_FULL for p in profile.oom_patterns)
    assert "CUDA failed with error out of memory" in profile.oom_patterns
    assert (profile.no_input, profile.gpu_when, profile.on_gpu_error) == ("fallback", "below", None)


def test_the_library_takes_nothing_for_a_job_without_input_under_no_input_pass(tmp_path: Path) -> None:
    import gpurouter

    config_file = tmp_path / "config.toml"
    config_file.write_text(
        f'lock_dir = "{tmp_path}"\n[profiles.ffmpeg]\ninput = "-i"\nno_input = "pass"\n'
        '[profiles.ffmpeg.gpu]\nargs = ["-c:v", "h264_nvenc"]\n'
    )
    decision = gpurouter.decide("ffmpeg", ["ffmpeg", "-version"], config_file=str(config_file))
    with gpurouter.slot(decision, environ={}) as held:
        assert held.env == {} and not list(tmp_path.glob("gpu.*"))
    records = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert (
        len(records) == 1 and '"event":"pass"' in records[0] and '"argv":["ffmpeg","-version"]' in records[0]
    )
