"""SmolVLM/Idefics3 pixel values equal the checkpoint's image processor's, one tile; bad inputs are one clear error."""

from __future__ import annotations

import numpy as np
import pytest

from edgecap.errors import InputError, ManifestError
from edgecap.idefics3_image import longest_edge_size, preprocess_idefics3

PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("transformers")

# SmolVLM-256M/500M-Instruct's published processor (image splitting turned off), and a small one with every other
# setting changed so that each one is seen to be read.
SMOLVLM = dict(size={"longest_edge": 2048}, max_image_size={"longest_edge": 512}, resample=1)
SMALL = dict(size={"longest_edge": 96}, max_image_size={"longest_edge": 48}, resample=3, rescale_factor=1 / 250,
             image_mean=[0.48, 0.45, 0.40], image_std=[0.26, 0.26, 0.27])
SHAPES = [(480, 640), (640, 480), (7, 5), (5, 9), (700, 1100), (1300, 517), (333, 517), (512, 512), (2, 4000)]


def _processor(**kw):
    from transformers import Idefics3ImageProcessorPil

    return Idefics3ImageProcessorPil(do_image_splitting=False, **kw)


def _settings(proc) -> dict:
    from edgecap_export.idefics3_settings import idefics3_settings

    return idefics3_settings(proc)


def _reference(proc, images) -> np.ndarray:
    px = proc(images=[[im] for im in images], return_tensors="np")["pixel_values"]
    assert px.shape[1] == 1  # one tile per image
    return px[:, 0]


def _image(shape, seed=0, channels=3) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).integers(0, 256, shape + (channels,), dtype=np.uint8)


@pytest.mark.parametrize("kw", [SMOLVLM, SMALL], ids=["smolvlm", "small"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{h}x{w}" for h, w in SHAPES])
def test_pixel_values_match_idefics3_image_processor(shape, kw):
    proc = _processor(**kw)
    img = _image(shape)
    ref = _reference(proc, [img])
    ours = preprocess_idefics3([img], _settings(proc))
    tile = kw["max_image_size"]["longest_edge"]
    assert ours.dtype == np.float32 and ours.shape == (1, 3, tile, tile) == ref.shape
    # Stated bound: within 1e-4 of the processor; with Pillow installed the resizes are Pillow's own, so 0.0.
    assert float(np.max(np.abs(ours - ref))) <= 1e-4


def test_batch_of_mixed_sizes_and_input_forms(tmp_path):
    proc = _processor(**SMALL)
    imgs = [_image(s, seed=i) for i, s in enumerate([(480, 640), (61, 33), (200, 200)])]
    path = tmp_path / "x.png"
    PIL.fromarray(imgs[2]).save(path)
    ref = _reference(proc, imgs)
    for batch in ([imgs[0], imgs[1], imgs[2]], [PIL.fromarray(imgs[0]), imgs[1], str(path)],
                  [imgs[0], PIL.fromarray(imgs[1]), path]):
        assert np.array_equal(preprocess_idefics3(batch, _settings(proc)), ref)


def test_grey_and_transparent_images_are_converted_as_the_processor_does():
    proc = _processor(**SMALL)
    rgba = _image((40, 56), channels=4)
    rgba[:20, :, 3] = 255  # half opaque, half with random transparency: composited onto white
    grey = PIL.fromarray(_image((40, 56))[:, :, 0], mode="L")
    inputs = [rgba, PIL.fromarray(rgba, mode="RGBA"), grey]
    ref = _reference(proc, inputs)
    ours = preprocess_idefics3(inputs, _settings(proc))
    assert float(np.max(np.abs(ours - ref))) <= 1e-4
    dropped = preprocess_idefics3([np.ascontiguousarray(rgba[:, :, :3])], _settings(proc))
    assert not np.array_equal(ours[0], dropped[0])  # the alpha channel was used, not dropped


def test_smolvlm_image_processor_is_the_same_recipe():
    # SmolVLMForConditionalGeneration checkpoints may name SmolVLMImageProcessor: same settings, same pixels.
    from transformers import SmolVLMImageProcessorPil

    proc = SmolVLMImageProcessorPil(do_image_splitting=False, **SMALL)
    img = _image((97, 131))
    assert _settings(proc) == _settings(_processor(**SMALL))
    assert float(np.max(np.abs(preprocess_idefics3([img], _settings(proc)) - _reference(proc, [img])))) <= 1e-4


def test_without_first_resize_the_image_still_becomes_one_tile():
    proc = _processor(**SMALL, do_resize=False)
    img = _image((97, 131))
    assert float(np.max(np.abs(preprocess_idefics3([img], _settings(proc)) - _reference(proc, [img])))) <= 1e-4


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (7, 5), (1, 3000), (3000, 1), (1001, 999)])
def test_first_resize_size_is_the_processors(hw):
    from transformers.models.idefics3.image_processing_pil_idefics3 import get_resize_output_image_size

    for edge in (2048, 1536, 97, 5000):  # 5000: above the processor's 4096 bound
        assert longest_edge_size(*hw, edge) == get_resize_output_image_size(np.zeros((3,) + hw), edge)


def test_settings_survive_save_and_load(tmp_path):
    from transformers import AutoImageProcessor

    _processor(**SMALL).save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert _settings(loaded) == _settings(_processor(**SMALL))
    assert _settings(loaded)["size"] == {"longest_edge": 96} and _settings(loaded)["resample"] == 3


def test_image_splitting_is_rejected_on_both_sides():
    from edgecap.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="do_image_splitting") as err:
        _settings(_processor(**SMOLVLM).__class__(**SMOLVLM))  # the processor's default: splitting on
    assert "\n" not in str(err.value)
    settings = {**_settings(_processor(**SMALL)), "do_image_splitting": True}
    with pytest.raises(ManifestError, match="one tile"):
        preprocess_idefics3([_image((20, 20))], settings)


def test_bad_inputs_are_one_clear_error():
    settings = _settings(_processor(**SMALL))
    with pytest.raises(InputError, match="at least one image"):
        preprocess_idefics3([], settings)
    with pytest.raises(InputError, match="uint8"):
        preprocess_idefics3([np.zeros((20, 20, 3), np.float32)], settings)
    with pytest.raises(InputError, match="not found"):
        preprocess_idefics3(["/nonexistent/frame.png"], settings)
    broken = {k: v for k, v in settings.items() if k != "max_image_size"}
    with pytest.raises(ManifestError, match="max_image_size") as err:
        preprocess_idefics3([_image((20, 20))], broken)
    assert "\n" not in str(err.value)
