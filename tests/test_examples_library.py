"""The library examples run for real: the web service on 127.0.0.1, the ARQ worker compiles."""

from __future__ import annotations

import json
import py_compile
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

from conftest import ROOT, WHISPER_PROFILE, Box

EXAMPLES = ROOT / "examples" / "library"


def post(url: str) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_web_service_routes_each_request_and_shares_slots_with_the_cli(
    box: Box, media: dict[str, Path]
) -> None:
    box.write_config(WHISPER_PROFILE)
    service = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "web_service.py"), "--port", "0", "--wait", "0"],
        env=box.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert service.stdout is not None
        url = service.stdout.readline().split()[-1]
        status, body = post(f"{url}/transcribe?file={media['wav2']}")
        assert status == 200 and body["route"] == "gpu" and body["slot"] == ["gpu.0"]
        assert "--device cuda" in str(body["result"])
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda: results.append(post(f"{url}/transcribe?file={media['wav2']}")[0]))
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == [200, 503, 503]  # one GPU slot, fail-fast: the others are told to retry
        assert post(f"{url}/transcribe?file={media['wav8']}")[1]["route"] == "cpu"
        events = [(r["event"], r["route"]) for r in box.records()]
        assert events.count(("start", "gpu")) == 2 and events.count(("busy", "gpu")) == 2
    finally:
        service.kill()
        service.communicate()


def test_the_arq_worker_example_compiles() -> None:
    py_compile.compile(str(EXAMPLES / "arq_worker.py"), doraise=True)
