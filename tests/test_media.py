"""Tests of gpurouter.job.media: native header reading checked against ffprobe on real files.

Every file is made by ffmpeg once per session. Tolerance: ffprobe prints `format=duration`
in whole microseconds, computed from the same header integers we read (mvhd units /
timescale, samples / rate, MP3 frames * samples per frame / rate, Matroska's float Duration),
rounded (truncated for Matroska) to the microsecond. So native and ffprobe must agree to
1 µs for every format; anything looser would hide a wrong field or an off-by-one frame.
MP3 needs no slack for encoder delay/padding: ffprobe's format duration includes them too
(it shifts start_time by the delay instead), exactly like frames * 1152 / rate.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpurouter.job import media
from gpurouter.job.media import MediaInfo, read_media_info

pytestmark = pytest.mark.skipif(
    not (shutil.which("ffmpeg") and shutil.which("ffprobe")), reason="needs ffmpeg and ffprobe"
)

TOLERANCE_S = 1e-6 + 1e-9  # ffprobe's microsecond rounding, plus float noise
READ_BUDGET = 256 * 1024  # the most read_media_info may read in one call


def _sine(seconds: int = 2) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]


def _testsrc(size: str = "320x240") -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc=size={size}:rate=25:duration=2"]


X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
LAME = ["-c:a", "libmp3lame"]
COVER = ["-i", "{cover}", "-map", "0:a", "-map", "1:v", "-c:v", "copy", "-disposition:v", "attached_pic"]

# name -> (ffmpeg arguments after the inputs' -i, encoders needed, expected container).
# Outputs are written without extensions (the format is forced with -f); "pipe:1" outputs go
# to stdout, as when ffmpeg cannot seek back to finish the header.
NATIVE: dict[str, tuple[list[str], tuple[str, ...], str]] = {
    "wav_2s": ([*_sine(2), "-c:a", "pcm_s16le", "-f", "wav"], (), "wav"),
    "wav_8s": ([*_sine(8), "-c:a", "pcm_s16le", "-f", "wav"], (), "wav"),
    "wav_s24_extensible": ([*_sine(), "-ac", "2", "-c:a", "pcm_s24le", "-f", "wav"], (), "wav"),
    "wav_f32": ([*_sine(), "-c:a", "pcm_f32le", "-f", "wav"], (), "wav"),
    "wav_mulaw": ([*_sine(), "-c:a", "pcm_mulaw", "-f", "wav"], (), "wav"),
    "wav_rf64": ([*_sine(), "-c:a", "pcm_s16le", "-rf64", "always", "-f", "wav"], (), "wav"),
    "wav_piped": ([*_sine(), "-c:a", "pcm_s16le", "-f", "wav", "pipe:1"], (), "wav"),
    "flac": ([*_sine(), "-c:a", "flac", "-f", "flac"], ("flac",), "flac"),
    "mp3_cbr_xing": (
        [*_sine(), *LAME, "-b:a", "128k", "-write_xing", "1", "-f", "mp3"],
        ("libmp3lame",),
        "mp3",
    ),
    "mp3_vbr": ([*_sine(), *LAME, "-q:a", "4", "-f", "mp3"], ("libmp3lame",), "mp3"),
    "mp3_stereo_48k": (
        [*_sine(), *LAME, "-ac", "2", "-ar", "48000", "-b:a", "192k", "-f", "mp3"],
        ("libmp3lame",),
        "mp3",
    ),
    "mp3_mpeg2_22k": ([*_sine(), *LAME, "-ar", "22050", "-b:a", "64k", "-f", "mp3"], ("libmp3lame",), "mp3"),
    "m4a_aac": ([*_sine(), "-c:a", "aac", "-f", "ipod"], ("aac",), "mp4"),
    # Cover art: ffprobe lists it as a video stream with disposition attached_pic; it is no
    # track in MP3 (ID3 APIC), FLAC (PICTURE block) or M4A (covr), and no video to route.
    "mp3_cover_art": (
        [*_sine(), *COVER, *LAME, "-id3v2_version", "3", "-f", "mp3"],
        ("libmp3lame", "mjpeg"),
        "mp3",
    ),
    "flac_cover_art": ([*_sine(), *COVER, "-c:a", "flac", "-f", "flac"], ("flac", "mjpeg"), "flac"),
    "m4a_cover_art": ([*_sine(), *COVER, "-c:a", "aac", "-f", "ipod"], ("aac", "mjpeg"), "mp4"),
    # ...but ffmpeg's Matroska muxer stores it as a real one-frame MJPEG video track.
    "mka_cover_art_track": (
        [*_sine(), *COVER, "-c:a", "flac", "-f", "matroska"],
        ("flac", "mjpeg"),
        "matroska",
    ),
    "mp4_320x240": ([*_testsrc(), *_sine(), *X264, "-c:a", "aac", "-f", "mp4"], ("libx264", "aac"), "mp4"),
    "mp4_320x240_faststart": (
        [*_testsrc(), *_sine(), *X264, "-c:a", "aac", "-movflags", "+faststart", "-f", "mp4"],
        ("libx264", "aac"),
        "mp4",
    ),
    "mp4_1080p": ([*_testsrc("1920x1080"), *X264, "-f", "mp4"], ("libx264",), "mp4"),
    "mp4_1080p_faststart": (
        [*_testsrc("1920x1080"), *X264, "-movflags", "+faststart", "-f", "mp4"],
        ("libx264",),
        "mp4",
    ),
    "mp4_audio_track_first": (
        [*_testsrc(), *_sine(), "-map", "1:a", "-map", "0:v", *X264, "-c:a", "aac", "-f", "mp4"],
        ("libx264", "aac"),
        "mp4",
    ),
    # tkhd says 640x240 (display size); the coded size ffprobe reports is 320x240.
    "mp4_anamorphic": ([*_testsrc(), *X264, "-vf", "setsar=2", "-f", "mp4"], ("libx264",), "mp4"),
    "mov": ([*_testsrc(), *_sine(), *X264, "-c:a", "aac", "-f", "mov"], ("libx264", "aac"), "mp4"),
    "mkv": ([*_testsrc(), *_sine(), *X264, "-c:a", "aac", "-f", "matroska"], ("libx264", "aac"), "matroska"),
    "mkv_1080p_audio_track_first": (
        [
            *_testsrc("1920x1080"),
            *_sine(),
            "-map",
            "1:a",
            "-map",
            "0:v",
            *X264,
            "-c:a",
            "flac",
            "-f",
            "matroska",
        ],
        ("libx264", "flac"),
        "matroska",
    ),
    "mka_flac": ([*_sine(), "-c:a", "flac", "-f", "matroska"], ("flac",), "matroska"),
    "webm_vp9_opus": (
        [
            *_testsrc(),
            *_sine(),
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-c:a",
            "libopus",
            "-f",
            "webm",
        ],
        ("libvpx-vp9", "libopus"),
        "matroska",
    ),
}

# Files whose header has no exact duration: read_media_info must leave them to ffprobe.
FALLBACK: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "mp3_without_xing": ([*_sine(), *LAME, "-b:a", "128k", "-write_xing", "0", "-f", "mp3"], ("libmp3lame",)),
    "mp3_without_xing_or_id3": (
        [*_sine(), *LAME, "-b:a", "128k", "-write_xing", "0", "-id3v2_version", "0", "-f", "mp3"],
        ("libmp3lame",),
    ),
    "mkv_piped_without_duration": ([*_testsrc(), *X264, "-f", "matroska", "pipe:1"], ("libx264",)),
    "mp4_fragmented_empty_moov": (
        [*_testsrc(), *X264, "-movflags", "frag_keyframe+empty_moov", "-f", "mp4"],
        ("libx264",),
    ),
    # moov holds the first 1 s fragment, so mvhd says 1 s of the 2 s: mvex must veto mvhd.
    "mp4_fragmented_first_fragment_in_moov": (
        [*_testsrc(), *X264, "-g", "25", "-movflags", "frag_keyframe", "-f", "mp4"],
        ("libx264",),
    ),
    "wav_adpcm": ([*_sine(), "-c:a", "adpcm_ms", "-f", "wav"], ("adpcm_ms",)),
    "aac_adts": ([*_sine(), "-c:a", "aac", "-f", "adts"], ("aac",)),
    "ogg_opus": ([*_sine(), "-c:a", "libopus", "-f", "ogg"], ("libopus",)),
}


def _encoders() -> set[str]:
    out = subprocess.run(
        ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith(" ") and len(line.split()) > 1}


@pytest.fixture(scope="session")
def media_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Make every recipe's file once (in parallel); absent encoders leave their names out."""
    out_dir = tmp_path_factory.mktemp("media")
    have = _encoders()
    cover = out_dir / "cover.jpg"  # a 640x480 JPEG for the cover-art recipes ("{cover}")
    if "mjpeg" in have:
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-nostdin",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=640x480:duration=1",
                "-frames:v",
                "1",
                str(cover),
            ],
            check=True,
        )
    jobs = []
    for name, (recipe, needs, *_) in {**NATIVE, **FALLBACK}.items():
        if not set(needs) <= have:
            continue
        args = [str(cover) if arg == "{cover}" else arg for arg in recipe]
        path = out_dir / name
        piped = args[-1] == "pipe:1"
        stdout = path.open("wb") if piped else None  # ffmpeg cannot seek back in a pipe
        cmd = ["ffmpeg", "-v", "error", "-nostdin", "-y", *args, *([] if piped else [str(path)])]
        proc = subprocess.Popen(cmd, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE)
        jobs.append((name, path, stdout, proc))
    made = {}
    for name, path, stdout, proc in jobs:
        _, err = proc.communicate(timeout=120)
        if stdout is not None:
            stdout.close()
        assert proc.returncode == 0, f"ffmpeg failed for {name}: {err.decode(errors='replace')}"
        made[name] = path
    return made


def _file(media_files: dict[str, Path], name: str) -> Path:
    if name not in media_files:
        pytest.skip(f"ffmpeg lacks an encoder needed for {name}")
    return media_files[name]


def _info(path: Path) -> MediaInfo | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_media_info(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _info_of_bytes(data: bytes) -> MediaInfo | None:
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        return read_media_info(f.fileno(), len(data))


def _ffprobe(path: Path, *args: str) -> str:
    cmd = ["ffprobe", "-v", "error", *args, "-of", "default=noprint_wrappers=1:nokey=1", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def _ffprobe_duration(path: Path) -> float:
    return float(_ffprobe(path, "-show_entries", "format=duration"))


def _ffprobe_first_video_pixels(path: Path) -> int | None:
    """Width * height of ffprobe's first video stream that is not cover art (attached_pic)."""
    fields = "stream=width,height:stream_disposition=attached_pic"
    out = _ffprobe(path, "-select_streams", "v", "-show_entries", fields).split()
    for width, height, attached_pic in zip(out[::3], out[1::3], out[2::3], strict=True):
        if attached_pic == "0":
            return int(width) * int(height)
    return None


def _assert_sane(info: MediaInfo | None, full: MediaInfo | None = None) -> None:
    """None, or facts a router can act on: a finite duration and no invented video."""
    if info is None:
        return
    assert isinstance(info.duration_s, float) and math.isfinite(info.duration_s) and info.duration_s >= 0
    assert (info.width is None) == (info.height is None)
    if info.width is not None and info.height is not None:
        assert info.width > 0 and info.height > 0
    if full is not None and full.duration_s is not None:
        assert info.container == full.container
        assert info.duration_s <= full.duration_s + TOLERANCE_S
        assert info.pixels == full.pixels


# --- the native path agrees with ffprobe ------------------------------------------------------


@pytest.mark.parametrize("name", NATIVE)
def test_native_duration_matches_ffprobe_format_duration(media_files: dict[str, Path], name: str) -> None:
    path = _file(media_files, name)
    info = _info(path)
    assert info is not None, "the header is exact for this format: it must not fall back to ffprobe"
    assert info.container == NATIVE[name][2]
    assert info.duration_s == pytest.approx(_ffprobe_duration(path), abs=TOLERANCE_S)


@pytest.mark.parametrize("name", NATIVE)
def test_native_pixels_match_ffprobe_first_video_stream(media_files: dict[str, Path], name: str) -> None:
    path = _file(media_files, name)
    info = _info(path)
    assert info is not None
    assert info.pixels == _ffprobe_first_video_pixels(path)


def test_wav_from_24_bit_pcm_is_wave_format_extensible(media_files: dict[str, Path]) -> None:
    # Guards the test above: ffmpeg writes WAVE_FORMAT_EXTENSIBLE for more than 16 bits.
    header = _file(media_files, "wav_s24_extensible").read_bytes()[:64]
    assert struct.unpack_from("<H", header, header.index(b"fmt ") + 8)[0] == 0xFFFE


def test_wav_written_to_a_pipe_has_unknown_sizes_and_runs_to_end_of_file(
    media_files: dict[str, Path],
) -> None:
    data = _file(media_files, "wav_piped").read_bytes()
    data_chunk = data.index(b"data")
    assert data[4:8] == data[data_chunk + 4 : data_chunk + 8] == b"\xff\xff\xff\xff"
    piped, seekable = _info(media_files["wav_piped"]), _info(media_files["wav_2s"])
    assert piped is not None and seekable is not None
    assert (piped.container, piped.duration_s) == (seekable.container, seekable.duration_s)


@pytest.mark.parametrize("name", ["mp3_cover_art", "flac_cover_art", "m4a_cover_art"])
def test_cover_art_is_not_counted_as_a_video_stream(media_files: dict[str, Path], name: str) -> None:
    path = _file(media_files, name)
    out = _ffprobe(path, "-select_streams", "v:0", "-show_entries", "stream_disposition=attached_pic")
    assert out == "1", "ffprobe lists the cover as its first video stream"
    info = _info(path)
    assert info is not None and info.pixels is None


def test_mp3_behind_a_large_id3v2_tag_is_read_without_reading_the_tag(
    media_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _file(media_files, "mp3_vbr").read_bytes()
    tag_size = 5 * 2**20  # cover art can make the tag megabytes long
    syncsafe = bytes(tag_size >> shift & 0x7F for shift in (21, 14, 7, 0))
    path = tmp_path / "tagged"
    path.write_bytes(b"ID3\x04\x00\x00" + syncsafe + bytes(tag_size) + data)
    reads = _count_reads(monkeypatch)
    info = _info(path)
    assert info is not None and info.duration_s == pytest.approx(_ffprobe_duration(path), abs=TOLERANCE_S)
    assert sum(reads) <= 3 * 4096


def test_flac_behind_an_id3v2_tag_is_still_read_as_flac(media_files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "tagged"
    path.write_bytes(
        b"ID3\x04\x00\x00\x00\x00\x01\x00" + bytes(128) + _file(media_files, "flac").read_bytes()
    )
    info = _info(path)
    assert info is not None and info.container == "flac"
    assert info.duration_s == pytest.approx(_ffprobe_duration(path), abs=TOLERANCE_S)


def test_concatenated_mp3s_are_left_to_ffprobe(media_files: dict[str, Path]) -> None:
    # The first file's Xing header counts only its own frames; ffprobe spots this by size.
    data = _file(media_files, "mp3_cbr_xing").read_bytes()
    assert _info_of_bytes(data * 2) is None


def test_mp4_pixels_come_from_the_coded_size_not_the_display_size(media_files: dict[str, Path]) -> None:
    data = _file(media_files, "mp4_anamorphic").read_bytes()
    tkhd = data.index(b"tkhd") + 4
    assert struct.unpack_from(">I", data, tkhd + 76)[0] >> 16 == 640  # display width, 2:1 pixels
    info = _info(media_files["mp4_anamorphic"])
    assert info is not None and (info.width, info.height) == (320, 240)


def test_mp3_vbri_header_gives_the_duration_ffprobe_reports(
    media_files: dict[str, Path], tmp_path: Path
) -> None:
    # No ffmpeg encoder writes VBRI (Fraunhofer's), so prepend a VBRI frame to a bare CBR stream.
    stream = _file(media_files, "mp3_without_xing_or_id3").read_bytes()
    header = bytearray(stream[:4])
    assert header[:2] == b"\xff\xfb" and header[2] >> 4 == 9 and header[2] >> 2 & 3 == 0  # 128k 44.1k
    header[2] &= ~0x02  # no padding: the frame is 144 * 128000 // 44100 = 417 bytes
    frame = bytearray(417)
    frame[:4] = header
    frames = round(len(stream) / (144 * 128000 / 44100)) + 1
    frame[36:54] = b"VBRI" + struct.pack(">HHHII", 1, 0, 0, len(frame) + len(stream), frames)
    path = tmp_path / "vbri"
    path.write_bytes(bytes(frame) + stream)
    info = _info(path)
    assert info is not None and info.container == "mp3"
    assert info.duration_s == pytest.approx(_ffprobe_duration(path), abs=TOLERANCE_S)


def test_moov_after_a_5_gib_mdat_with_64_bit_size_is_found_with_a_few_small_reads(
    media_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _file(media_files, "mp4_1080p_faststart")
    data = source.read_bytes()
    ftyp_end = struct.unpack_from(">I", data)[0]
    moov_size = struct.unpack_from(">I", data, ftyp_end)[0]
    assert data[ftyp_end + 4 : ftyp_end + 8] == b"moov"
    mdat_size = 5 * 2**30 + 16
    path = tmp_path / "big"
    with path.open("wb") as f:  # sparse: the 5 GiB of media data are a hole
        f.write(data[:ftyp_end] + struct.pack(">I4sQ", 1, b"mdat", mdat_size))
        f.seek(ftyp_end + mdat_size)
        f.write(data[ftyp_end : ftyp_end + moov_size])
    reads = _count_reads(monkeypatch)
    info = _info(path)
    assert info is not None and (info.duration_s, info.pixels) == (_ffprobe_duration(source), 1920 * 1080)
    assert len(reads) <= 4 and sum(reads) <= 3 * 4096 + moov_size


def _ebml_split(data: bytes, pos: int, end: int) -> list[tuple[int, int, int, int]]:
    """Split data[pos:end] into EBML elements: (ID, start, body start, end)."""
    elements = []
    while pos < end:
        id_len = 9 - data[pos].bit_length()
        size_len = 9 - data[pos + id_len].bit_length()
        size = int.from_bytes(data[pos + id_len : pos + id_len + size_len], "big") & ((1 << 7 * size_len) - 1)
        body = pos + id_len + size_len
        elements.append((int.from_bytes(data[pos : pos + id_len], "big"), pos, body, body + size))
        pos = body + size
    return elements


def _ebml(eid: int, payload: bytes) -> bytes:
    """Encode one EBML element, its size always on 8 bytes."""
    return (
        eid.to_bytes((eid.bit_length() + 7) // 8, "big")
        + (1 << 56 | len(payload)).to_bytes(8, "big")
        + payload
    )


def test_matroska_info_and_tracks_after_the_clusters_are_found_through_the_seekhead(
    media_files: dict[str, Path], tmp_path: Path
) -> None:
    info_id, tracks_id, cluster_id = 0x1549A966, 0x1654AE6B, 0x1F43B675
    data = _file(media_files, "mkv").read_bytes()
    (_, _, _, header_end), (_, _, segment_body, segment_end) = _ebml_split(data, 0, len(data))
    parts = {eid: data[start:end] for eid, start, _, end in _ebml_split(data, segment_body, segment_end)}
    clusters = b"".join(
        data[a:e] for eid, a, _, e in _ebml_split(data, segment_body, segment_end) if eid == cluster_id
    )

    def seek(eid: int, pos: int) -> bytes:
        return _ebml(0x4DBB, _ebml(0x53AB, eid.to_bytes(4, "big")) + _ebml(0x53AC, pos.to_bytes(8, "big")))

    seekhead_size = len(_ebml(0x114D9B74, seek(info_id, 0) + seek(tracks_id, 0)))
    info_pos = seekhead_size + len(clusters)
    seekhead = _ebml(0x114D9B74, seek(info_id, info_pos) + seek(tracks_id, info_pos + len(parts[info_id])))
    path = tmp_path / "late_info"
    path.write_bytes(
        data[:header_end] + _ebml(0x18538067, seekhead + clusters + parts[info_id] + parts[tracks_id])
    )
    info = _info(path)
    assert info is not None
    assert info.duration_s == pytest.approx(_ffprobe_duration(path), abs=TOLERANCE_S)
    assert info.pixels == _ffprobe_first_video_pixels(path) == 320 * 240


@pytest.mark.parametrize(
    "name", ["wav_2s", "flac", "mp3_vbr", "m4a_aac", "mp4_320x240", "mkv", "webm_vp9_opus"]
)
def test_format_is_detected_by_magic_bytes_not_by_file_name(
    media_files: dict[str, Path], tmp_path: Path, name: str
) -> None:
    source = _file(media_files, name)
    assert source.suffix == ""  # every fixture is written without an extension
    misleading = tmp_path / "clip.txt"
    shutil.copy(source, misleading)
    for path in (source, misleading):
        info = _info(path)
        assert info is not None and info.container == NATIVE[name][2]


def test_reading_neither_uses_nor_moves_the_file_offset(media_files: dict[str, Path]) -> None:
    path = _file(media_files, "mp4_320x240")
    fd = os.open(path, os.O_RDONLY)
    try:
        expected = read_media_info(fd, os.fstat(fd).st_size)
        os.lseek(fd, 0, os.SEEK_END)
        again = read_media_info(fd, os.fstat(fd).st_size)
        assert os.lseek(fd, 0, os.SEEK_CUR) == os.fstat(fd).st_size
    finally:
        os.close(fd)
    assert expected is not None and again is not None
    assert (again.duration_s, again.pixels) == (expected.duration_s, expected.pixels)


# --- what stays with ffprobe ------------------------------------------------------------------


@pytest.mark.parametrize("name", FALLBACK)
def test_files_without_an_exact_header_duration_are_left_to_ffprobe(
    media_files: dict[str, Path], name: str
) -> None:
    assert _info(_file(media_files, name)) is None


# --- hostile input never raises ----------------------------------------------------------------


def test_zero_length_file_returns_none() -> None:
    assert _info_of_bytes(b"") is None


def test_garbage_returns_none() -> None:
    assert _info_of_bytes(random.Random(0).randbytes(64 * 1024)) is None


def test_text_file_returns_none() -> None:
    assert _info_of_bytes(b"The free software is not a media file.\n" * 200) is None


def test_directory_descriptor_returns_none(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert read_media_info(fd, 4096) is None
    finally:
        os.close(fd)


MAGICS = [
    b"RIFF\xff\xff\xff\xffWAVE",
    b"RF64\xff\xff\xff\xffWAVE",
    b"fLaC",
    b"\x1a\x45\xdf\xa3",
    b"\x00\x00\x00\x20ftyp",
    b"\x00\x00\x00\x01moov",
    b"ID3\x04\x00\x00\x00\x00\x00\x10",
    b"\xff\xfb\x90\xc4",
]


@pytest.mark.parametrize("magic", MAGICS, ids=lambda m: m.hex())
def test_garbage_after_a_valid_magic_never_raises(magic: bytes) -> None:
    for seed in range(50):
        _assert_sane(_info_of_bytes(magic + random.Random(seed).randbytes(seed * 97)))


TRUNCATED = ["wav_2s", "wav_rf64", "flac", "mp3_cbr_xing", "m4a_aac", "mp4_320x240", "mp4_320x240_faststart"]
TRUNCATED += ["mkv", "webm_vp9_opus"]


@pytest.mark.parametrize("cut", [1, 4, 11, 12, 40, 44, 100, 1000, 0.5, -1])
@pytest.mark.parametrize("name", TRUNCATED)
def test_truncated_files_return_none_or_no_more_than_the_whole(
    media_files: dict[str, Path], name: str, cut: float
) -> None:
    data = _file(media_files, name).read_bytes()
    size = int(len(data) * cut) if isinstance(cut, float) else cut % len(data)
    _assert_sane(_info_of_bytes(data[:size]), full=_info(media_files[name]))


def test_truncated_faststart_mp4_is_left_to_ffprobe(media_files: dict[str, Path]) -> None:
    # moov (and its full duration) survives the cut, but mdat overruns the file.
    data = _file(media_files, "mp4_320x240_faststart").read_bytes()
    assert _info_of_bytes(data[: len(data) // 2]) is None


def test_truncated_wav_reports_the_audio_present_as_ffprobe_does(
    media_files: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "cut"
    path.write_bytes(_file(media_files, "wav_2s").read_bytes()[:100_000])
    info = _info(path)
    assert info is not None and info.duration_s == pytest.approx(_ffprobe_duration(path), abs=TOLERANCE_S)


def test_wav_claiming_a_huge_data_size_is_cut_to_the_file(media_files: dict[str, Path]) -> None:
    data = bytearray(_file(media_files, "wav_2s").read_bytes())
    chunk = data.index(b"data")
    data[chunk + 4 : chunk + 8] = struct.pack("<I", 0xFFFFFFF0)
    info = _info_of_bytes(bytes(data))
    assert info is not None and info.duration_s == pytest.approx(2.0, abs=TOLERANCE_S)


def test_mp4_box_smaller_than_its_header_returns_none() -> None:
    assert _info_of_bytes(struct.pack(">I4s4sI", 4, b"ftyp", b"isom", 0) + b"\0" * 64) is None


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    reads: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, off: int) -> bytes:
        reads.append(n)
        return real_pread(fd, n, off)

    monkeypatch.setattr(media.os, "pread", counting_pread)
    return reads


def _hostile_mp4_many_boxes() -> bytes:  # 100k empty boxes before moov: the walk must give up
    return (
        struct.pack(">I4s4sI", 16, b"ftyp", b"isom", 0)
        + struct.pack(">I4s", 8, b"free") * 100_000
        + b"\0" * 8
    )


def _hostile_mp4_huge_moov() -> bytes:  # moov declares 2**62 bytes (64-bit largesize)
    return (
        struct.pack(">I4s4sI", 16, b"ftyp", b"isom", 0)
        + struct.pack(">I4sQ", 1, b"moov", 2**62)
        + b"\0" * 1000
    )


def _hostile_mkv_huge_tracks() -> bytes:  # Tracks declares ~2**55 bytes after a tiny EBML header
    ebml = b"\x1a\x45\xdf\xa3\x8b\x42\x82\x88matroska"
    segment = b"\x18\x53\x80\x67\x01\xff\xff\xff\xff\xff\xff\xff"  # unknown size
    return ebml + segment + b"\x16\x54\xae\x6b\x01\x7f\xff\xff\xff\xff\xff\xff" + b"\0" * 300_000


def _hostile_wav_many_chunks() -> bytes:  # 50k empty chunks before fmt
    return b"RIFF\0\0\0\0WAVE" + b"JUNK\0\0\0\0" * 50_000


@pytest.mark.parametrize(
    "make",
    [_hostile_mp4_many_boxes, _hostile_mp4_huge_moov, _hostile_mkv_huge_tracks, _hostile_wav_many_chunks],
)
def test_hostile_declared_sizes_and_counts_keep_reads_within_budget(
    make: Callable[[], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make()
    reads = _count_reads(monkeypatch)
    assert _info_of_bytes(data) is None
    assert sum(reads) <= READ_BUDGET


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(
        ["wav_s24_extensible", "flac", "mp3_vbr", "mp4_320x240_faststart", "mkv", "webm_vp9_opus"]
    ),
    edits=st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), min_size=1, max_size=8),
    keep=st.integers(0, 4096),
)
def test_corrupted_headers_never_raise_and_stay_within_budget(
    media_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    edits: list[tuple[int, int]],
    keep: int,
) -> None:
    if name not in media_files:
        return
    data = bytearray(media_files[name].read_bytes())
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    reads = _count_reads(monkeypatch)
    info = _info_of_bytes(bytes(data[: keep or None]))
    monkeypatch.undo()
    _assert_sane(info)
    assert sum(reads) <= READ_BUDGET
