"""Images as users hand them over: transparency and EXIF orientation, as the checkpoint's processor sees them."""

from __future__ import annotations

import numpy as np
import pytest

from edgecap import Captioner

pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")


def _rgba(seed: int = 0, height: int = 40, width: int = 60) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    img[..., 3] = np.linspace(0, 255, width).astype(np.uint8)[None]  # fully transparent to opaque, left to right
    return img


def _pil_processor(checkpoint: str):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(checkpoint, backend="pil")


def _transparent_inputs() -> dict[str, object]:
    rgba = _rgba()
    paletted = Image.fromarray(rgba[..., :3]).convert("P")
    paletted.info["transparency"] = int(np.asarray(paletted)[0, 0])
    return {"rgba array": rgba, "RGBA image": Image.fromarray(rgba, "RGBA"),
            "LA image": Image.fromarray(rgba[..., [0, 3]], "LA"), "P image with transparency": paletted}


@pytest.mark.parametrize("arch", ["blip", "florence2"])
def test_transparency_is_composited_onto_white_as_the_processor_does(arch, checkpoint_factory, exported_factory):
    proc = _pil_processor(checkpoint_factory(arch))
    cap = Captioner(exported_factory(arch))
    assert proc.do_convert_rgb and cap.manifest.data["image"]["do_convert_rgb"] is True
    for name, image in _transparent_inputs().items():
        ref = proc(images=[image], return_tensors="np")["pixel_values"]
        assert np.max(np.abs(cap.preprocess([image]) - ref)) <= 1e-4, name
    rgba = _rgba()
    # composited, not dropped: the transparent half of the image turns white
    assert np.max(np.abs(cap.preprocess([rgba]) - cap.preprocess([rgba[..., :3]]))) > 0.5
    enc = cap.encode_images([Image.fromarray(rgba, "RGBA")], "<CAPTION>" if arch == "florence2" else None)
    assert enc.image_sizes == ((60, 40),)


def test_a_processor_without_convert_rgb_drops_alpha(tiny_export):
    cap = Captioner(tiny_export)
    assert not cap.image_config.convert_rgb
    rgba = _rgba()
    assert np.array_equal(cap.preprocess([rgba]), cap.preprocess([rgba[..., :3]]))


@pytest.mark.parametrize("arch", ["blip", "florence2"])
def test_image_files_are_read_upright_as_transformers_load_image_reads_them(arch, checkpoint_factory,
                                                                            exported_factory, tmp_path):
    from transformers.image_utils import load_image as hf_load_image

    proc = _pil_processor(checkpoint_factory(arch))
    cap = Captioner(exported_factory(arch))
    yy, xx = np.mgrid[0:40, 0:60]
    picture = np.stack([xx * 4, yy * 6, (xx // 6 + yy // 6) % 2 * 200], -1).astype(np.uint8)  # not symmetric
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(picture).save(path, exif=exif, quality=95)
    ref = proc(images=[hf_load_image(str(path))], return_tensors="np")["pixel_values"]
    assert np.max(np.abs(cap.preprocess([str(path)]) - ref)) <= 1e-4
    sideways = proc(images=[Image.open(path).convert("RGB")], return_tensors="np")["pixel_values"]
    assert np.max(np.abs(sideways - ref)) > 0.5  # the orientation matters to the pixels compared
    enc = cap.encode_images([str(path)], "<OD>" if arch == "florence2" else None)
    assert enc.image_sizes == ((40, 60),)  # (width, height) upright: boxes scale to the picture as displayed
