"""Stand-in resident services, each its own process on 127.0.0.1, speaking the documented APIs.

    python standins.py ollama|comfyui DEVICE_FILE DEVICE MIB CALL_LOG [FREE_DELAY_S]

prints its port on stdout, then serves. While a model is loaded it is listed in the device file
(the contract's GPUROUTER_NVML_FILE) with the pid that holds it and its MiB, and the device's
used memory includes it:

- ollama: `POST /api/generate` loads the model in a child "runner" process (as ollama does);
  with `"keep_alive": 0` it answers at once and unloads FREE_DELAY_S later (the runner exits).
  `GET /api/ps` lists loaded models with `size_vram` in bytes.
- comfyui: `POST /prompt` loads the model in the server process itself; `POST /free` answers at
  once and frees FREE_DELAY_S later (the process keeps a 300 MiB CUDA context). `GET /system_stats`
  reports `torch_vram_total` / `torch_vram_free` in bytes.

Every request is appended to CALL_LOG as "METHOD PATH BODY".
"""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

CONTEXT_MIB = 300


def update_devices(path: Path, change: Any) -> None:
    """Read-modify-write the device file under a flock shared with the tests (atomic replace)."""
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        document = json.loads(path.read_text())
        change(document["devices"])
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(document))
        temporary.replace(path)


def set_use(path: Path, index: int, pid: int, mib: int) -> None:
    """Make `pid` hold `mib` on device `index` (0: not listed), adjusting the used memory."""

    def change(devices: list[dict[str, Any]]) -> None:
        for device in devices:
            if device["index"] != index:
                continue
            processes = device.get("processes")
            old = 0
            if processes is not None:
                old = sum(p["used_mib"] for p in processes if p["pid"] == pid)
                device["processes"] = [p for p in processes if p["pid"] != pid] + (
                    [{"pid": pid, "used_mib": mib}] if mib else []
                )
            else:
                old = _unlisted.get((index, pid), 0)
                _unlisted[(index, pid)] = mib
            device["memory_used_mib"] = max(0, device["memory_used_mib"] - old + mib)

    update_devices(path, change)


_unlisted: dict[tuple[int, int], int] = {}  # what this stand-in holds where the file lists no processes


class Service(http.server.ThreadingHTTPServer):
    def __init__(self, kind: str, devices: Path, index: int, mib: int, log: Path, delay_s: float) -> None:
        self.kind, self.devices, self.index, self.mib, self.log, self.delay_s = (
            kind,
            devices,
            index,
            mib,
            log,
            delay_s,
        )
        self.runner: subprocess.Popen[bytes] | None = None
        self.loaded = False
        self.state_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), Handler)

    def load(self) -> None:
        with self.state_lock:
            if self.loaded:
                return
            if self.kind == "ollama":
                self.runner = subprocess.Popen(["sleep", "3600"])
                set_use(self.devices, self.index, self.runner.pid, self.mib)
            else:
                set_use(self.devices, self.index, os.getpid(), self.mib + CONTEXT_MIB)
            self.loaded = True

    def unload_later(self) -> None:
        def unload() -> None:
            with self.state_lock:
                if not self.loaded:
                    return
                if self.kind == "ollama" and self.runner is not None:
                    set_use(self.devices, self.index, self.runner.pid, 0)
                    self.runner.kill()
                    self.runner.wait()
                    self.runner = None
                else:
                    set_use(self.devices, self.index, os.getpid(), CONTEXT_MIB)
                self.loaded = False

        threading.Timer(self.delay_s, unload).start()


class Handler(http.server.BaseHTTPRequestHandler):
    server: Service

    def _answer(self, document: Any) -> None:
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _log(self, body: str) -> None:
        with open(self.server.log, "a") as stream:
            stream.write(f"{self.command} {self.path} {body}\n")

    def do_GET(self) -> None:
        self._log("")
        service = self.server
        if service.kind == "ollama" and self.path == "/api/ps":
            models = (
                [
                    {
                        "name": "llama3:latest",
                        "model": "llama3:latest",
                        "size": service.mib << 20,
                        "size_vram": service.mib << 20,
                        "expires_at": "2026-12-07T10:00:00Z",
                    }
                ]
                if service.loaded
                else []
            )
            self._answer({"models": models})
        elif service.kind == "comfyui" and self.path == "/system_stats":
            held = (service.mib if service.loaded else 0) << 20
            self._answer(
                {
                    "system": {"os": "posix", "comfyui_version": "0.3.40"},
                    "devices": [
                        {
                            "name": "cuda:0 NVIDIA RTX A4000",
                            "type": "cuda",
                            "index": service.index,
                            "vram_total": 16376 << 20,
                            "vram_free": (16376 << 20) - held,
                            "torch_vram_total": held,
                            "torch_vram_free": 0,
                        }
                    ],
                }
            )
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self._log(body)
        service = self.server
        request = json.loads(body or "{}")
        if service.kind == "ollama" and self.path == "/api/generate":
            if request.get("keep_alive") in (0, "0", "0s"):
                service.unload_later()  # like ollama: the answer comes before the runner has let go
                self._answer({"model": request.get("model"), "done": True, "done_reason": "unload"})
            else:
                service.load()
                self._answer({"model": request.get("model"), "response": "hi", "done": True})
        elif service.kind == "comfyui" and self.path == "/free":
            service.unload_later()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif service.kind == "comfyui" and self.path == "/prompt":
            service.load()
            self._answer({"prompt_id": "1", "number": 0, "node_errors": {}})
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    kind, devices, index, mib, log = (
        sys.argv[1],
        Path(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
        Path(sys.argv[5]),
    )
    delay_s = float(sys.argv[6]) if len(sys.argv) > 6 else 0.3
    # SIGTERM (Standin.stop) must run the `finally` below: the ollama runner outlived the tests
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    service = Service(kind, devices, index, mib, log, delay_s)
    print(service.server_address[1], flush=True)
    try:
        service.serve_forever()
    finally:
        if service.runner is not None:
            service.runner.kill()


if __name__ == "__main__":
    main()
