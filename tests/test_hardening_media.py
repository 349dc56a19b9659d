"""Bad media: truncated, zero-length, huge-header and misnamed files, directories, FIFOs and
devices as input, and an ffprobe that is missing, crashes, hangs, floods or prints garbage.

Every case ends in a run of the job: with a correct metric where one can be had, else the
profile's fallback route with the reason in the journal. Never a traceback, never a hang.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path

import pytest
from conftest import Box
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hardening_support import assert_no_traceback, journal_lines, record_figures

from gpurouter.job import config
from gpurouter.job.probe import probe_file

PROFILE = """
[profiles.transcribe]
probe = "duration"
threshold = "5s"
input = {input}
[profiles.transcribe.gpu]
args = ["--device", "cuda"]
[profiles.transcribe.cpu]
args = ["--device", "cpu"]
"""
FUZZ_EXAMPLES = int(os.environ.get("GPUROUTER_FUZZ_EXAMPLES", "60"))


def routed(
    box: Box, *args: str, ffprobe: str | None = None, input_rule: str = '"last"', timeout: float = 30
) -> dict:  # type: ignore[type-arg]
    """Run the job through gpurouter; return its start record (after checking the job ran)."""
    body = (
        f'ffprobe = "{ffprobe}"\nprobe_timeout = "1s"\n' if ffprobe else 'probe_timeout = "5s"\n'
    ) + PROFILE
    box.write_config(body.format(input=input_rule))
    before = len(journal_lines(box.journal))
    began = time.monotonic()
    done = box.run("run", "--", "transcribe", *args, timeout=timeout)
    assert time.monotonic() - began < 15
    assert done.returncode == 0, done.stderr
    assert_no_traceback(done.stderr)
    assert done.stderr == ""
    (record,) = journal_lines(box.journal)[before:]
    assert record["event"] == "start"
    assert done.stdout.strip().endswith(f"--device {'cuda' if record['route'] == 'gpu' else 'cpu'}")
    return record


def assert_fallback(record: dict, *words: str) -> None:  # type: ignore[type-arg]
    assert record["metric"] is None and record["route"] == "cpu", record
    assert record["reason"].startswith("no metric (") and record["reason"].endswith("): fallback cpu"), (
        record["reason"]
    )
    for word in words:
        assert word in record["reason"], record["reason"]


def assert_correct_or_fallback(record: dict, expected: float | None = None) -> str:  # type: ignore[type-arg]
    """A metric (right if known, routed by the 5 s threshold), or the fallback with a reason."""
    if record["metric"] is None:
        assert_fallback(record)
        return "fallback"
    metric = record["metric"]
    assert isinstance(metric, (int, float)) and 0 <= metric < float("inf")
    if expected is not None:
        assert metric == pytest.approx(expected, abs=0.06)
    assert record["route"] == ("gpu" if metric < 5 else "cpu")
    return "metric"


def _cut(source: Path, target: Path, keep: int) -> Path:
    target.write_bytes(source.read_bytes()[:keep])
    return target


def test_a_zero_length_input_falls_back_saying_it_is_empty(box: Box) -> None:
    empty = box.root / "empty.wav"
    empty.touch()
    assert_fallback(routed(box, str(empty)), "is empty")


@pytest.mark.parametrize("name", ["wav2", "ogg2", "mp4_small"])
@pytest.mark.parametrize("keep", [8, 44, 300, 0.5])
def test_a_truncated_input_gets_a_right_metric_or_the_fallback(
    box: Box, media: dict[str, Path], name: str, keep: float
) -> None:
    source = media[name]
    size = source.stat().st_size
    cut = _cut(source, box.root / f"cut{source.suffix}", int(size * keep) if keep < 1 else int(keep))
    outcome = assert_correct_or_fallback(routed(box, str(cut)))
    record_figures("media", cases=1, kind=f"truncated {name}", outcome=outcome)


def _wav(data_size: int, payload: bytes, rate: int = 8000) -> bytes:
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVE"
        + fmt
        + b"data"
        + struct.pack("<I", data_size)
        + payload
    )


HUGE_HEADERS = {
    # a data chunk claiming 4 GiB in a 1 s file: the audio present is what counts (ffprobe agrees)
    "wav-claims-4GiB": (_wav(0xFFFFFFF0, b"\0" * 16000), 1.0),
    # a 64-bit mp4 box claiming an exabyte
    "mp4-largesize-exabyte": (
        struct.pack(">I4s", 24, b"ftyp")
        + b"isom"
        + b"\0" * 12
        + struct.pack(">I4sQ", 1, b"moov", 1 << 60)
        + b"\0" * 64,
        None,
    ),
    # an ID3v2 tag claiming 256 MB in front of nothing
    "id3-claims-256MB": (b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f" + b"\0" * 2048, None),
    # a Matroska EBML header with an 8-byte size of 2^56-2
    "ebml-claims-huge": (b"\x1a\x45\xdf\xa3\x01\xff\xff\xff\xff\xff\xff\xfe" + b"\0" * 512, None),
    # a FLAC STREAMINFO claiming 2^36-1 samples at 1 Hz
    "flac-claims-2-million-years": (
        b"fLaC\x00\x00\x00\x22" + b"\0" * 10 + b"\x00\x00\x1f\xff\xff\xff\xff\xff" + b"\0" * 16 + b"\0" * 64,
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(HUGE_HEADERS))
def test_a_huge_header_is_never_trusted_beyond_the_file(box: Box, name: str) -> None:
    data, expected = HUGE_HEADERS[name]
    hostile = box.root / f"{name}.bin"
    hostile.write_bytes(data)
    outcome = assert_correct_or_fallback(routed(box, str(hostile)), expected)
    record_figures("media", cases=1, kind=f"huge header {name}", outcome=outcome)


@pytest.mark.parametrize(
    ("name", "suffix", "expected"),
    [
        ("wav2", ".mp4", 2.0),
        ("wav8", ".mp3", 8.0),
        ("mp4_small", ".wav", 1.0),
        ("ogg2", ".flac", 2.0),
        ("text", ".wav", None),
        ("mp4_hd", "", 1.0),
    ],
)
def test_a_misnamed_input_is_measured_by_its_content(
    box: Box, media: dict[str, Path], name: str, suffix: str, expected: float | None
) -> None:
    misnamed = box.root / f"input{suffix}"
    shutil.copy(media[name], misnamed)
    record = routed(box, str(misnamed))
    if expected is None:
        assert_fallback(record, "ffprobe failed")
    else:
        assert record["metric"] == pytest.approx(expected, abs=0.06)
    record_figures("media", cases=1, kind=f"misnamed {name} as {suffix or 'no suffix'}")


def test_a_directory_is_never_taken_for_the_input(box: Box, media: dict[str, Path]) -> None:
    folder = box.root / "folder.wav"
    folder.mkdir()
    assert_fallback(routed(box, str(folder)), "no existing input file")  # "last" picks regular files only
    assert_fallback(routed(box, str(folder), input_rule="0"), "is a directory")
    assert_fallback(routed(box, "--input", str(folder), input_rule='"--input"'), "is a directory")
    # a directory after the real input does not hide it
    assert routed(box, str(media["wav2"]), str(folder))["metric"] == 2.0


def test_a_fifo_or_a_device_as_input_neither_hangs_nor_is_read(box: Box) -> None:
    fifo = box.root / "pipe.wav"
    os.mkfifo(fifo)
    assert_fallback(routed(box, str(fifo), input_rule="0"), "FIFO")
    assert_fallback(routed(box, "/dev/zero", input_rule="0"), "character device")


def fake_ffprobe(box: Box, body: str) -> str:
    script = box.root / "fake-ffprobe"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


FFPROBES = {
    "missing": (None, "ffprobe not found"),
    "crashing": ("kill -SEGV $$", "killed by signal 11"),
    "exiting-1": ("echo 'Invalid data found when processing input' >&2; exit 1", "Invalid data found"),
    "hanging": ("exec sleep 30", "timed out after 1s"),
    "hanging-wrapper": ("sleep 30", "timed out after 1s"),  # its child keeps the pipe open
    "garbage": ("echo '{not json'", "not its report"),
    "flooding": ("exec yes garbage", "printed more than 1 MiB"),
    "json-not-compact": ('echo \'{"format": [1, 2], "streams": 7}\'', "not its report"),
    "wrong-sections": ("echo 'program|x=1'", "not its report"),
    "no-duration": ("echo 'format|duration=N/A'", "found no duration"),
    "negative-duration": ("echo 'format|duration=-5'", "found no duration"),
    "nan-duration": (
        "echo 'stream|codec_type=audio|duration=nan'; echo 'format|duration=nan'",
        "found no duration",
    ),
    "binary": ("head -c 4096 /dev/urandom", ""),
}


@pytest.mark.parametrize("case", sorted(FFPROBES))
def test_a_broken_ffprobe_gives_the_fallback_with_the_reason(
    box: Box, media: dict[str, Path], case: str
) -> None:
    body, reason = FFPROBES[case]
    ffprobe = str(box.root / "no-such-ffprobe") if body is None else fake_ffprobe(box, body)
    clip = box.root / "clip.ogg"  # ogg: no native reader, ffprobe is needed
    shutil.copy(media["ogg2"], clip)
    began = time.monotonic()
    record = routed(box, str(clip), ffprobe=ffprobe)
    assert time.monotonic() - began < 5
    assert_fallback(record, reason)
    record_figures("media", cases=1, kind=f"ffprobe {case}")


def test_a_crashed_ffprobe_is_not_cached_against_the_input(box: Box, media: dict[str, Path]) -> None:
    clip = box.root / "clip.ogg"
    shutil.copy(media["ogg2"], clip)
    assert_fallback(routed(box, str(clip), ffprobe=fake_ffprobe(box, "kill -KILL $$")), "killed by signal 9")
    healed = routed(
        box, str(clip)
    )  # the OOM killer gone, ffprobe works again: measured, not a cached failure
    assert healed["metric"] == pytest.approx(2.0, abs=0.05) and healed["via"] == "ffprobe"


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzzed_media_bytes_give_a_sane_metric_or_a_reason(
    tmp_path: Path, media: dict[str, Path], data: st.DataObject
) -> None:
    """Real media, cut and with bytes overwritten: never an exception, a metric >= 0 or a reason."""
    name = data.draw(st.sampled_from(["wav2", "mp4_small", "ogg2", "mp4_hd"]))
    raw = bytearray(media[name].read_bytes())
    cut = data.draw(st.integers(0, len(raw)))
    raw = raw[:cut]
    for _ in range(data.draw(st.integers(0, 6))):
        if raw:
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at : at + 8] = data.draw(st.binary(min_size=1, max_size=8))
    target = tmp_path / f"fuzz{media[name].suffix}"
    target.write_bytes(bytes(raw))
    use_ffprobe = data.draw(st.booleans())
    settings_ = config.validate(
        {
            "lock_dir": str(tmp_path / "locks"),
            "probe_cache": False,
            "probe_timeout": "5s",
            "ffprobe": "ffprobe" if use_ffprobe else "/nonexistent/ffprobe",
        },
        "fuzz",
        None,
    )
    for probe in ("duration", "pixels", "size"):
        result = probe_file(str(target), probe, settings_)
        if result.metric is None:
            assert result.problem
        else:
            assert 0 <= result.metric < float("inf")
    FUZZED["media"] += 1


@settings(
    max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    document=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    ["format", "streams", "duration", "width", "height", "codec_type", "disposition"]
                )
                | st.text(max_size=8),
                inner,
                max_size=5,
            )
        ),
        max_leaves=20,
    )
)
def test_fuzzed_ffprobe_json_gives_a_sane_metric_or_a_reason(
    tmp_path: Path, media: dict[str, Path], document: object
) -> None:
    """Whatever JSON an ffprobe prints, the probe answers a metric >= 0 or a reason."""
    printed = tmp_path / "printed.json"
    printed.write_text(json.dumps(document))
    script = tmp_path / "json-ffprobe"
    script.write_text(f"#!/bin/sh\ncat {printed}\n")
    script.chmod(0o755)
    settings_ = config.validate(
        {"lock_dir": str(tmp_path / "locks"), "probe_cache": False, "ffprobe": str(script)}, "fuzz", None
    )
    for probe in ("duration", "pixels"):
        result = probe_file(str(media["ogg2"]), probe, settings_)
        if result.metric is None:
            assert result.problem
        else:
            assert 0 <= result.metric < float("inf")
    FUZZED["ffprobe-json"] += 1


FUZZED = {"media": 0, "ffprobe-json": 0}


@pytest.fixture(scope="module", autouse=True)
def _fuzz_figures() -> object:
    yield
    record_figures(
        "fuzz", cases=sum(FUZZED.values()), kind="media bytes and ffprobe JSON", by_target=dict(FUZZED)
    )
