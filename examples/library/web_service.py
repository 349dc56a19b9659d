"""A small web service that keeps its model in process and takes a gpurouter slot per request.

    GPUROUTER_CONFIG=... python examples/library/web_service.py --port 8080
    curl -X POST 'http://127.0.0.1:8080/transcribe?file=/data/talk.wav'

Each request is routed exactly as `gpurouter run -- transcribe FILE` would be (same profile,
same probe, same slots shared with CLI jobs on the box), waits up to `--wait` seconds for a
slot, and answers 503 with Retry-After when none is free. stdlib only, so it runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import gpurouter


class Handler(BaseHTTPRequestHandler):
    wait_s = 5.0
    profile = "transcribe"

    def do_POST(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        path = (query.get("file") or [""])[0]
        decision = gpurouter.decide(self.profile, [self.profile, path])
        try:
            with gpurouter.slot(decision, wait=self.wait_s) as held:
                began = time.monotonic()
                result = transcribe(path, decision.args, held.env.get("CUDA_VISIBLE_DEVICES"))
                body = {
                    "route": decision.route,
                    "reason": decision.reason,
                    "slot": held.slots,
                    "waited_s": round(held.waited_s, 3),
                    "seconds": round(time.monotonic() - began, 3),
                    "result": result,
                }
                self._answer(200, body)
        except gpurouter.Busy as busy:
            self._answer(503, {"error": str(busy), "pool": busy.pool}, retry_after=5)

    def _answer(self, status: int, body: dict[str, object], retry_after: int | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after:
            self.send_header("Retry-After", str(retry_after))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


def transcribe(path: str, route_args: list[str], devices: str | None) -> str:
    """Stands in for the in-process model call (faster-whisper's model.transcribe, say)."""
    time.sleep(0.3)
    return (
        f"transcribed {path} with {' '.join(route_args) or 'defaults'} on {devices or 'the default device'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--wait", type=float, default=5.0, help="seconds a request may wait for a slot")
    parser.add_argument("--profile", default="transcribe")
    options = parser.parse_args()
    Handler.wait_s, Handler.profile = options.wait, options.profile
    server = ThreadingHTTPServer(("127.0.0.1", options.port), Handler)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
