"""SmolVLM / Idefics3 pixel values in numpy, equal to transformers' Idefics3 image processor for one tile.

With image splitting off, ``Idefics3ImageProcessor`` (its Pillow path) turns an image into one square tile in two
resizes on uint8: first the longest edge to ``size["longest_edge"]`` (the other edge keeps the aspect ratio and is
rounded up to an even number of pixels; small images are enlarged), then the whole image to ``max_image_size``
square, aspect ratio not kept. Then the usual rescale and normalisation. Both resizes and the rest are imaging.py's,
so the Pillow-exact resampler serves every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import InputError, ManifestError
from .imaging import ImageConfig, load_image, map_images, preprocess, resize

# transformers' idefics3 MAX_IMAGE_SIZE: the processor keeps a resized image's longest edge at or below this.
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class Idefics3ImageConfig:
    """The single-tile recipe, from the manifest's ``image`` section (the image processor's own setting names)."""

    do_convert_rgb: bool
    do_resize: bool
    longest_edge: int
    tile: ImageConfig  # the second resize (always done, to the max_image_size square), rescale and normalisation

    @classmethod
    def from_settings(cls, settings: dict) -> "Idefics3ImageConfig":
        """Read and check the settings ``idefics3_settings`` recorded at export.

        Raises:
            ManifestError: a setting is missing or malformed, or the export asked for image splitting.
        """
        if settings.get("do_image_splitting"):
            raise ManifestError("the manifest's image settings have do_image_splitting true: edgecap runs SmolVLM "
                                "on one tile; re-export with do_image_splitting false in the processor config")
        try:
            edge = int(settings["max_image_size"]["longest_edge"])
            # the global image is resized to the tile whether or not do_resize is set, as the processor does
            tile = ImageConfig(height=edge, width=edge, do_resize=True, resample=int(settings["resample"]),
                               do_rescale=bool(settings["do_rescale"]),
                               rescale_factor=float(settings["rescale_factor"]),
                               do_normalize=bool(settings["do_normalize"]),
                               mean=tuple(float(v) for v in settings["image_mean"]),  # type: ignore[arg-type]
                               std=tuple(float(v) for v in settings["image_std"]))  # type: ignore[arg-type]
            return cls(do_convert_rgb=bool(settings.get("do_convert_rgb", True)),
                       do_resize=bool(settings["do_resize"]), longest_edge=int(settings["size"]["longest_edge"]),
                       tile=tile)
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"malformed Idefics3 image settings ({type(exc).__name__}: {exc}): expected "
                                "do_resize, size.longest_edge, max_image_size.longest_edge, resample, do_rescale, "
                                "rescale_factor, do_normalize, image_mean, image_std; re-export the model") from None


def longest_edge_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """The processor's first resize: the longest edge to ``longest_edge``, the other scaled and rounded up to even.

    Args:
        height: the image's height.
        width: the image's width.
        longest_edge: the processor's ``size["longest_edge"]``.

    Returns:
        (height, width) after the resize, with the processor's integer truncation and bounds.
    """
    aspect = width / height
    if width >= height:
        width = longest_edge
        height = int(width / aspect)
        height += height % 2
    else:
        height = longest_edge
        width = int(height * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    # then at most MAX_IMAGE_SIZE, keeping the aspect ratio of the size just computed (as the processor does)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


def preprocess_idefics3(images: Sequence[Any], settings: dict) -> np.ndarray:
    """Turn images into SmolVLM's float32 [B, 3, tile, tile] pixel values, one tile per image.

    Args:
        images: a non-empty sequence of anything ``imaging.load_image`` accepts (PIL images, HxWx3 uint8 arrays,
            paths).
        settings: the manifest's ``image`` section for an ``Idefics3ImageProcessor`` (see ``Idefics3ImageConfig``).

    Returns:
        float32 array [B, 3, max_image_size, max_image_size], equal to the processor's ``pixel_values[:, 0]``.

    Raises:
        InputError: no images, or an image that cannot be read.
        ManifestError: the settings are malformed or ask for image splitting.
    """
    cfg = Idefics3ImageConfig.from_settings(settings)
    if len(images) == 0:
        raise InputError("expected at least one image, got an empty batch")

    def first_resize(image: Any) -> np.ndarray:
        px = load_image(image, alpha_on_white=cfg.do_convert_rgb)
        if cfg.do_resize:
            px = resize(px, *longest_edge_size(px.shape[0], px.shape[1], cfg.longest_edge), cfg.tile.resample)
        return px

    return preprocess(map_images(first_resize, images), cfg.tile)
