"""Shared fixtures: an isolated gpurouter environment, real media made with ffmpeg, and a
helper that runs the installed `gpurouter` launcher as a real process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_JOB = ROOT / "examples" / "bin" / "transcribe"
BIN = Path(sys.executable).parent
GPUROUTER = shutil.which("gpurouter", path=str(BIN)) or "gpurouter"


def make_media(path: Path, *lavfi_and_options: str) -> Path:
    """Make a real media file with ffmpeg (lavfi sources), e.g. sine or testsrc."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", *lavfi_and_options, str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """wav of 2 s and 8 s, mp4 of 320x240 and 1920x1080, an ogg (needs ffprobe), a text file."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (the test set-up installs it: scripts/setup)")
    root = tmp_path_factory.mktemp("media")
    sine = ["-f", "lavfi", "-i"]
    return {
        "wav2": make_media(root / "short.wav", *sine, "sine=frequency=440:duration=2"),
        "wav8": make_media(root / "long.wav", *sine, "sine=frequency=440:duration=8"),
        "ogg2": make_media(root / "short.ogg", *sine, "sine=frequency=440:duration=2", "-c:a", "libvorbis"),
        "mp4_small": make_media(
            root / "small.mp4", *sine, "testsrc=size=320x240:rate=25:duration=1", "-pix_fmt", "yuv420p"
        ),
        "mp4_hd": make_media(
            root / "hd.mp4", *sine, "testsrc=size=1920x1080:rate=25:duration=1", "-pix_fmt", "yuv420p"
        ),
        "text": _write(root / "notes.txt", "not media at all\n"),
    }


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class Box:
    """An isolated box: lock dir, journal, config file, PATH with the example job."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock_dir = root / "locks"
        self.journal = self.lock_dir / "journal.jsonl"
        self.config = root / "config.toml"
        self.bin = root / "bin"
        self.bin.mkdir()
        shutil.copy(EXAMPLE_JOB, self.bin / "transcribe")
        self.job_log = root / "jobs.log"
        self.started: list[subprocess.Popen[str]] = []
        self.env = {
            "PATH": f"{self.bin}{os.pathsep}{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(root / "home"),
            "XDG_CONFIG_HOME": str(root / "xdg-config"),
            "XDG_CACHE_HOME": str(root / "xdg-cache"),
            "GPUROUTER_CONFIG": str(self.config),
            "JOB_LOG": str(self.job_log),
            "LANG": "C.UTF-8",
        }
        self.write_config("")

    def write_config(self, body: str) -> None:
        header = f'lock_dir = "{self.lock_dir}"\njournal = "{self.journal}"\n'
        self.config.write_text(header + textwrap.dedent(body))

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        """Run the installed gpurouter launcher and wait for it."""
        return subprocess.run(
            [GPUROUTER, *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )  # type: ignore[call-overload]

    def start(self, *args: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen[str]:
        """Start the launcher without waiting (killed and reaped when the test ends)."""
        process = subprocess.Popen(
            [GPUROUTER, *args],
            env={**self.env, **(env or {})},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **kwargs,
        )  # type: ignore[call-overload]
        self.started.append(process)
        return process

    def close(self) -> None:
        """Kill and reap whatever a test left running, closing its pipes."""
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.communicate()

    def records(self) -> list[dict[str, object]]:
        """Every journal record (each line must be valid JSON)."""
        if not self.journal.exists():
            return []
        return [json.loads(line) for line in self.journal.read_text().splitlines()]

    def job_lines(self) -> list[list[str]]:
        """The example job's own start/end lines."""
        if not self.job_log.exists():
            return []
        return [line.split() for line in self.job_log.read_text().splitlines()]


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    """A fresh isolated box for one test."""
    made = Box(tmp_path)
    yield made
    made.close()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01) -> bool:  # type: ignore[no-untyped-def]
    """Poll a condition in a test (never in gpurouter itself)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


WHISPER_PROFILE = """
[profiles.transcribe]
probe = "duration"
threshold = "5s"
[profiles.transcribe.gpu]
args = ["--device", "cuda"]
slots = 1
[profiles.transcribe.cpu]
args = ["--device", "cpu"]
slots = 1
"""
