"""What a resident service holds on the GPU right now, from evidence, per decision.

Read only when an eviction is considered (and by `gpurouter gpus`), never on a plain job.
For each `[residents.NAME]`, the first source that can answer decides:

1. `nvml`: NVML's per-device process list, matched to the service. By default the service
   is the process that listens on the TCP port of its `status`/`unload`/`load` URL (when the
   URL is on this box: the kernel's sock_diag (or `/proc/net/tcp{,6}`) gives the listening
   socket, the fds of the GPU's processes and their ancestors say which of them holds it) and
   its descendants (ollama keeps models in child runners); with `process`, the processes
   whose name (or whose command line, for a pattern with `*` or `?`) matches, and theirs.
   Loaded when they hold at least a quarter of `vram_mib` (a bare CUDA context is not a model).
2. `status`: the service's own answer to its `status` action, in a known format: ollama
   `GET /api/ps` (`models[].size_vram`), ComfyUI `GET /system_stats` (`devices[].torch_vram_total`),
   llama-swap `GET /running` (`running[]`, sized by `vram_mib`).
3. `belief`: `residents.state`, what gpurouter last did or saw (last resort, shown as such).

Inside a PID namespace NVML's host pids mean nothing here (`/proc/self/status` NSpid has
more than one entry, or no listed pid exists here): NVML matching is skipped.
"""

from __future__ import annotations

import os

from gpurouter.job import kernel
from gpurouter.job.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

    from gpurouter.gpu.nvml import GpuQuery, GpuSnapshot
    from gpurouter.job.settings import Resident

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0", "[::]")
_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY, _TCP_LISTEN = 4, 20, 10
_DUMP_REQUEST = 0x301  # NLM_F_REQUEST | NLM_F_DUMP
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
LOADED_FRACTION = 0.25  # of vram_mib: below this the service holds a context, not a model


class Seen(Record):
    """One resident as seen for one decision."""

    __slots__ = ("name", "loaded", "mib", "device", "source", "pids", "note")
    name: str
    loaded: bool
    mib: int  # what it holds (measured, reported, or vram_mib when believed loaded)
    device: int | None  # where it holds it (None: not known from evidence)
    source: str  # "nvml" | "status" | "belief"
    pids: tuple[int, ...]  # the service's processes found (nvml)
    note: str | None  # why a better source could not answer


def foreign_pids(query: GpuQuery) -> str | None:
    """Why NVML's pids cannot be matched to processes here, or None when they can."""
    try:
        with open("/proc/self/status", "rb") as stream:
            for line in stream:
                if line.startswith(b"NSpid:") and len(line.split()) > 2:
                    return "in a PID namespace: NVML's host pids do not match processes here"
    except OSError:
        pass
    listed = [p.pid for g in query.gpus for p in (g.processes or ())]
    if listed and not any(os.path.exists(f"/proc/{pid}") for pid in listed):
        return "no pid in NVML's process list exists here (a PID namespace?)"
    return None


def url_port(url: str) -> int | None:
    """The TCP port of an http(s) URL on this box, or None for another host."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if host.startswith("["):
        name, _, port = host[1:].partition("]")
        name, port = f"[{name}]", port.lstrip(":")
    else:
        name, _, port = host.partition(":")
    if name.lower() not in LOCAL_HOSTS:
        return None
    if not port:
        return 443 if scheme.lower() == "https" else 80
    return int(port) if port.isdigit() else None


def _service_port(resident: Resident) -> int | None:
    for action in (resident.status, resident.unload, resident.load):
        if action and "http" in action:
            port = url_port(str(action["http"]).partition(" ")[2].strip())
            if port is not None:
                return port
    return None


def listening_sockets(port: int) -> set[bytes]:
    """The inodes (as `/proc/PID/fd` links read them) of the TCP sockets listening on `port`."""
    import struct

    try:
        inodes = _listening_by_netlink(port)
    except (OSError, struct.error):  # no sock_diag here (a seccomp profile): the slow table
        inodes = _listening_by_proc(port)
    return {f"socket:[{inode}]".encode() for inode in inodes}


def _listening_by_netlink(port: int) -> set[int]:
    """Listening TCP sockets from the kernel's sock_diag, asked for listeners only.

    Why not /proc/net/tcp (issue 15, benchmark row (m)): the kernel formats every socket of the
    namespace into it, TIME_WAIT included: 4.3 ms with 267 sockets on the test box, and growing
    with a busy server's connections; the listeners alone come back in 0.05 ms.
    """
    import socket
    import struct

    found: set[int] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as channel:
        channel.settimeout(1.0)
        for sequence, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            # inet_diag_req_v2: family, protocol, ext, pad, states (TCP_LISTEN), then a zero socket id
            request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 1 << _TCP_LISTEN) + bytes(48)
            header = struct.pack(
                "=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _DUMP_REQUEST, sequence, 0
            )
            channel.send(header + request)
            done = False
            while not done:
                data = channel.recv(1 << 16)
                offset = 0
                while offset + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, offset)
                    if kind == _NLMSG_ERROR:
                        raise OSError("sock_diag refused the request")
                    if kind == _NLMSG_DONE or length < 16:
                        done = True
                        break
                    # inet_diag_msg: family, state, timer, retrans, then the socket id (source port
                    # first, big-endian), ... uid at 64, inode at 68
                    if struct.unpack_from(">H", data, offset + 20)[0] == port:
                        found.add(struct.unpack_from("=I", data, offset + 16 + 68)[0])
                    offset += (length + 3) & ~3
                if not data:
                    break
    return found


def _listening_by_proc(port: int) -> set[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, "rb") as stream:
                next(stream, None)
                for line in stream:
                    fields = line.split()
                    if (
                        len(fields) > 9
                        and fields[3] == b"0A"
                        and int(fields[1].rsplit(b":", 1)[1], 16) == port
                    ):
                        inodes.add(int(fields[9]))
        except (OSError, ValueError, IndexError):
            continue
    return inodes


def socket_owners(inodes: set[bytes], pids: Iterable[int]) -> tuple[set[int], int]:
    """Which of `pids` hold one of the sockets, and how many of them could not be read.

    Why only `pids` (issue 15, benchmark row (m)): scanning every /proc/*/fd for the port's owner
    cost 5.3 ms a decision on a quiet box; the owner that matters holds a GPU process in its
    tree, so the GPU processes and their ancestors are all there is to look at (0.2 ms).
    """
    found: set[int] = set()
    unreadable = 0
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            unreadable += os.path.exists(f"/proc/{pid}")  # another user's process (gone: no matter)
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").encode() in inodes:
                    found.add(pid)
                    break
            except OSError:
                continue
    return found, unreadable


def _matches_process(pid: int, pattern: str) -> bool:
    """Does `pid` or one of its ancestors match the `process` key?"""
    seen = 0
    while pid > 1 and seen < 64:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as stream:
                argv = stream.read().split(b"\0")
            with open(f"/proc/{pid}/comm", "rb") as stream:
                name = stream.read().strip().decode("utf-8", "replace")
        except OSError:
            return False
        if "*" in pattern or "?" in pattern:
            import fnmatch  # deferred: only patterns need it (it imports re)

            if fnmatch.fnmatchcase(b" ".join(a for a in argv if a).decode("utf-8", "replace"), pattern):
                return True
        elif pattern in (name, os.path.basename(argv[0].decode("utf-8", "replace")) if argv else ""):
            return True
        parent = kernel.parent_pid(pid)
        if parent is None:
            return False
        pid, seen = parent, seen + 1
    return False


def from_nvml(
    resident: Resident, gpus: Iterable[GpuSnapshot]
) -> tuple[dict[int, int], tuple[int, ...]] | str:
    """(MiB by device index, pids) held by the service's process tree, or why NVML cannot say."""
    gpus = list(gpus)
    for gpu in gpus:
        if gpu.processes is None:
            return f"GPU {gpu.index} does not report its processes"
    owners: set[int] = set()
    families: dict[int, set[int]] = {}  # each GPU process and its ancestors, read once
    if resident.process is None:
        port = _service_port(resident)
        if port is None:
            return "no process key and no URL on this box to find the service by"
        sockets = listening_sockets(port)
        if not sockets:
            return f"nothing listens on port {port}"
        families = {p.pid: kernel.lineage(p.pid) for g in gpus for p in g.processes or ()}
        owners, unreadable = socket_owners(sockets, set().union(*families.values()))
        if not owners and unreadable:
            return (
                f"{unreadable} GPU process(es) or parents whose fds cannot be read (the service on {port}?)"
            )
        # no owner among them: the service holds nothing on the GPU (its port is open elsewhere)
    held: dict[int, int] = {}
    pids = []
    for gpu in gpus:
        for process in gpu.processes or ():
            if resident.process is not None:
                mine = _matches_process(process.pid, resident.process)
            else:
                mine = bool(families[process.pid] & owners)
            if mine:
                held[gpu.index] = held.get(gpu.index, 0) + (process.used_mib or 0)
                pids.append(process.pid)
    if resident.process is not None and not pids and not _process_exists(resident.process):
        return f"no process matches {resident.process!r}"
    return held, tuple(pids)


def _process_exists(pattern: str) -> bool:
    return any(entry.isdigit() and _matches_process(int(entry), pattern) for entry in os.listdir("/proc"))


def from_status(resident: Resident) -> tuple[bool, int | None, int | None] | str:
    """(loaded, MiB or None, device or None) from the service's status answer, or why not."""
    from gpurouter.gpu.jsonlite import loads  # not `json`: it imports re and enum

    assert resident.status is not None
    text = fetch(resident.status, resident.timeout_s)
    if text.startswith("!"):
        return text[1:]
    try:
        answer = loads(text)
    except (ValueError, RecursionError):
        return "status answer is not JSON"
    if isinstance(answer, dict) and isinstance(answer.get("models"), list):  # ollama GET /api/ps
        size = sum(_bytes(m.get("size_vram")) for m in answer["models"] if isinstance(m, dict))
        return size > 0, size >> 20, None
    if isinstance(answer, dict) and isinstance(answer.get("devices"), list):  # ComfyUI GET /system_stats
        best: tuple[int, int | None] = (0, None)
        for device in answer["devices"]:
            if isinstance(device, dict) and _bytes(device.get("torch_vram_total")):
                mib = _bytes(device["torch_vram_total"]) >> 20
                if mib > best[0]:
                    best = (mib, device.get("index") if isinstance(device.get("index"), int) else None)
        return best[0] >= resident.vram_mib * LOADED_FRACTION, best[0], best[1]
    if isinstance(answer, dict) and isinstance(answer.get("running"), list):  # llama-swap GET /running
        return bool(answer["running"]), None, None
    return "status answer is in no known format (ollama /api/ps, ComfyUI /system_stats, llama-swap /running)"


def _bytes(value: object) -> int:
    """A byte count from a service's answer; anything else (text, NaN, negative, absurd) is 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1 << 50:
        return 0
    return int(value)


def fetch(action: Mapping[str, Any], timeout_s: float) -> str:
    """The body of a status action's answer, or '!' and why it failed."""
    from gpurouter.gpu.actions import perform

    problem, body = perform(action, timeout_s, keep_bytes=1 << 20)
    return f"!status: {problem}" if problem is not None else body.decode("utf-8", "replace")


def observe(
    residents: Mapping[str, Resident],
    query: GpuQuery,
    state: Mapping[str, Mapping[str, Any]],
    foreign: str | None,
) -> dict[str, Seen]:
    """Every resident as seen now: nvml, else status, else belief."""
    seen = {}
    for name, resident in residents.items():
        notes = []
        if foreign is None:
            nvml_answer = from_nvml(resident, query.gpus)
            if not isinstance(nvml_answer, str):
                held, pids = nvml_answer
                mib = sum(held.values())
                device = max(held, key=lambda index: held[index]) if held else None
                seen[name] = Seen(
                    name=name,
                    loaded=mib >= resident.vram_mib * LOADED_FRACTION,
                    mib=mib,
                    device=device,
                    source="nvml",
                    pids=pids,
                    note=None,
                )
                continue
            notes.append(nvml_answer)
        else:
            notes.append(foreign)
        if resident.status is not None:
            status_answer = from_status(resident)
            if not isinstance(status_answer, str):
                loaded, reported, device = status_answer
                mib = resident.vram_mib if reported is None or (loaded and reported == 0) else reported
                seen[name] = Seen(
                    name=name,
                    loaded=loaded,
                    mib=mib if loaded else (reported or 0),
                    device=device,
                    source="status",
                    pids=(),
                    note="; ".join(notes),
                )
                continue
            notes.append(status_answer)
        believed = bool(state.get(name, {}).get("loaded"))
        seen[name] = Seen(
            name=name,
            loaded=believed,
            mib=resident.vram_mib if believed else 0,
            device=None,
            source="belief",
            pids=(),
            note="; ".join(notes),
        )
    return seen
