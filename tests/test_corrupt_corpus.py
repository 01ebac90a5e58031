"""A seeded mutation corpus of broken video files (RELIABILITY.md 10, issue 6: "a corrupt corpus you have not seen").

A fixture encodes short synthetic clips with PyAV in six containers (MP4 with the index at the end and at the start,
Matroska, AVI, WebM, MPEG-TS), then derives files from them with a fixed seed: truncations at many offsets, bytes
flipped in the header and the middle, zeroed ranges, swapped chunks, wrong extensions, an empty file, random bytes
behind a valid magic number, and headers claiming absurd dimensions. For every file a Source must give frames or one
typed, one-line error, never an exception escaping a thread and never a hang; for a sample, ``edgecap run FILE``
must end with one clear line on stderr (no traceback) and a non-zero exit when nothing could be read.
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from edgecap.errors import SourceError
from edgecap.sources import Source, SourceConfig, SourceState

S = SourceState
SEED = 20240611
FRAMES, FPS, WIDTH, HEIGHT = 20, 10, 160, 120
PER_FILE_LIMIT_S = 20.0  # generous: a healthy file of this corpus takes well under a second
CONTAINERS = {  # name: (extension, format, codec, container options)
    "mp4": ("mp4", "mp4", "libx264", {}),
    "mp4_faststart": ("mp4", "mp4", "libx264", {"movflags": "faststart"}),
    "mkv": ("mkv", "matroska", "libx264", {}),
    "avi": ("avi", "avi", "mpeg4", {}),
    "webm": ("webm", "webm", "libvpx", {}),
    "ts": ("ts", "mpegts", "libx264", {}),
}


@dataclass(frozen=True)
class Case:
    name: str
    path: Path


def synthetic_frames() -> list[np.ndarray]:
    """A moving bright square over a gradient with seeded noise: every frame differs, every codec has work."""
    rng = np.random.default_rng(SEED)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    frames = []
    for i in range(FRAMES):
        img = np.stack([(x * 255 // WIDTH), (y * 255 // HEIGHT), np.full_like(x, 40 + 8 * i)], -1).astype(np.uint8)
        left = 8 + 6 * i
        img[40:80, left:left + 30] = (250, 250, 60)
        img = np.clip(img.astype(np.int16) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
        frames.append(img)
    return frames


def encode(path: Path, fmt: str, codec: str, options: dict[str, str]) -> None:
    with av.open(str(path), "w", format=fmt, options=options) as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "g": "5"}
        for img in synthetic_frames():
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(width: int, height: int) -> bytes:
    """A PNG whose (valid, CRC-correct) header claims width x height, with a few bytes of image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x80" * 30)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def patch_mp4_dimensions(data: bytes, width: int, height: int) -> bytes:
    """Claim width x height in the MP4 track header and the avc1 sample entry (the H.264 stream is unchanged)."""
    out = bytearray(data)
    tkhd = out.find(b"tkhd")
    assert tkhd > 0
    version = out[tkhd + 4]
    dims_at = tkhd + 4 + (84 if version == 1 else 72)  # 16.16 fixed point width, height at the end of the box
    out[dims_at:dims_at + 8] = struct.pack(">II", width << 16, height << 16)
    avc1 = out.find(b"avc1")
    assert avc1 > 0
    out[avc1 + 4 + 24:avc1 + 4 + 28] = struct.pack(">HH", width, height)
    return bytes(out)


def mutations(name: str, ext: str, data: bytes, rng: np.random.Generator) -> dict[str, bytes]:
    """Derived files of one clip, keyed by file name."""
    n = len(data)
    out: dict[str, bytes] = {}
    for frac in (0.02, 0.3, 0.6, 0.95):  # truncations: in the header, early, middle, just before the end
        cut = max(1, int(n * frac) + int(rng.integers(-50, 50)))
        out[f"{name}_trunc{int(frac * 100):02d}.{ext}"] = data[:cut]
    out[f"{name}_trunc_tiny.{ext}"] = data[:int(rng.integers(1, 40))]
    arr = bytearray(data)
    for i in rng.integers(0, min(n, 512), 12):
        arr[i] ^= int(rng.integers(1, 256))
    out[f"{name}_flip_header.{ext}"] = bytes(arr)
    arr = bytearray(data)
    for i in rng.integers(n // 4, 3 * n // 4, 150):
        arr[i] ^= int(rng.integers(1, 256))
    out[f"{name}_flip_middle.{ext}"] = bytes(arr)
    start = int(rng.integers(n // 5, n // 2))
    out[f"{name}_zeroed.{ext}"] = data[:start] + bytes(min(4096, n - start)) + data[start + 4096:]
    size = max(64, n // 10)
    a, b = int(rng.integers(0, n // 2 - size)), int(rng.integers(n // 2, n - size))
    out[f"{name}_swapped.{ext}"] = data[:a] + data[b:b + size] + data[a + size:b] + data[a:a + size] + data[b + size:]
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Case]:
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(SEED)
    files: dict[str, bytes] = {}
    clean: dict[str, bytes] = {}
    for name, (ext, fmt, codec, options) in CONTAINERS.items():
        path = d / f"clean_{name}.{ext}"
        encode(path, fmt, codec, options)
        clean[name] = path.read_bytes()
        files.update(mutations(name, ext, clean[name], rng))
    # wrong extensions: a valid file under a misleading name
    files["mkv_named.mp4"] = clean["mkv"]
    files["webm_named.avi"] = clean["webm"]
    files["ts_named.jpg"] = clean["ts"]
    files["mp4_named.txt"] = clean["mp4"]
    # nothing, or noise behind a magic number
    files["empty.mp4"] = b""
    files["random.webm"] = rng.integers(0, 256, 30_000, dtype=np.uint8).tobytes()
    files["magic_ftyp.mp4"] = b"\x00\x00\x00\x18ftypisom" + rng.integers(0, 256, 8000, dtype=np.uint8).tobytes()
    files["magic_ebml.mkv"] = b"\x1a\x45\xdf\xa3" + rng.integers(0, 256, 8000, dtype=np.uint8).tobytes()
    files["magic_riff.avi"] = b"RIFF\xff\xff\xff\x7fAVI LIST" + rng.integers(0, 256, 8000, dtype=np.uint8).tobytes()
    files["ts_sync_noise.ts"] = b"".join(b"G" + rng.integers(0, 256, 187, dtype=np.uint8).tobytes()
                                         for _ in range(60))
    # absurd dimensions
    files["huge_dims.mp4"] = patch_mp4_dimensions(clean["mp4"], 65535, 65535)
    files["huge_claimed.png"] = huge_png(16000, 16000)  # allowed by FFmpeg's size check; no data behind it
    files["absurd.png"] = huge_png(1 << 30, 1 << 30)
    files["huge.y4m"] = b"YUV4MPEG2 W99999 H99999 F10:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(1000)
    files["big_truncated.y4m"] = b"YUV4MPEG2 W8000 H8000 F10:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(5000)
    cases = []
    for fname, body in sorted(files.items()):
        (d / fname).write_bytes(body)
        cases.append(Case(fname, d / fname))
    return cases


@pytest.fixture
def escaped(monkeypatch):
    """Exceptions that escape a thread or a destructor (a traceback printed to stderr) during the test."""
    caught: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: caught.append(
        f"thread {args.thread.name if args.thread else '?'}: {args.exc_type.__name__}: {args.exc_value}"))
    monkeypatch.setattr(sys, "unraisablehook", lambda u: caught.append(f"unraisable: {u.exc_type.__name__}"))
    return caught


def test_corpus_is_varied(corpus):
    names = [c.name for c in corpus]
    assert 50 <= len(names) <= 70
    assert {Path(n).suffix for n in names} >= {".mp4", ".mkv", ".avi", ".webm", ".ts", ".png", ".y4m", ".jpg"}
    # deterministic: same seed, same bytes
    assert len({c.path.read_bytes() for c in corpus}) == len(corpus)


def read_file(path: Path) -> tuple[Source | None, list, list, str | None, float]:
    """(source, frames, statuses, start error, seconds) for one file read to its end."""
    statuses: list = []
    began = time.monotonic()
    src = Source(SourceConfig("corpus", str(path), interval_s=0.1), on_status=statuses.append)
    try:
        src.start()
    except SourceError as exc:  # a typed error before the reader starts is a fine answer
        return None, [], statuses, str(exc), time.monotonic() - began
    frames = []
    deadline = began + PER_FILE_LIMIT_S
    try:
        while not src.finished and time.monotonic() < deadline:
            sample = src.read(timeout=0.5)
            if sample is not None:
                frames.append(sample)
    finally:
        src.stop(timeout=2.0)
    return src, frames, statuses, None, time.monotonic() - began


def test_every_file_gives_frames_or_one_typed_error(corpus, escaped):
    outcomes = {}
    for case in corpus:
        src, frames, statuses, start_error, seconds = read_file(case.path)
        where = f"{case.name}: {[(s.kind, s.message) for s in statuses]}"
        assert seconds < PER_FILE_LIMIT_S, f"{case.name} took {seconds:.1f} s (a hang?)"
        if start_error is not None:
            assert "\n" not in start_error and case.name in start_error, start_error
            outcomes[case.name] = "start_error"
            continue
        assert src.finished, f"{case.name}: the reader did not finish within {PER_FILE_LIMIT_S} s"
        assert src.state in (S.STOPPED, S.FAILED), where
        assert all("\n" not in s.message and "Traceback" not in s.message for s in statuses), where
        errors = [s for s in statuses if s.kind == "source_error"]
        terminal = [s for s in errors if s.state is S.FAILED]
        decode = [s for s in errors if s.state is not S.FAILED]
        assert len(decode) <= 1, where  # decode errors are reported once, then counted
        if src.state is S.FAILED:
            assert len(terminal) == 1 and statuses[-1] is terminal[0], where
            assert case.name in terminal[0].message, where
            outcomes[case.name] = "error"
        else:
            assert frames and not terminal and statuses[-1].kind == "finished", where
            shapes = {f.image.shape for f in frames}
            assert len(shapes) == 1 and all(f.image.dtype == np.uint8 for f in frames), where
            h, w, c = shapes.pop()
            assert c == 3 and 0 < h <= 4096 and 0 < w <= 4096, where
            assert [f.seq for f in frames] == list(range(len(frames))), where
            outcomes[case.name] = "frames"
    assert not escaped, escaped
    assert not [t for t in threading.enumerate() if t.name.startswith("edgecap-source-")]
    # the corpus exercises both answers, and the fixture's clean clips were genuinely decodable
    values = list(outcomes.values())
    assert values.count("frames") >= 10 and values.count("error") >= 10, outcomes
    for name in ("mkv_named.mp4", "webm_named.avi", "ts_named.jpg", "mp4_named.txt", "mkv_trunc60.mkv"):
        assert outcomes[name] == "frames", (name, outcomes[name])
    for name in ("empty.mp4", "random.webm", "absurd.png", "huge.y4m", "mp4_trunc_tiny.mp4"):
        assert outcomes[name] in ("error", "start_error"), (name, outcomes[name])


CLI_SAMPLE = ("empty.mp4", "random.webm", "magic_ebml.mkv", "mp4_trunc30.mp4", "mp4_faststart_trunc60.mp4",
              "avi_flip_header.avi", "webm_swapped.webm", "huge_dims.mp4", "huge.y4m", "absurd.png",
              "ts_named.jpg", "mkv_zeroed.mkv", "ts_trunc02.ts")
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (WARNING|ERROR) edgecap: \[[^\]]+\] ")


@pytest.mark.slow  # a fresh interpreter per file, each loading the model
@pytest.mark.parametrize("name", CLI_SAMPLE)
def test_cli_run_ends_with_one_clear_line(corpus, tmp_path, name):
    case = next(c for c in corpus if c.name == name)
    proc = subprocess.run([sys.executable, "-m", "edgecap.cli", "run", str(case.path), "--db",
                           str(tmp_path / "ev.sqlite"), "--interval", "0.5", "--threads", "1"],
                          capture_output=True, text=True, timeout=60)
    err_lines = proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert all(_LOG_LINE.match(line) for line in err_lines), err_lines  # only whole, formatted log lines
    if proc.returncode != 0:
        assert proc.returncode == 1, proc.stderr
        failed = [line for line in err_lines if "source_error" in line and "decode error" not in line]
        assert len(failed) == 1 and case.name in failed[0], err_lines
        assert err_lines[-1] == failed[0]
        assert len(err_lines) <= 2, err_lines  # at most one "decode error ... (skipped)" line before it
    else:
        assert len(err_lines) <= 1 and all("decode error" in line for line in err_lines), err_lines
        sampled = int(re.search(r"sampled (\d+)", proc.stdout).group(1))
        assert sampled > 0, proc.stdout
