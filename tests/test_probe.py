"""Probing inputs: native headers, ffprobe with a timeout, odd names, the cache, command probes."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import WHISPER_PROFILE, Box

from gpurouter.job import config
from gpurouter.job.probe import probe_file, select_input


def settings_for(tmp_path: Path, **overrides: object) -> config.Settings:
    document = {"lock_dir": str(tmp_path / "locks"), **overrides}
    return config.validate(document, "test", None)


def fake_ffprobe(directory: Path, body: str) -> Path:
    script = directory / "fake-ffprobe"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return script


def counting_ffprobe(directory: Path) -> tuple[Path, Path]:
    calls = directory / "ffprobe-calls"
    real = shutil.which("ffprobe")
    return fake_ffprobe(directory, f'echo "$@" >> {calls}\nexec {real} "$@"'), calls


@pytest.mark.parametrize(
    "name",
    ["-x.ogg", "a b.ogg", "a|b.ogg", 'it\'s "quoted".ogg', "http:x", "file:y.ogg"],
    ids=["leading-dash", "space", "pipe", "quotes", "url-like-no-extension", "file-prefix"],
)
def test_an_odd_name_is_probed_as_a_plain_local_file(
    tmp_path: Path, media: dict[str, Path], name: str
) -> None:
    odd = tmp_path / name
    shutil.copy(media["ogg2"], odd)
    ffprobe, calls = counting_ffprobe(tmp_path)
    result = probe_file(str(odd), "duration", settings_for(tmp_path, ffprobe=str(ffprobe)))
    assert result.metric == pytest.approx(2.0, abs=0.05)
    assert result.via == "ffprobe"
    assert calls.read_text().split()[-1:] == [f"file:{odd}"] or calls.read_text().rstrip().endswith(
        f"file:{odd}"
    )


def test_a_leading_dash_wav_is_routed_end_to_end(box: Box, media: dict[str, Path]) -> None:
    box.write_config(WHISPER_PROFILE)
    odd = box.root / "-x.wav"
    shutil.copy(media["wav2"], odd)
    done = box.run("run", "--", "transcribe", str(odd), cwd=box.root)
    assert done.returncode == 0, done.stderr
    assert box.records()[0]["metric"] == 2.0


def test_wav_duration_and_mp4_pixels_are_read_without_ffprobe(tmp_path: Path, media: dict[str, Path]) -> None:
    settings = settings_for(tmp_path, ffprobe="/nonexistent/ffprobe")
    assert probe_file(str(media["wav8"]), "duration", settings).metric == 8.0
    hd = probe_file(str(media["mp4_hd"]), "pixels", settings)
    assert (hd.metric, hd.via) == (1920 * 1080, "native:mp4")


def test_pixels_of_a_format_needing_ffprobe_come_from_its_first_video_stream(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    from conftest import make_media

    clip = make_media(tmp_path / "clip.avi", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=5:duration=1")
    result = probe_file(str(clip), "pixels", settings_for(tmp_path))
    assert (result.metric, result.via) == (320 * 240, "ffprobe")


def test_size_is_the_file_size(tmp_path: Path, media: dict[str, Path]) -> None:
    result = probe_file(str(media["wav2"]), "size", settings_for(tmp_path))
    assert result.metric == media["wav2"].stat().st_size


def test_a_text_file_has_no_duration_and_says_why(tmp_path: Path, media: dict[str, Path]) -> None:
    result = probe_file(str(media["text"]), "duration", settings_for(tmp_path))
    assert result.metric is None and "ffprobe failed" in (result.problem or "")


def test_a_missing_ffprobe_gives_no_metric_with_the_reason(tmp_path: Path, media: dict[str, Path]) -> None:
    result = probe_file(str(media["ogg2"]), "duration", settings_for(tmp_path, ffprobe="no-such-ffprobe"))
    assert result.metric is None and "ffprobe not found" in (result.problem or "")


def test_a_hanging_ffprobe_is_cut_off_by_the_timeout(tmp_path: Path, media: dict[str, Path]) -> None:
    hanging = fake_ffprobe(tmp_path, "exec sleep 60")
    began = time.monotonic()
    result = probe_file(
        str(media["ogg2"]), "duration", settings_for(tmp_path, ffprobe=str(hanging), probe_timeout="0.5s")
    )
    assert time.monotonic() - began < 5
    assert result.metric is None and "timed out after 0.5s" in (result.problem or "")


def test_an_ffprobe_printing_garbage_gives_no_metric(tmp_path: Path, media: dict[str, Path]) -> None:
    garbage = fake_ffprobe(tmp_path, "echo '{not json'")
    result = probe_file(str(media["ogg2"]), "duration", settings_for(tmp_path, ffprobe=str(garbage)))
    assert result.metric is None and "not its report" in (result.problem or "")


def test_a_fifo_input_is_not_opened_for_long_and_gives_no_metric(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "pipe.wav")
    result = probe_file(str(tmp_path / "pipe.wav"), "duration", settings_for(tmp_path))
    assert result.metric is None and "FIFO" in (result.problem or "")


def test_a_directory_input_gives_no_metric(tmp_path: Path) -> None:
    result = probe_file(str(tmp_path), "duration", settings_for(tmp_path))
    assert result.metric is None and "directory" in (result.problem or "")


def test_a_retry_of_the_same_input_probes_nothing(tmp_path: Path, media: dict[str, Path]) -> None:
    ffprobe, calls = counting_ffprobe(tmp_path)
    settings = settings_for(tmp_path, ffprobe=str(ffprobe))
    first = probe_file(str(media["ogg2"]), "duration", settings)
    second = probe_file(str(media["ogg2"]), "duration", settings)
    assert (first.via, second.via) == ("ffprobe", "cache")
    assert first.metric == second.metric
    assert len(calls.read_text().splitlines()) == 1


def test_a_changed_input_is_probed_again(tmp_path: Path, media: dict[str, Path]) -> None:
    ffprobe, _calls = counting_ffprobe(tmp_path)
    settings = settings_for(tmp_path, ffprobe=str(ffprobe))
    target = tmp_path / "changing.ogg"
    shutil.copy(media["ogg2"], target)
    probe_file(str(target), "duration", settings)
    time.sleep(0.01)
    shutil.copy(media["ogg2"], target)  # same bytes, new mtime
    assert probe_file(str(target), "duration", settings).via == "ffprobe"


def test_a_corrupt_cache_entry_is_ignored(tmp_path: Path, media: dict[str, Path]) -> None:
    settings = settings_for(tmp_path)
    probe_file(str(media["ogg2"]), "duration", settings)
    (entry,) = list((tmp_path / "locks").glob("probe-cache.*/*"))
    entry.write_text("garbage\x00")
    again = probe_file(str(media["ogg2"]), "duration", settings)
    assert again.via == "ffprobe" and again.metric == pytest.approx(2.0, abs=0.05)


def test_a_cache_dir_planted_by_someone_else_is_not_trusted(tmp_path: Path, media: dict[str, Path]) -> None:
    import os

    from gpurouter.job import probe_cache

    planted = Path(probe_cache.cache_dir(str(tmp_path / "locks")))
    planted.mkdir(parents=True, mode=0o777)
    planted.chmod(0o777)  # opened up: another user could have written it
    settings = settings_for(tmp_path)
    probe_file(str(media["ogg2"]), "duration", settings)
    assert probe_file(str(media["ogg2"]), "duration", settings).via == "ffprobe"
    assert os.listdir(planted) == []


def test_a_command_probe_gets_the_input_as_one_argument(tmp_path: Path) -> None:
    counter = fake_ffprobe(tmp_path, 'printf "%s\\n" "$#" >&2; wc -c < "$2"')
    odd = tmp_path / "a b|c;rm -rf x.txt"
    odd.write_text("12345")
    settings = settings_for(tmp_path)
    result = probe_file(str(odd), "command", settings, (str(counter), "--bytes", "{}"))
    assert (result.metric, result.via) == (5.0, "command")


def test_a_command_probe_that_prints_no_number_gives_no_metric(tmp_path: Path) -> None:
    chatty = fake_ffprobe(tmp_path, "echo hello")
    (tmp_path / "in").write_text("x")
    result = probe_file(str(tmp_path / "in"), "command", settings_for(tmp_path), (str(chatty),))
    assert result.metric is None and "not a number" in (result.problem or "")


@pytest.mark.parametrize(
    ("rule", "args", "expected"),
    [
        ("last", ["--model", "small", "{a}", "{b}", "--flag"], "{b}"),
        ("first", ["{a}", "{b}"], "{a}"),
        (0, ["{b}", "{a}"], "{b}"),
        (-1, ["{b}", "{a}"], "{a}"),
        ("--input", ["--input", "{a}", "{b}"], "{a}"),
        ("--input", ["--input={b}", "{a}"], "{b}"),
    ],
    ids=["last-existing", "first-existing", "index", "negative-index", "flag-space", "flag-equals"],
)
def test_the_input_rule_picks_the_right_argument(
    tmp_path: Path, rule: str | int, args: list[str], expected: str
) -> None:
    paths = {"{a}": str(tmp_path / "a.wav"), "{b}": str(tmp_path / "b.wav")}
    for path in paths.values():
        Path(path).write_text("")
    resolved = [paths.get(arg, arg) for arg in args]
    resolved = [arg.replace("{b}", paths["{b}"]) for arg in resolved]
    assert select_input(resolved, rule)[0] == paths.get(expected, expected)


def test_no_input_file_among_the_arguments_says_so(tmp_path: Path) -> None:
    assert select_input(["--model", "small"], "last") == (None, "no existing input file among the arguments")


def test_probe_command_prints_the_metrics(box: Box, media: dict[str, Path]) -> None:
    done = box.run("probe", "--json", str(media["mp4_small"]), str(media["wav2"]))
    assert done.returncode == 0, done.stderr
    mp4, wav = (json.loads(line) for line in done.stdout.splitlines())
    assert mp4["pixels"] == 320 * 240 and wav["duration"] == 2.0 and wav["pixels"] is None
    text = box.run("probe", str(media["wav2"])).stdout
    assert "duration: 2s (via native:wav)" in text


def test_no_input_falls_back_with_the_reason_in_the_journal(box: Box) -> None:
    box.write_config(WHISPER_PROFILE)
    done = box.run("run", "--", "transcribe", "--model", "small")
    assert done.stdout.strip().endswith("--device cpu")
    record = box.records()[0]
    assert record["metric"] is None
    assert record["reason"] == "no metric (no existing input file among the arguments): fallback cpu"
