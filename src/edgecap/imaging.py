"""Image loading and preprocessing in numpy, bit-exact with the Pillow path of Hugging Face image processors.

Hugging Face's ViT image processor resizes with Pillow on uint8 RGB, then rescales in float64, casts to float32
and normalizes. Pillow's resampler is a separable two-pass convolution with 22-bit fixed-point weights and a uint8
intermediate image; this module reimplements exactly that, so the runtime needs neither Pillow nor torchvision and
produces the same pixel values as the checkpoint's processor (tests pin the maximum absolute difference).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from .errors import InputError

try:  # optional: when present, resize with Pillow itself, exactly as Hugging Face processors do
    from PIL import Image as _PIL
except ImportError:  # pragma: no cover - exercised on minimal installs
    _PIL = None

# Pillow's resampling filter ids, as stored in preprocessor_config.json ("resample": 2 is bilinear).
NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING = 0, 1, 2, 3, 4, 5
RESAMPLE_NAMES = {
    NEAREST: "nearest", LANCZOS: "lanczos", BILINEAR: "bilinear", BICUBIC: "bicubic", BOX: "box", HAMMING: "hamming"
}
_PRECISION_BITS = 32 - 8 - 2
_F32_054, _F32_046 = float(np.float32(0.54)), float(np.float32(0.46))  # Pillow uses float literals here


def _box(x: float) -> float:
    return 1.0 if -0.5 < x <= 0.5 else 0.0


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _hamming(x: float) -> float:
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x *= math.pi
    return math.sin(x) / x * (_F32_054 + _F32_046 * math.cos(x))


def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x *= math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0


_FILTERS = {BOX: (_box, 0.5), BILINEAR: (_bilinear, 1.0), HAMMING: (_hamming, 1.0), BICUBIC: (_bicubic, 2.0),
            LANCZOS: (_lanczos, 3.0)}


@lru_cache(maxsize=64)
def _coefficients(in_size: int, out_size: int, resample: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc: (indices [out, k], fixed-point weights [out, k])."""
    filt, base_support = _FILTERS[resample]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    idx = np.zeros((out_size, ksize), dtype=np.intp)
    weights = np.zeros((out_size, ksize), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [filt((x + xmin - center + 0.5) / filterscale) for x in range(xmax)]
        total = sum(k)
        if total != 0.0:
            k = [w / total for w in k]
        for x, w in enumerate(k):
            weights[xx, x] = int(-0.5 + w * (1 << _PRECISION_BITS)) if w < 0 else int(0.5 + w * (1 << _PRECISION_BITS))
            idx[xx, x] = xmin + x
        idx[xx, xmax:] = xmin  # zero weight: any valid index
    return idx, weights


def _resample_axis(img: np.ndarray, out_size: int, resample: int, axis: int) -> np.ndarray:
    idx, weights = _coefficients(img.shape[axis], out_size, resample)
    acc = np.full(img.shape[:axis] + (out_size,) + img.shape[axis + 1:], 1 << (_PRECISION_BITS - 1), dtype=np.int64)
    shape = [1] * img.ndim
    shape[axis] = out_size
    for t in range(idx.shape[1]):
        acc += np.take(img, idx[:, t], axis=axis).astype(np.int64) * weights[:, t].reshape(shape)
    return np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def resize(img: np.ndarray, height: int, width: int, resample: int = BILINEAR) -> np.ndarray:
    """Resize an HxWxC uint8 image exactly as ``PIL.Image.resize((width, height), resample)`` does.

    Args:
        img: HxWxC uint8 array.
        height: output height.
        width: output width.
        resample: a Pillow filter id (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming).

    Returns:
        The resized height x width x C uint8 array.
    """
    in_h, in_w = img.shape[:2]
    if (in_h, in_w) == (height, width):
        return img.copy()
    if _PIL is not None:
        return np.asarray(_PIL.fromarray(img).resize((width, height), resample=resample))
    return resize_numpy(img, height, width, resample)


def resize_numpy(img: np.ndarray, height: int, width: int, resample: int = BILINEAR) -> np.ndarray:
    """Pillow's algorithm in numpy, used when Pillow is not installed.

    Bit-exact with Pillow up to 12 for the convolution filters. Pillow 13 sometimes runs the vertical pass first
    when both axes change, which moves a share of pixels by one level (tests pin the bound); nearest may pick the
    neighbouring source pixel.
    """
    in_h, in_w = img.shape[:2]
    if resample == NEAREST:
        ys = ((np.arange(height) + 0.5) * (in_h / height)).astype(np.intp)
        xs = ((np.arange(width) + 0.5) * (in_w / width)).astype(np.intp)
        return img[ys][:, xs]
    if resample not in _FILTERS:
        raise InputError(f"unknown resample filter {resample!r}: expected one of {sorted(RESAMPLE_NAMES)}")
    out = img
    if in_w != width:
        # Pillow only runs the horizontal pass over the rows the vertical pass will read.
        vidx, vweights = _coefficients(in_h, height, resample)
        used = vidx[vweights != 0]
        first, last = (int(used.min()), int(used.max()) + 1) if in_h != height else (0, in_h)
        out = _resample_axis(img[first:last], width, resample, axis=1)
        if in_h != height:
            out = np.concatenate([np.zeros((first,) + out.shape[1:], np.uint8), out,
                                  np.zeros((in_h - last,) + out.shape[1:], np.uint8)])
    if in_h != height:
        out = _resample_axis(out, height, resample, axis=0)
    return out


def load_image(image: Any, *, alpha_on_white: bool = False) -> np.ndarray:
    """Return an image as an HxWx3 uint8 RGB array.

    Args:
        image: an HxWx3 (or HxW grey, or HxWx4 RGBA) uint8 array, a PIL image, or a path to an image file.
        alpha_on_white: composite a PIL image's or an RGBA array's transparency onto white, as an image processor
            with ``do_convert_rgb`` does (transformers' ``convert_to_rgb``); otherwise alpha is dropped. A file is
            read as transformers' ``load_image`` reads it: turned upright by its EXIF orientation, then converted
            to RGB (alpha dropped) keeping the file's transparent colour, if it names one (a PNG tRNS chunk, a GIF),
            which ``alpha_on_white`` then paints white as the processor does.

    Returns:
        A C-contiguous HxWx3 uint8 array.

    Raises:
        InputError: the object is not an image, or the file cannot be read.
    """
    if isinstance(image, (str, os.PathLike)):
        image = _read_image_file(os.fspath(image))
    if hasattr(image, "convert") and hasattr(image, "size") and not isinstance(image, np.ndarray):
        try:
            if alpha_on_white and ("A" in image.getbands() or image.info.get("transparency") is not None):
                rgba = image.convert("RGBA")
                image = _PIL.alpha_composite(_PIL.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            image = np.asarray(image.convert("RGB"))
        except (ValueError, OSError) as exc:  # a mode Pillow cannot convert to RGB (e.g. "La")
            raise InputError(f"cannot convert a PIL image of mode {image.mode!r} to RGB: {_describe(exc)}") from None
    if not isinstance(image, np.ndarray):
        raise InputError(f"expected an HxWx3 uint8 RGB array, a PIL image or a path, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"expected a uint8 image (0..255), got dtype {image.dtype}; "
                         "convert with np.clip(img * 255, 0, 255).astype(np.uint8) if it is float in 0..1")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 1:  # HxWx1 grey, as image processors read it
        image = np.repeat(image, 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InputError(f"expected an HxWx3 RGB image, got an array of shape {tuple(image.shape)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"expected a non-empty image, got shape {tuple(image.shape)}")
    if alpha_on_white and image.shape[2] == 4:  # convert_to_rgb's arithmetic: float64, rounded
        alpha = image[:, :, 3:4] / 255
        return np.round(alpha * image[:, :, :3] + (1 - alpha) * 255).astype(np.uint8)
    return np.ascontiguousarray(image[:, :, :3])


def _read_image_file(path: str) -> Any:
    """An RGB PIL image as transformers' ``load_image`` returns it, or, without Pillow, an HxWx3 array."""
    if not os.path.isfile(path):
        raise InputError(f"image file not found: {path}")
    try:
        if _PIL is not None:  # decodes exactly as transformers' load_image does: EXIF orientation, then RGB
            from PIL import ImageOps

            with _PIL.open(path) as im:
                # an RGB image that keeps the file's colour key (info["transparency"], from a tRNS chunk or a GIF),
                # as load_image returns it: a processor with do_convert_rgb composites that colour onto white
                rgb = ImageOps.exif_transpose(im).convert("RGB")
                rgb.load()
                return rgb
        import av

        with av.open(path) as container:
            frame = next(container.decode(video=0))
            return frame.to_ndarray(format="rgb24")
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the same user error
        raise InputError(f"cannot decode image {path}: {_describe(exc)}; expected a PNG/JPEG/BMP/WebP file") from None


def _describe(exc: BaseException) -> str:
    """The exception's type and message on one short line: the message says why (truncated image, bad header)."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class ImageConfig:
    """How pixel values are produced, as recorded in the manifest from the checkpoint's image processor."""

    height: int
    width: int
    do_resize: bool
    resample: int
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    convert_rgb: bool = False  # the processor's do_convert_rgb: transparency onto white (older manifests: dropped)

    @classmethod
    def from_manifest(cls, d: dict) -> "ImageConfig":
        return cls(height=int(d["height"]), width=int(d["width"]), do_resize=bool(d["do_resize"]),
                   resample=int(d["resample"]), do_rescale=bool(d["do_rescale"]),
                   rescale_factor=float(d["rescale_factor"]), do_normalize=bool(d["do_normalize"]),
                   mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),
                   convert_rgb=bool(d.get("do_convert_rgb", False)))


_T = TypeVar("_T")


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else the logical CPUs)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def map_images(fn: Callable[[Any], _T], images: Sequence[Any]) -> list[_T]:
    """``fn`` over ``images``, in order. With several images it runs them on a thread per core: Pillow's resampler
    and numpy's arithmetic release the GIL, so a batch's images are prepared in parallel (SmolVLM's two Lanczos
    resizes take about 140 ms per frame on this project's 2-core machines). Exceptions propagate unchanged."""
    workers = min(len(images), usable_cores())
    if workers < 2:
        return [fn(image) for image in images]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgecap-preprocess") as pool:
        return list(pool.map(fn, images))


def preprocess(images: Sequence[Any], cfg: ImageConfig) -> np.ndarray:
    """Turn images into the encoder's float32 [B, 3, H, W] pixel values.

    Args:
        images: a non-empty sequence of anything `load_image` accepts.
        cfg: the manifest's image configuration.

    Returns:
        float32 array [B, 3, cfg.height, cfg.width].
    """
    if len(images) == 0:
        raise InputError("expected at least one image, got an empty batch")
    out = np.empty((len(images), 3, cfg.height, cfg.width), dtype=np.float32)
    mean = np.asarray(cfg.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(cfg.std, dtype=np.float32)[:, None, None]

    def one(row: tuple[int, Any]) -> None:
        i, image = row
        px = load_image(image, alpha_on_white=cfg.convert_rgb)
        if cfg.do_resize:
            px = resize(px, cfg.height, cfg.width, cfg.resample)
        elif px.shape[:2] != (cfg.height, cfg.width):
            raise InputError(f"expected a {cfg.height}x{cfg.width} image (the model does not resize), "
                             f"got {px.shape[0]}x{px.shape[1]}")
        chw = px.transpose(2, 0, 1)
        x = (chw.astype(np.float64) * cfg.rescale_factor).astype(np.float32) if cfg.do_rescale else chw.astype(np.float32)
        out[i] = (x - mean) / std if cfg.do_normalize else x

    map_images(one, list(enumerate(images)))
    return out
