"""SmolVLM (Idefics3ForConditionalGeneration / SmolVLMForConditionalGeneration): export as a prefill graph and a
grouped-query step graph, the chat prompt rendered without jinja, and decoder-only generation token-identical to
transformers' generate (greedy and beam, batch 1 and padded batches of prompts of different lengths)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgecap import Captioner  # noqa: E402
from edgecap.decoder_only import answer_ids, left_pad  # noqa: E402
from edgecap.errors import InputError  # noqa: E402
from conftest import SMOL_ARCHS  # noqa: E402

QUESTIONS = ["Describe what happens in this frame.", "Is the gate open?",
             "How many people are at the door, and what are they wearing today?"]
ODD_TEXTS = ["  leading spaces", "trailing spaces  ", "two\nlines\n", "Ünïcödé café — 日本の門?", "", "<|im_start|>"]


def _images(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:72]
    out = []
    for i in range(n):  # gradients and blocks of different aspect ratios
        img = np.stack([xx * (3 + i) % 256, yy * (5 + 2 * i) % 256, (xx // (4 + i) + yy // 8) % 2 * 220], -1)
        img = img + rng.integers(0, 30, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8)[: 30 + 9 * i, : 60 - 8 * i])
    return out


@pytest.fixture(scope="module")
def smol_checkpoint(checkpoint_factory):
    return lambda name="smol": checkpoint_factory(name)


@pytest.fixture(scope="module")
def smol_export(exported_factory):
    return lambda name="smol", attention="contrib": exported_factory(name, attention)


def _hf(path):
    from transformers import AutoConfig, Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration

    cls = {"idefics3": Idefics3ForConditionalGeneration,
           "smolvlm": SmolVLMForConditionalGeneration}[AutoConfig.from_pretrained(path).model_type]
    return cls.from_pretrained(path).eval()


def _hf_answers(path, images: list[np.ndarray], prompts: list[str], eos, **kw) -> list[list[int]]:
    """transformers' generate on the processor's left-padded batch: the new ids per row, cut after EOS."""
    from edgecap_export.families.smolvlm import chat_text, processor_for

    proc = processor_for(str(path))
    inputs = proc(text=[chat_text(proc, p) for p in prompts], images=[[i] for i in images], padding=True,
                  return_tensors="pt")
    with torch.no_grad():
        out = _hf(path).generate(**inputs, **kw).numpy()
    return [answer_ids(row, inputs["input_ids"].shape[1], eos) for row in out]


def _pixels(path, images: list[np.ndarray]) -> np.ndarray:
    from edgecap_export.validate import reference_pixels

    return reference_pixels(str(path), images, one_tile=True)


def _slow_unless(fast: bool, *values, **param):  # noqa: ANN002, ANN003, ANN202
    return pytest.param(*values, marks=() if fast else pytest.mark.slow, **param)


GRID = [_slow_unless((name, attention, beams, batch) == ("smol", "contrib", 1, 1), name, attention, beams, batch,
                     id=f"{name}-{attention}-beams{beams}-b{batch}")
        for name in SMOL_ARCHS for attention in ("contrib", "standard") for beams in (1, 3) for batch in (1, 3)]


@pytest.mark.parametrize("name,attention,beams,batch", GRID)
def test_generate_returns_transformers_new_tokens(name, attention, beams, batch, smol_checkpoint, smol_export):
    path = smol_checkpoint(name)
    cap = Captioner(smol_export(name, attention))
    images = _images(batch, batch)
    px = _pixels(path, images)
    prompts = QUESTIONS[:batch] if batch == 3 else QUESTIONS[1:2]
    ours = cap.generate(px, prompts, num_beams=beams)
    assert ours == _hf_answers(path, images, prompts, cap.defaults.eos_token_id, num_beams=beams)


def test_export_records_a_decoder_only_manifest_and_passes_validation(smol_checkpoint, smol_export):
    out = smol_export()
    m = json.loads((out / "manifest.json").read_text())
    config = json.loads((smol_checkpoint("smol") / "config.json").read_text())
    text = config["text_config"]
    arch = m["architecture"]
    assert m["family"] == "smolvlm" and arch["decoder_only"] is True
    assert (arch["num_heads"], arch["num_kv_heads"], arch["num_layers"]) == (
        text["num_attention_heads"], text["num_key_value_heads"], text["num_hidden_layers"])
    assert m["validation"]["passed"], m["validation"]["mismatches"]
    assert set(m["validation"]["generate"]) == {"greedy.batch1", "beam.batch1", "greedy.batch3", "beam.batch3"}
    assert m["prompt"]["kind"] == "chat" and m["prompt"]["accepts_questions"] is True
    assert m["image"]["processor_type"] == "Idefics3ImageProcessor" and m["image"]["do_image_splitting"] is False
    present = {t["name"]: t["shape"] for t in m["graphs"]["fp32"]["encoder"]["outputs"]}
    assert present["present_k.0"][1] == text["num_key_value_heads"]  # the cache holds the KV heads only
    inputs = {t["name"] for t in m["graphs"]["fp32"]["decoder"]["inputs"]}
    assert {"input_ids", "attention_mask", "position_ids", "past_k.0", "past_v.0"} <= inputs
    assert not any(n.startswith("cross_") for n in inputs)


def test_prompt_rendering_equals_the_processors_input_ids(smol_checkpoint, smol_export):
    from edgecap_export.families.smolvlm import chat_text, processor_for

    proc = processor_for(str(smol_checkpoint("smol")))
    cap = Captioner(smol_export())
    for text in QUESTIONS + ODD_TEXTS:
        ref = proc(text=[chat_text(proc, text)], images=[[np.zeros((8, 8, 3), np.uint8)]])["input_ids"][0]
        assert cap.prompts.prefix(text) == list(ref), text
    assert cap.prompts.prefix(None) == cap.prompts.prefix(cap.manifest.data["prompt"]["default_prompt"])


def test_answers_end_early_and_depend_on_image_and_prompt(smol_checkpoint, smol_export):
    # Parity would be weak if every answer ran to the limit, or all images or prompts gave one answer.
    cap = Captioner(smol_export())
    px = _pixels(smol_checkpoint("smol"), _images(5, 6))
    limit = cap.defaults.new_tokens(1)
    for prompt in QUESTIONS:
        out = cap.generate(px, prompt)
        assert len({tuple(ids) for ids in out}) >= 2, prompt
        assert all(ids[-1] in cap.defaults.eos_token_id for ids in out if len(ids) < limit)
    lengths = {len(ids) for q in QUESTIONS for ids in cap.generate(px, q)}
    assert limit in lengths and min(lengths) < limit
    assert len({tuple(cap.generate(px[:1], q)[0]) for q in QUESTIONS}) >= 2


def test_caption_of_a_question_list_equals_each_question_alone(smol_export):
    cap = Captioner(smol_export())
    image = _images(3, 1)[0]
    together = cap.caption(image, prompt=QUESTIONS)
    assert [c.token_ids for c in cap.caption([image] * 3, prompt=QUESTIONS)] == [c.token_ids for c in together]
    for question, caption in zip(QUESTIONS, together):
        alone = cap.caption(image, prompt=question)
        assert (caption.token_ids, caption.text, caption.prompt) == (alone.token_ids, alone.text, question)
    assert cap.caption(image).token_ids == cap.caption(image, prompt=cap.prompts.spec["default_prompt"]).token_ids


def test_uncached_reference_path_gives_the_same_ids(smol_checkpoint, smol_export):
    cap = Captioner(smol_export())
    px = _pixels(smol_checkpoint("smol"), _images(2, 3))
    for beams in (1, 3):
        assert cap.generate(px, QUESTIONS, num_beams=beams, use_cache=False) == \
            cap.generate(px, QUESTIONS, num_beams=beams)


def test_unsupported_prompts_are_one_clear_line(smol_export):
    cap = Captioner(smol_export())
    image = _images(1, 1)[0]
    for prompt, needle in (("what is <image> here?", "image tokens"), ("x " * 600, "positions")):
        with pytest.raises(InputError) as err:
            cap.caption(image, prompt=prompt)
        assert needle in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="one prompt per image"):
        cap.caption([image, image], prompt=QUESTIONS)
    with pytest.raises(InputError, match="at least one prompt"):
        cap.caption(image, prompt=[])
    assert cap.accepts_questions


def test_left_padding_follows_transformers_generate():
    ids, mask, positions = left_pad([[5, 6, 7], [8]], pad_id=2)
    assert ids.tolist() == [[5, 6, 7], [2, 2, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert answer_ids(np.array([2, 2, 8, 9, 4, 3, 4]), 3, (4,)) == [9, 4]


@pytest.mark.slow
def test_int8_quantize_holds_quantized_matmuls_and_generates(smol_checkpoint, smol_export, tmp_path):
    import shutil

    import onnx

    from edgecap_export.quantize import quantize_dir

    out = shutil.copytree(smol_export(), tmp_path / "smol")
    report = quantize_dir(out, calib_frames=4, eval_frames=8, accept_quality_drop=True, progress=False)
    assert report["frames"] == 8
    for part in ("encoder", "decoder"):
        ops = {n.op_type for n in onnx.load(str(out / f"{part}.int8.onnx")).graph.node}
        assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}, (part, sorted(ops))
    # the SigLIP tower's tanh GELU is one FastGelu node in INT8; the validated FP32 graph keeps the traced nodes
    fp32_ops = [n.op_type for n in onnx.load(str(out / "encoder.onnx")).graph.node]
    int8_ops = [n.op_type for n in onnx.load(str(out / "encoder.int8.onnx")).graph.node]
    assert "FastGelu" not in fp32_ops and "Tanh" in fp32_ops
    assert int8_ops.count("FastGelu") == fp32_ops.count("Tanh") and "Tanh" not in int8_ops
    recipe = json.loads((out / "manifest.json").read_text())["graphs"]["int8"]["recipe"]
    assert recipe["tanh_gelu_fused"] == {"encoder": fp32_ops.count("Tanh"), "decoder": 0}
    int8 = Captioner(out, precision="int8")
    px = _pixels(smol_checkpoint("smol"), _images(4, 3))
    answers = int8.generate(px, QUESTIONS, num_beams=3)
    assert len(answers) == 3 and all(answers)


def test_tensorrt_target_export_passes_the_lint(smol_checkpoint, tmp_path):
    # standard ops only, no Clip/If in either graph (the lint raises ExportError otherwise)
    from edgecap_export import export_model

    out = export_model(str(smol_checkpoint("smol")), tmp_path / "trt", progress=False, target="tensorrt",
                       validate=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["target"]["check_trt"] == "passed" and m["architecture"]["attention"] == "standard"


def test_timings_split_prefill_and_step_calls(smol_checkpoint, smol_export):
    cap = Captioner(smol_export())
    timings: dict = {}
    ids = cap.generate(_pixels(smol_checkpoint("smol"), _images(6, 1)), QUESTIONS[0], _timings=timings,
                       max_new_tokens=5, min_new_tokens=5)
    assert len(ids[0]) == 5 and timings["decoder_steps"] == 4  # the first token is the prefill's
    assert timings["encoder"] > 0 and timings["decoder_rest"] > 0 and "decoder_first" not in timings


def test_encode_images_then_caption_encoded_equals_caption(smol_export):
    # the runtime's path when it keeps embeddings or gates on them: the prefill is the encoding, per prompt
    cap = Captioner(smol_export())
    images = _images(8, 3)
    enc = cap.encode_images(images, QUESTIONS[1])
    assert enc.batch == 3 and enc.pooled.shape[0] == 3 and not enc.cross_k
    kept = enc.select([0, 2])
    got = cap.caption_encoded(kept, QUESTIONS[1], num_beams=3)
    assert [c.token_ids for c in got] == [c.token_ids for c in cap.caption([images[0], images[2]],
                                                                             prompt=QUESTIONS[1], num_beams=3)]
    with pytest.raises(InputError, match="encoded for the prompt"):
        cap.caption_encoded(enc, QUESTIONS[0])


@pytest.mark.slow
def test_a_processor_that_splits_images_exports_its_one_tile_path(tmp_path):
    """The published SmolVLM processors split large images into tiles; the export takes the one-tile path
    (``do_image_splitting=False``) and stays token-identical to transformers on it."""
    from transformers import AutoProcessor

    from edgecap_export import export_model
    from edgecap_export.families.smolvlm import chat_text
    from tiny_models import build_smolvlm

    path = build_smolvlm(tmp_path / "ckpt", image_splitting=True, **SMOL_ARCHS["smol"])
    proc = AutoProcessor.from_pretrained(path)
    images = _images(2, 2)
    text = [chat_text(proc, q) for q in QUESTIONS[:2]]
    split = proc(text=text, images=[[i] for i in images], padding=True, return_tensors="pt")
    assert split["pixel_values"].shape[1] > 1  # the checkpoint's processor does split these images
    cap = Captioner(export_model(str(path), tmp_path / "out", progress=False))
    assert cap.manifest.data["image"]["do_image_splitting"] is False
    proc.tokenizer.padding_side = "left"
    one = proc(text=text, images=[[i] for i in images], padding=True, do_image_splitting=False, return_tensors="pt")
    np.testing.assert_allclose(cap.preprocess(images), one["pixel_values"][:, 0].numpy(), atol=1e-4, rtol=0)
    with torch.no_grad():
        ref = _hf(path).generate(**one).numpy()
    expected = [answer_ids(row, one["input_ids"].shape[1], cap.defaults.eos_token_id) for row in ref]
    assert cap.generate(cap.preprocess(images), QUESTIONS[:2]) == expected
