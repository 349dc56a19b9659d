"""The real ffmpeg (Debian's), intercepted as an operator installs it: a link named ffmpeg to the
gpurouter launcher with ffmpeg-real beside it (issue 14). What gpurouter did is read back from
the output files (ffprobe, and the SEI that records libx264's options), never from its own words.

This box has no GPU: the GPU route's h264_nvenc fails for real ("Cannot load libcuda.so.1"),
which is the GPU error that `on_gpu_error = "cpu"` re-runs on the CPU.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import GPUROUTER, Box, make_media, wait_for

REAL_FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(
    REAL_FFMPEG is None, reason="ffmpeg is not installed (scripts/setup installs it)"
)

FFMPEG_PROFILE = """
[profiles.ffmpeg]
probe = "pixels"
threshold = "1280x720"
gpu_when = "above"          # the GPU for big frames; small ones stay on the CPU
input = "-i"
no_input = "pass"
monitor = true
on_gpu_error = "cpu"

[profiles.ffmpeg.gpu]
input_args = ["-hwaccel", "cuda"]
args = ["-c:v", "h264_nvenc", "-preset", "p4"]
args_position = "before-last"
slots = 1

[profiles.ffmpeg.cpu]
input_args = ["-t", "1"]
args = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "40"]
args_position = "before-last"
slots = 1
"""


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    lavfi = ["-f", "lavfi", "-i"]
    return {
        "small": make_media(
            root / "small.mp4", *lavfi, "testsrc=size=320x240:rate=25:duration=2", "-pix_fmt", "yuv420p"
        ),
        "hd": make_media(
            root / "hd.mp4", *lavfi, "testsrc=size=1920x1080:rate=25:duration=1", "-pix_fmt", "yuv420p"
        ),
        "tone": make_media(root / "tone.wav", *lavfi, "sine=frequency=440:duration=3"),
    }


def intercepted_ffmpeg(box: Box) -> Path:
    assert REAL_FFMPEG is not None
    (box.bin / "ffmpeg-real").symlink_to(REAL_FFMPEG)
    (box.bin / "ffmpeg").symlink_to(GPUROUTER)
    box.write_config(FFMPEG_PROFILE)
    return box.bin / "ffmpeg"


def run_ffmpeg(box: Box, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(box.bin / "ffmpeg"), *args], env=box.env, capture_output=True, text=True, timeout=timeout
    )


def streams(path: Path) -> list[dict[str, str]]:
    done = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name,duration",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found: list[dict[str, str]] = json.loads(done.stdout)["streams"]
    return found


def x264_options(path: Path) -> str:
    """The options string libx264 writes into its SEI user data ("... subme=0 ... crf=40.0 ...")."""
    data = path.read_bytes()
    start = data.find(b"x264 - core")
    assert start >= 0, "no x264 SEI: not encoded by libx264"
    return data[start : data.find(b"\0", start)].decode("ascii", "replace")


def test_the_cpu_route_encodes_with_libx264_at_the_profiles_preset(box: Box, clips: dict[str, Path]) -> None:
    intercepted_ffmpeg(box)
    out = box.root / "out.mp4"
    done = run_ffmpeg(box, "-y", "-i", str(clips["small"]), str(out))
    assert done.returncode == 0, done.stderr
    assert (
        "Trailing option" not in done.stderr
    )  # the route args sit before the output, where ffmpeg reads them
    assert [s["codec_name"] for s in streams(out)] == ["h264"]
    options = x264_options(out)
    assert "subme=0" in options and "crf=40.0" in options  # -preset ultrafast and -crf 40 reached the encoder
    start = next(r for r in box.records() if r["event"] == "start")
    assert (start["route"], start["reason"]) == (
        "cpu",
        "pixels 76800 < threshold 921600: cpu (gpu_when = above)",
    )


def test_input_args_go_before_the_first_input_only(box: Box, clips: dict[str, Path]) -> None:
    """`-t 1` before the first -i cuts that input's video to 1 s; the second input's 3 s of audio is untouched
    (as an output option it would have cut the whole output to 1 s)."""
    intercepted_ffmpeg(box)
    out = box.root / "two.mp4"
    done = run_ffmpeg(
        box, "-y", "-i", str(clips["small"]), "-i", str(clips["tone"]), "-map", "0:v", "-map", "1:a", str(out)
    )
    assert done.returncode == 0, done.stderr
    durations = {s["codec_type"]: float(s["duration"]) for s in streams(out)}
    assert durations["video"] == pytest.approx(1.0, abs=0.05)
    assert durations["audio"] == pytest.approx(3.0, abs=0.1)


def test_a_gpu_run_that_cannot_load_cuda_runs_again_on_the_cpu(box: Box, clips: dict[str, Path]) -> None:
    intercepted_ffmpeg(box)
    out = box.root / "hd-out.mp4"
    done = run_ffmpeg(box, "-y", "-i", str(clips["hd"]), str(out))
    assert done.returncode == 0, done.stderr
    assert "Cannot load libcuda.so.1" in done.stderr  # the GPU run's own words still reached the caller
    assert "subme=0" in x264_options(out)
    events = [r["event"] for r in box.records()]
    assert events == ["start", "end", "gpu_error", "start", "end"]
    first, error, again = box.records()[0], box.records()[2], box.records()[3]
    assert first["route"] == "gpu" and first["argv"][1:] == [
        "-y",
        "-hwaccel",
        "cuda",
        "-i",
        str(clips["hd"]),
        "-c:v",
        "h264_nvenc",
        "-preset",
        "p4",
        str(out),
    ]
    assert (error["pattern"], error["gpu_error_kind"], error["exit_status"]) == (
        "Cannot load libcuda.so.1",
        "driver",
        1,
    )
    assert again["route"] == "cpu" and again["argv"][1:] == [
        "-y",
        "-t",
        "1",
        "-i",
        str(clips["hd"]),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "40",
        str(out),
    ]


def hold_every_slot(box: Box) -> None:
    """Two real jobs hold the only gpu and cpu slots (every profile shares those pools)."""
    for route in ("gpu", "cpu"):
        box.start("run", "--profile", "default", "--route", route, "--", "sleep", "30")
    assert wait_for(lambda: sum(r["event"] == "start" for r in box.records()) == 2)


@pytest.mark.parametrize(
    "args", [["-version"], ["-hide_banner", "-encoders"], ["-h"]], ids=["version", "encoders", "help"]
)
def test_ffmpeg_without_an_input_runs_at_once_untouched_while_every_slot_is_held(
    box: Box, args: list[str]
) -> None:
    intercepted_ffmpeg(box)
    hold_every_slot(box)
    began = time.monotonic()
    done = run_ffmpeg(box, *args, timeout=20)
    elapsed = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    assert "libx264" in done.stdout or "ffmpeg version" in done.stdout or "usage: ffmpeg" in done.stdout
    assert elapsed < 5  # it waited for no slot (wait = "fail" would have said busy, exit 75)
    passed = box.records()[-1]
    assert (passed["event"], passed["argv"][1:], passed["route"]) == ("pass", args, None)


def test_a_lavfi_source_is_an_input_and_waits_for_its_slot_like_any_encode(box: Box) -> None:
    """The -i value need not be a file: a lavfi graph or a URL is a real encode job (fallback, a slot)."""
    intercepted_ffmpeg(box)
    hold_every_slot(box)
    done = run_ffmpeg(box, "-y", "-f", "lavfi", "-i", "testsrc=duration=1", str(box.root / "x.mp4"))
    assert done.returncode == 75, done.stderr
    assert box.records()[-1]["event"] == "busy"
    assert "fallback cpu" in str(box.records()[-1]["reason"])


def test_route_json_shows_the_final_ffmpeg_argv(box: Box, clips: dict[str, Path]) -> None:
    intercepted_ffmpeg(box)
    done = box.run("route", "--json", "--", "ffmpeg", "-y", "-i", str(clips["hd"]), "out.mp4")
    assert done.returncode == 0, done.stderr
    decision = json.loads(done.stdout)
    assert decision["argv"][1:] == [
        "-y",
        "-hwaccel",
        "cuda",
        "-i",
        str(clips["hd"]),
        "-c:v",
        "h264_nvenc",
        "-preset",
        "p4",
        "out.mp4",
    ]
    assert decision["reason"] == "pixels 2073600 >= threshold 921600: gpu (gpu_when = above)"
