"""Read a media file's duration and video size from its container header, without ffprobe.

ffprobe costs ~100 ms per call and gpurouter probes before every job, yet most inputs state
their duration exactly in a few header bytes. `read_media_info` reads those bytes with a
handful of bounded `os.pread` calls and answers only where the header is exact (it agrees
with ffprobe's `format=duration` to the microsecond); otherwise it returns None and the
caller runs ffprobe. Only `os` and `struct` are imported: this module is on every job's hot
path, where each millisecond of import time is paid once per job.
"""

from __future__ import annotations

import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

_BUDGET = 256 * 1024  # bytes one call may read in total, whatever sizes the file declares
_CHUNK = 4096  # each pread fetches at least this much: neighbouring header fields come free
_MIN_CHARGE = 512  # ... and costs at least this much budget, which also caps the number of preads


class MediaInfo:
    """What a container header says about a file.

    Attributes:
        container: Demuxer family: "wav", "flac", "mp3", "mp4" (also MOV, M4A, 3GP) or
            "matroska" (also WebM).
        duration_s: Duration in seconds, as ffprobe reports it as `format=duration`.
        width: Coded width in pixels of the first video stream; None for audio-only files.
        height: Coded height in pixels of the first video stream; None for audio-only files.
    """

    __slots__ = ("container", "duration_s", "width", "height")

    def __init__(
        self, container: str, duration_s: float | None, width: int | None = None, height: int | None = None
    ) -> None:
        self.container = container
        self.duration_s = duration_s
        self.width = width
        self.height = height

    @property
    def pixels(self) -> int | None:
        """Width * height of the first video stream, or None for audio-only files."""
        return self.width * self.height if self.width and self.height else None

    def __repr__(self) -> str:
        return (
            f"MediaInfo(container={self.container!r}, duration_s={self.duration_s!r}, "
            f"width={self.width!r}, height={self.height!r})"
        )


def read_media_info(fd: int, size: int) -> MediaInfo | None:
    """Read duration (and video pixels) from the container header of an open regular file.

    Reads with `os.pread` only (the file offset is untouched) and at most 256 KiB in total.

    Args:
        fd: File descriptor of a regular file, open for reading.
        size: The file's size in bytes (from `os.fstat`).

    Returns:
        The header's facts, or None when the format is not recognised or the header is not
        trustworthy (absent, truncated, estimated or contradicted by the file size); the
        caller then uses ffprobe. Never raises.
    """
    try:
        return _detect(_Reader(fd, size))
    except Exception:
        return None  # hostile, truncated or unreadable input must never fail a job: ffprobe decides


class _Reader:
    """Bounded `os.pread` access to one file, caching the last chunk read."""

    __slots__ = ("_base", "_buf", "budget", "fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size, self.budget = fd, size, _BUDGET
        self._base, self._buf = 0, b""

    def read(self, off: int, n: int) -> bytes:
        """Return exactly `n` bytes at offset `off`.

        Raises:
            ValueError: The range leaves the file, or this call's read budget is spent.
        """
        if off < 0 or n < 0 or off + n > self.size:
            raise ValueError("read outside the file")
        start = off - self._base
        if start >= 0 and start + n <= len(self._buf):
            return self._buf[start : start + n]
        want = min(max(n, _CHUNK), self.size - off)
        self.budget -= max(want, _MIN_CHARGE)
        if self.budget < 0:  # checked before the read: a declared size never drives an allocation
            raise ValueError("read budget spent")
        buf = os.pread(self.fd, want, off)
        if len(buf) < n:
            raise ValueError("file shorter than its size")
        self._base, self._buf = off, buf
        return buf[:n]


_MP4_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")  # old MOVs lack ftyp


def _detect(r: _Reader) -> MediaInfo | None:
    """Pick the parser by magic bytes (never by file name: inputs often have no extension)."""
    head = r.read(0, 12)
    if head[:4] in (b"RIFF", b"RF64") and head[8:] == b"WAVE":
        return _wav(r, head[:4] == b"RF64")
    if head[:4] == b"fLaC":
        return _flac(r, 0)
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return _matroska(r)
    if head[4:8] in _MP4_FIRST_BOXES:
        return _mp4(r)
    off = _skip_id3v2(r)
    if off:
        # Taggers put ID3v2 before FLAC too, and some pad with zeros after the tag.
        after = r.read(off, min(_CHUNK, r.size - off))
        off += len(after) - len(after.lstrip(b"\0"))
        if r.read(off, 4) == b"fLaC":
            return _flac(r, off)
    return _mp3(r, off)


# --- WAV ----------------------------------------------------------------------------------

_PCM_TAGS = (1, 3, 6, 7)  # PCM, IEEE float, A-law, mu-law: constant bytes per sample frame
_KSDATAFORMAT_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"  # of the subformat GUID


def _wav(r: _Reader, rf64: bool) -> MediaInfo | None:
    """WAV/RF64 duration: whole sample frames in the `data` chunk / sample rate.

    Only uncompressed codings are exact (for others the byte rate is an average). A `data`
    size of 0 or 0xFFFFFFFF means the writer could not seek back (ffmpeg writing to a pipe
    leaves 0xFFFFFFFF), so the data runs to the end of the file, as ffmpeg assumes too.
    """
    pos, fmt, ds64_data = 12, b"", -1
    while r.size - pos >= 8:
        cid, n = struct.unpack("<4sI", r.read(pos, 8))
        body = pos + 8
        if cid == b"ds64" and rf64:
            (ds64_data,) = struct.unpack("<Q", r.read(body + 8, 8))  # after the 64-bit RIFF size
        elif cid == b"fmt ":
            fmt = r.read(body, min(n, 40))
        elif cid == b"data":
            break
        pos = body + n + (n & 1)  # chunks are padded to even sizes
    else:
        return None
    if len(fmt) < 16:
        return None  # no `fmt ` before `data`
    tag, channels, rate, _byte_rate, align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == 0xFFFE and len(fmt) >= 40 and fmt[26:40] == _KSDATAFORMAT_TAIL:  # WAVE_FORMAT_EXTENSIBLE
        (tag,) = struct.unpack_from("<H", fmt, 24)
    if tag not in _PCM_TAGS or not rate or not channels or align != channels * ((bits + 7) // 8):
        return None
    if rf64 and n == 0xFFFFFFFF:
        n = ds64_data
    elif n in (0, 0xFFFFFFFF):
        n = r.size - body
    if n < 0:
        return None  # RF64 without ds64
    # A header claiming more data than the file holds (truncated or still being written) is
    # cut to the bytes present: that is what decoders read, and what ffprobe reports.
    return MediaInfo("wav", min(n, r.size - body) // align / rate)


# --- FLAC ---------------------------------------------------------------------------------


def _flac(r: _Reader, off: int) -> MediaInfo | None:
    """FLAC duration: STREAMINFO total samples / sample rate (0 samples means unknown)."""
    block = r.read(off + 4, 4 + 34)
    if block[0] & 0x7F != 0 or block[1:4] != b"\x00\x00\x22":  # STREAMINFO must come first
        return None
    # 64 bits after the block and frame size limits: rate:20 channels:3 bits:5 total_samples:36.
    packed = int.from_bytes(block[14:22], "big")
    rate, total = packed >> 44, packed & 0xFFFFFFFFF
    if not rate or not total:
        return None
    return MediaInfo("flac", total / rate)


# --- MP3 ----------------------------------------------------------------------------------


def _skip_id3v2(r: _Reader) -> int:
    """Return the offset after any ID3v2 tags at the start of the file (0 if none)."""
    off = 0
    while r.size - off >= 10:
        tag = r.read(off, 10)
        if tag[:3] != b"ID3" or any(b & 0x80 for b in tag[6:]):
            break
        size = tag[6] << 21 | tag[7] << 14 | tag[8] << 7 | tag[9]  # "syncsafe": 7 bits per byte
        off += 10 + size + (10 if tag[5] & 0x10 else 0)  # + footer
    return off


def _mp3(r: _Reader, off: int) -> MediaInfo | None:
    """MP3 duration: frames * samples per frame / rate, from a Xing/Info or VBRI header.

    That header sits in the first frame. Without one, any duration is a bitrate estimate
    (ffprobe's is too), so return None. The result includes the encoder delay and padding,
    exactly as ffprobe's `format=duration` does.
    """
    b0, b1, b2, b3 = r.read(off, 4)
    version, layer = b1 >> 3 & 3, b1 >> 1 & 3  # version 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    bitrate, rate_index = b2 >> 4, b2 >> 2 & 3
    if b0 != 0xFF or b1 & 0xE0 != 0xE0 or version == 1 or layer != 1 or bitrate in (0, 15) or rate_index == 3:
        return None  # not an MPEG audio layer III frame header
    rate = (44100, 48000, 32000)[rate_index] >> (2, 0, 1, 0)[version]
    mpeg1, mono = version == 3, b3 >> 6 == 3
    samples_per_frame = 1152 if mpeg1 else 576
    xing = off + 4 + ((17 if mono else 32) if mpeg1 else (9 if mono else 17))  # after the side info
    if r.read(xing, 4) in (b"Xing", b"Info"):
        flags, frames = struct.unpack(">II", r.read(xing + 4, 8))
        if not flags & 1:
            return None  # no frame count
        nbytes = struct.unpack(">I", r.read(xing + 12, 4))[0] if flags & 2 else 0
    elif r.read(off + 36, 4) == b"VBRI":
        version_, _delay, _quality, nbytes, frames = struct.unpack(">HHHII", r.read(off + 40, 14))
        if version_ != 1:
            return None
    else:
        return None
    if not frames:
        return None
    if nbytes:
        # ffmpeg's own test (mp3dec.c): a file more than 1/16 longer than the header says is
        # concatenated (ffprobe then estimates from the bitrate); one 1/16 shorter is
        # truncated or still growing. Either way the frame count is not the file's.
        low, high = sorted((r.size - off - 4, nbytes))
        if high - low > low >> 4:
            return None
    return MediaInfo("mp3", frames * samples_per_frame / rate)


# --- MP4 / MOV (ISO BMFF) -----------------------------------------------------------------


def _boxes(r: _Reader, pos: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """Yield (type, body offset, end offset) of each box in [pos, end).

    Raises:
        ValueError: A box overruns its parent (a truncated file) or is smaller than its header.
    """
    while end - pos >= 8:  # fewer bytes cannot hold a box: trailing padding
        size, kind = struct.unpack(">I4s", r.read(pos, 8))
        body = pos + 8
        if size == 1:  # 64-bit "largesize" follows the type
            (size,) = struct.unpack(">Q", r.read(body, 8))
            body += 8
        elif size == 0:  # the box runs to the end of its parent (of the file, at top level)
            size = end - pos
        if size < body - pos or pos + size > end:
            raise ValueError("bad box size")
        yield kind, body, pos + size
        pos += size  # strictly increasing: box structures cannot loop


def _box(r: _Reader, pos: int, end: int, path: tuple[bytes, ...]) -> tuple[int, int]:
    """Return (body offset, end offset) of the first box along `path` below [pos, end).

    Raises:
        ValueError: A box on the path is missing.
    """
    for want in path:
        for kind, body, box_end in _boxes(r, pos, end):
            if kind == want:
                pos, end = body, box_end
                break
        else:
            raise ValueError("box missing")
    return pos, end


def _mp4(r: _Reader) -> MediaInfo | None:
    """MP4/M4A/MOV duration from moov/mvhd; pixels from the first video track.

    Walks every top-level box (a few preads even when moov follows a huge mdat) so that
    a box overrunning the file, i.e. a truncated file, yields None.
    """
    info = None
    for kind, body, end in _boxes(r, 0, r.size):
        if kind == b"moov" and info is None:
            info = _mp4_moov(r, body, end)
            if info is None:
                return None
    return info


def _mp4_moov(r: _Reader, pos: int, end: int) -> MediaInfo | None:
    """Parse moov: mvhd's duration / timescale (version 0 or 1) and the first video track."""
    duration: float | None = None
    video: tuple[int, int] | None = None
    for kind, body, box_end in _boxes(r, pos, end):
        if kind == b"mvex":
            return None  # fragmented: mvhd does not cover the fragments that follow
        if kind == b"mvhd":
            if r.read(body, 1)[0] == 1:
                scale, units = struct.unpack(">IQ", r.read(body + 20, 12))
                unknown = 0xFFFFFFFFFFFFFFFF
            else:
                scale, units = struct.unpack(">II", r.read(body + 12, 8))
                unknown = 0xFFFFFFFF
            if not scale or not units or units == unknown:
                return None
            duration = units / scale
        elif kind == b"trak" and video is None:
            video = _mp4_video_size(r, body, box_end)
    if duration is None:
        return None
    return MediaInfo("mp4", duration, *(video or (None, None)))


def _mp4_video_size(r: _Reader, pos: int, end: int) -> tuple[int, int] | None:
    """Return a video trak's (width, height) from its visual sample entry; None if not video.

    tkhd's 16.16 width/height is the display size (scaled by the pixel aspect ratio), while
    the sample entry holds the coded size that ffprobe reports and that decoding costs.
    """
    mdia = _box(r, pos, end, (b"mdia",))
    hdlr, _ = _box(r, *mdia, (b"hdlr",))
    if r.read(hdlr + 8, 4) != b"vide":  # after version/flags and pre_defined
        return None
    stsd, _ = _box(r, *mdia, (b"minf", b"stbl", b"stsd"))
    # stsd: version/flags, entry count, then the entry: size, format, 6 reserved, data ref
    # index, 16 bytes pre_defined/reserved, width, height.
    width, height = struct.unpack(">HH", r.read(stsd + 8 + 32, 4))
    if not width or not height:
        raise ValueError("video track without a size")
    return width, height


# --- Matroska / WebM (EBML) ---------------------------------------------------------------

_SEGMENT, _SEEKHEAD, _INFO, _TRACKS, _CLUSTER = 0x18538067, 0x114D9B74, 0x1549A966, 0x1654AE6B, 0x1F43B675


def _ebml_element(buf: bytes, pos: int) -> tuple[int, int, int]:
    """Decode the element header at `pos`: (ID, body offset, size; -1 for unknown size)."""
    n = 9 - buf[pos].bit_length()  # the ID's length is its count of leading zero bits + 1
    if n > 4 or pos + n > len(buf):
        raise ValueError("bad EBML ID")
    eid = int.from_bytes(buf[pos : pos + n], "big")
    pos += n
    m = 9 - buf[pos].bit_length()
    if m > 8 or pos + m > len(buf):
        raise ValueError("bad EBML size")
    mask = (1 << 7 * m) - 1
    size = int.from_bytes(buf[pos : pos + m], "big") & mask  # drop the length marker bit
    return eid, pos + m, -1 if size == mask else size  # all ones: unknown size (live streams)


def _ebml_children(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield (ID, body offset, size) of each element in buf[pos:end].

    Raises:
        ValueError: An element has an unknown size or overruns its parent.
    """
    while pos < end:
        eid, body, size = _ebml_element(buf, pos)
        if size < 0 or body + size > end:
            raise ValueError("bad EBML element size")
        yield eid, body, size
        pos = body + size


def _ebml_at(r: _Reader, pos: int) -> tuple[int, int, int]:
    """Read the element header at file offset `pos`: (ID, body offset, size or -1)."""
    eid, body, size = _ebml_element(r.read(pos, min(12, r.size - pos)), 0)
    return eid, pos + body, size


def _uint(buf: bytes, pos: int, size: int) -> int:
    return int.from_bytes(buf[pos : pos + size], "big")


def _matroska(r: _Reader) -> MediaInfo | None:
    """Matroska/WebM duration from Segment > Info, pixels from Segment > Tracks.

    Files written where ffmpeg could not seek back (pipes, live) have no Duration: None.
    """
    _, body, size = _ebml_at(r, 0)
    if not 0 <= size <= 1024:
        return None
    header = r.read(body, size)
    doctype = b"".join(header[p : p + n] for eid, p, n in _ebml_children(header, 0, size) if eid == 0x4282)
    if doctype not in (b"matroska", b"webm"):
        return None
    eid, segment, size = _ebml_at(r, body + size)
    if eid != _SEGMENT:
        return None
    segment_end = r.size if size < 0 else segment + size
    if segment_end > r.size:
        return None  # truncated: the Info written at the start may describe more than exists
    found = _matroska_top_level(r, segment, segment_end)
    if _INFO not in found or _TRACKS not in found:
        return None
    duration = _matroska_duration(r.read(*found[_INFO]))
    if duration is None:
        return None
    return MediaInfo("matroska", duration, *(_matroska_video_size(r.read(*found[_TRACKS])) or (None, None)))


def _matroska_top_level(r: _Reader, segment: int, end: int) -> dict[int, tuple[int, int]]:
    """Locate Info and Tracks in the segment: {element ID: (body offset, size)}.

    They normally precede the first Cluster, and walking stops there (the rest is media);
    otherwise the SeekHead says where they are.
    """
    found: dict[int, tuple[int, int]] = {}
    pos = segment
    while pos < end and not (_INFO in found and _TRACKS in found):
        eid, body, size = _ebml_at(r, pos)
        if eid == _CLUSTER or size < 0:
            break
        if eid in (_SEEKHEAD, _INFO, _TRACKS):
            found.setdefault(eid, (body, size))
        pos = body + size
    if _SEEKHEAD in found and not (_INFO in found and _TRACKS in found):
        seekhead = r.read(*found[_SEEKHEAD])
        for seek_id, p, n in _ebml_children(seekhead, 0, len(seekhead)):
            if seek_id != 0x4DBB:
                continue
            # Seek: SeekID (0x53AB) and SeekPosition (0x53AC), counted from the segment's body.
            entry = {cid: seekhead[q : q + m] for cid, q, m in _ebml_children(seekhead, p, p + n)}
            target = _uint(entry.get(0x53AB, b""), 0, 4)
            if target in (_INFO, _TRACKS) and target not in found:
                eid, body, size = _ebml_at(r, segment + _uint(entry.get(0x53AC, b""), 0, 8))
                if eid == target and size >= 0:
                    found[eid] = (body, size)
    return found


def _matroska_duration(info: bytes) -> float | None:
    """Return Info's Duration (a float in TimestampScale units) in seconds, None if absent."""
    scale, duration = 1_000_000, None  # TimestampScale defaults to 1 ms
    for eid, p, n in _ebml_children(info, 0, len(info)):
        if eid == 0x2AD7B1:
            scale = _uint(info, p, n)
        elif eid == 0x4489 and n in (4, 8):
            (duration,) = struct.unpack(">f" if n == 4 else ">d", info[p : p + n])
    if duration is None:
        return None
    seconds = duration * scale / 1e9
    return seconds if 0.0 < seconds < 1e12 else None  # also rejects NaN and infinity


def _matroska_video_size(tracks: bytes) -> tuple[int, int] | None:
    """Return (PixelWidth, PixelHeight) of the first video TrackEntry; None if there is none."""
    for eid, p, n in _ebml_children(tracks, 0, len(tracks)):
        if eid != 0xAE:  # TrackEntry
            continue
        kind, width, height = 0, 0, 0
        for cid, q, m in _ebml_children(tracks, p, p + n):
            if cid == 0x83:  # TrackType: 1 = video
                kind = _uint(tracks, q, m)
            elif cid == 0xE0:  # Video
                for vid, s, k in _ebml_children(tracks, q, q + m):
                    if vid == 0xB0:
                        width = _uint(tracks, s, k)
                    elif vid == 0xBA:
                        height = _uint(tracks, s, k)
        if kind == 1:
            if not width or not height:
                raise ValueError("video track without a size")
            return width, height
    return None
