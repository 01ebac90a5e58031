"""Images as users hand them over: transparency, EXIF orientation, and batches encoded image by image (streams)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecap import Captioner
from edgecap.errors import InputError

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



@pytest.mark.parametrize("arch", ["blip", "florence2"])
def test_a_files_transparent_colour_is_painted_as_the_processor_paints_it(arch, checkpoint_factory, exported_factory,
                                                                          tmp_path):
    # PNG files can name one transparent colour (a tRNS chunk: a palette index, or an RGB colour key). transformers'
    # load_image keeps it on the RGB image it returns, and a processor with do_convert_rgb paints it white.
    from transformers.image_utils import load_image as hf_load_image

    proc = _pil_processor(checkpoint_factory(arch))
    cap = Captioner(exported_factory(arch))
    rgb = _rgba()[..., :3].copy()
    rgb[:20, :30] = (10, 200, 30)  # the keyed colour covers a quarter of the picture
    paletted = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    paletted.save(tmp_path / "palette.png", transparency=int(np.asarray(paletted)[0, 0]))
    Image.fromarray(rgb).save(tmp_path / "keyed.png", transparency=(10, 200, 30))
    for name in ("palette.png", "keyed.png"):
        path = str(tmp_path / name)
        ref = proc(images=[hf_load_image(path)], return_tensors="np")["pixel_values"]
        assert np.max(np.abs(cap.preprocess([path]) - ref)) <= 1e-4, name
        opaque = proc(images=[np.asarray(Image.open(path).convert("RGB"))], return_tensors="np")["pixel_values"]
        assert np.max(np.abs(opaque - ref)) > 0.5, name  # the key matters to the pixels compared


def test_an_hxwx1_grey_array_is_read_as_grey(checkpoint_factory, exported_factory):
    proc = _pil_processor(checkpoint_factory("blip"))
    cap = Captioner(exported_factory("blip"))
    grey = _rgba()[..., 0].copy()
    ref = proc(images=[grey[..., None]], return_tensors="np")["pixel_values"]
    assert np.max(np.abs(cap.preprocess([grey[..., None]]) - ref)) <= 1e-4
    assert np.array_equal(cap.preprocess([grey[..., None]]), cap.preprocess([grey]))


def _int8(exported: str, tmp_path) -> str:
    import shutil

    from edgecap_export.quantize import quantize_dir

    d = tmp_path / "model"
    shutil.copytree(exported, d)
    quantize_dir(d, calib_frames=2, eval_frames=2, accept_quality_drop=True, progress=False)  # random weights
    return str(d)


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (30 + 5 * i, 40, 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("batch", [2, 3, 5])
def test_a_batch_encodes_each_image_as_if_alone(batch, exported_factory, tmp_path):
    """Streams run the images of a batch one by one, two at a time on two single-threaded runs (the leftover one
    on the multi-threaded session): an image's INT8 encoder output no longer depends on its batch-mates, whose
    values would otherwise share its dynamic quantization scales."""
    model = _int8(exported_factory("blip"), tmp_path)
    px = Captioner(model).preprocess(_images(batch))
    streamed = Captioner(model, precision="int8", threads=2)
    one_run = Captioner(model, precision="int8", threads=2, streams=1)
    alone = [streamed.encode(px[i:i + 1]) for i in range(batch)]
    assert streamed._streams._session is None  # single images never make the second session
    enc, joint = streamed.encode(px), one_run.encode(px)
    assert streamed._streams._session is not None and one_run._streams._session is None
    for layer in range(streamed.manifest.num_layers):
        rows = np.concatenate([a.cross_k[layer] for a in alone])
        np.testing.assert_allclose(enc.cross_k[layer], rows, rtol=0, atol=1e-6)
        np.testing.assert_allclose(enc.cross_v[layer], np.concatenate([a.cross_v[layer] for a in alone]),
                                   rtol=0, atol=1e-6)
    # one batched run quantizes each activation over the whole batch: its rows differ from the images alone
    assert max(np.max(np.abs(joint.cross_k[i] - enc.cross_k[i])) for i in range(len(enc.cross_k))) > 1e-4
    # (the INT8 decoder still quantizes each step's activations over the batch: captions are not batch-invariant)


@pytest.mark.parametrize("streams", [0, -1, 1.5, True, "2"])
def test_streams_must_be_a_whole_number_of_at_least_one(streams, tiny_export):
    with pytest.raises(InputError, match="streams") as err:
        Captioner(tiny_export, streams=streams)
    assert "\n" not in str(err.value)
