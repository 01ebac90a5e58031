"""Preprocessing matches the checkpoint's image processor; image inputs are checked."""

from __future__ import annotations

import numpy as np
import pytest

from edgecap.errors import InputError
from edgecap.imaging import ImageConfig, load_image, preprocess, resize, resize_numpy

PIL = pytest.importorskip("PIL.Image")


def _cfg(h=224, w=224, resample=2) -> ImageConfig:
    return ImageConfig(height=h, width=w, do_resize=True, resample=resample, do_rescale=True,
                       rescale_factor=1 / 255, do_normalize=True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.mark.parametrize("resample", [2, 3, 1])  # bilinear (ViT), bicubic, lanczos
@pytest.mark.parametrize("shape", [(480, 640), (97, 131), (224, 224), (30, 500)])
def test_pixel_values_match_vit_image_processor(shape, resample):
    pytest.importorskip("transformers")
    from transformers import ViTImageProcessorPil

    img = np.random.default_rng(sum(shape)).integers(0, 256, shape + (3,), dtype=np.uint8)
    proc = ViTImageProcessorPil(size={"height": 96, "width": 80}, resample=resample,
                                image_mean=[0.48, 0.45, 0.40], image_std=[0.26, 0.26, 0.27])
    ref = proc(images=[img], return_tensors="np")["pixel_values"]
    cfg = ImageConfig(height=96, width=80, do_resize=True, resample=resample, do_rescale=True,
                      rescale_factor=1 / 255, do_normalize=True, mean=(0.48, 0.45, 0.40), std=(0.26, 0.26, 0.27))
    ours = preprocess([img], cfg)
    # Stated bound: identical pixel values (max abs difference 0.0) when Pillow is installed.
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert float(np.max(np.abs(ours - ref))) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_numpy_resampler_stays_within_one_level_of_pillow(seed):
    # Without Pillow the runtime resamples in numpy: exact per axis, at most 1 level off when both axes change
    # (Pillow 13 may run the vertical pass first), on a small share of pixels.
    rng = np.random.default_rng(seed)
    h, w, oh, ow = (int(v) for v in rng.integers(8, 300, 4))
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = np.asarray(PIL.fromarray(img).resize((ow, oh), resample=2)).astype(int)
    diff = np.abs(resize_numpy(img, oh, ow, 2).astype(int) - ref)
    assert diff.max() <= 1
    one_axis = np.asarray(PIL.fromarray(img).resize((ow, h), resample=2)).astype(int)
    assert np.array_equal(resize_numpy(img, h, ow, 2), one_axis)


def test_inputs_accepted_in_every_documented_form(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    PIL.fromarray(rgb).save(path)
    forms = [rgb, PIL.fromarray(rgb), str(path), path, np.dstack([rgb, np.full((50, 70), 255, np.uint8)])]
    outs = [preprocess([f], _cfg(32, 32)) for f in forms]
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])
    grey = preprocess([rgb[:, :, 0]], _cfg(32, 32))
    assert np.array_equal(grey[0, 0], grey[0, 1])


@pytest.mark.parametrize("bad,fragment", [
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((10, 10, 2), np.uint8), "shape"),
    (np.zeros((0, 10, 3), np.uint8), "non-empty"),
    ([[1, 2, 3]], "got list"),
    (42, "got int"),
    ("/nonexistent/frame.jpg", "not found"),
])
def test_bad_images_raise_input_error(bad, fragment):
    with pytest.raises(InputError, match=fragment):
        load_image(bad)


def test_corrupt_image_file_raises_input_error(tmp_path):
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(InputError, match="cannot decode"):
        load_image(p)


def test_undecodable_image_error_says_why_not_only_the_type(tmp_path, monkeypatch):
    # Regression (issue 11, bug 9): the error named only the exception type ("OSError"), losing the decoder's reason.
    from edgecap import imaging

    class BrokenPil:
        @staticmethod
        def open(path):
            raise OSError("image file is truncated\n(41 bytes not processed)")

    p = tmp_path / "cut.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setattr(imaging, "_PIL", BrokenPil)
    with pytest.raises(InputError) as info:
        load_image(p)
    message = str(info.value)
    assert "OSError: image file is truncated (41 bytes not processed)" in message and "\n" not in message
    monkeypatch.setattr(imaging, "_PIL", None)  # the PyAV path reports its reason too
    with pytest.raises(InputError, match=r"cannot decode image .*Error: \S+.*; expected"):
        load_image(p)


def test_empty_batch_rejected():
    with pytest.raises(InputError, match="empty batch"):
        preprocess([], _cfg())


def test_resize_identity_returns_copy():
    img = np.zeros((4, 4, 3), np.uint8)
    out = resize(img, 4, 4)
    assert out is not img and np.array_equal(out, img)


def test_a_batch_is_prepared_in_parallel_and_in_order(monkeypatch):
    # Batches are prepared on a thread per core; each row must still be its own image's pixel values, and a bad
    # image anywhere in the batch must raise the same one-line InputError as when it comes alone.
    from edgecap import imaging

    monkeypatch.setattr(imaging.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    threads = set()
    real_resize = imaging.resize

    def recording_resize(*args, **kwargs):
        import threading

        threads.add(threading.current_thread().name)
        return real_resize(*args, **kwargs)

    monkeypatch.setattr(imaging, "resize", recording_resize)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (40 + 7 * i, 60 - 3 * i, 3), dtype=np.uint8) for i in range(6)]
    batch = preprocess(images, _cfg(32, 32))
    alone = np.concatenate([preprocess([im], _cfg(32, 32)) for im in images])
    assert np.array_equal(batch, alone)
    assert any(name.startswith("edgecap-preprocess") for name in threads)
    with pytest.raises(InputError, match="uint8"):
        preprocess(images[:3] + [np.zeros((8, 8, 3), np.float32)] + images[3:], _cfg(32, 32))
