"""Thumbnails of scenes: where they live next to a database, and writing one as a small JPEG."""

from __future__ import annotations

import contextlib
import os
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import InputError
from .model import EventStoreError


def thumbnail_dir(db_path: str | os.PathLike) -> Path:
    """The folder for thumbnails of a database: ``thumbnails/`` next to it."""
    return Path(db_path).absolute().parent / "thumbnails"


def resolve_thumbnail(folder: Path, stored: str) -> Path | None:
    """The file a stored thumbnail path names, only if it resolves (symlinks followed) to a ``.jpg`` file inside
    ``folder``; None otherwise (missing, outside the folder, not a JPEG name). ``folder`` must be resolved."""
    try:
        path = (folder / stored).resolve(strict=True)  # an absolute stored path replaces the folder
    except (OSError, RuntimeError, ValueError):
        return None
    ok = path.is_relative_to(folder) and path.suffix.lower() == ".jpg" and path.is_file()
    return path if ok else None


def save_jpeg(path: str | os.PathLike, image: np.ndarray, *, max_side: int = 320, quality: int = 5) -> Path:
    """Write an RGB image as a JPEG, downscaled so its longer side is at most ``max_side``, atomically.

    Args:
        path: destination (parent folders are created).
        image: HxWx3 uint8 RGB.
        max_side: longest side in pixels after downscaling (never upscales).
        quality: FFmpeg's JPEG quantiser (``-q:v``): 2 (best) to 31 (smallest).

    Returns:
        the path written.

    Raises:
        InputError: not an HxWx3 uint8 image, or options out of range.
        EventStoreError: the file cannot be written (disk full, permissions).
    """
    import av

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or 0 in arr.shape:
        raise InputError(f"thumbnail image must be HxWx3 uint8 RGB, got shape {arr.shape} dtype {arr.dtype}")
    if not 2 <= quality <= 31 or max_side < 1:
        raise InputError(f"expected 2 <= quality <= 31 and max_side >= 1, got quality={quality} "
                         f"max_side={max_side}")
    h, w = arr.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
    frame = frame.reformat(width=tw, height=th, format="yuvj420p", interpolation="AREA")
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = tw, th, "yuvj420p", Fraction(1, 1)
    ctx.qmin = ctx.qmax = quality
    data = b"".join(bytes(p) for p in (*ctx.encode(frame), *ctx.encode(None)))
    out = Path(path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise EventStoreError(f"cannot write thumbnail {out}: {exc.strerror or exc}; check free space and "
                              "permissions") from None
    return out
