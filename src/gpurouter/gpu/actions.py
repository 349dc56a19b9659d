"""The actions a resident service is driven by: `{command = [...]}` or `{http = "METHOD URL", body}`,
for its unload, load and status, run by one function with a timeout (stdlib only, imported only
when an action runs)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def perform(
    action: Mapping[str, Any], timeout_s: float, keep_bytes: int = 1 << 16
) -> tuple[str | None, bytes]:
    """Run an action (`{command = [...]}` or `{http = "METHOD URL", body}`): (None, its output) on
    success, else (why it failed, b""). The one runner of unload, load and status actions."""
    if "command" in action:
        import subprocess

        try:
            done = subprocess.run(
                list(action["command"]),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"command timed out after {timeout_s:g}s", b""
        except OSError as error:
            return f"command could not run: {error.strerror}", b""
        if done.returncode != 0:
            return f"command exited {done.returncode}", b""
        return None, done.stdout[:keep_bytes]
    import urllib.error
    import urllib.request

    method, _, url = str(action["http"]).partition(" ")
    body = action.get("body")
    request = urllib.request.Request(
        url.strip(),
        method=method.upper() or "GET",
        data=body.encode() if body else None,
        headers={"Content-Type": "application/json", **action.get("headers", {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return None, bytes(response.read(keep_bytes))
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code} from {url.strip()}", b""
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        return f"{url.strip()} unreachable: {getattr(error, 'reason', None) or error}", b""
