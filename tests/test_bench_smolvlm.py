"""SmolVLM in the benchmarks: the random checkpoint's token ids and processor, the transformers-eager side of
`edgecap bench` and the weight-GEMM floor, on a tiny model built the way RANDOM_ARCHS["smolvlm-256m"] builds the
real-size one (no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

TEXT = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 8}
VISION = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
          "image_size": 64, "patch_size": 8}  # 64 patches, 4 image tokens after the pixel shuffle


@pytest.fixture(scope="module")
def tiny_smolvlm(tmp_path_factory) -> Path:
    from edgecap_export.random_checkpoints import build_smolvlm_random

    return build_smolvlm_random(tmp_path_factory.mktemp("smolvlm") / "hf", text=TEXT, vision=VISION)


def test_random_checkpoint_has_smolvlms_token_ids_and_one_tile(tiny_smolvlm):
    from transformers import AutoProcessor

    from edgecap_export.bench import SMOLVLM_QUESTION
    from edgecap_export.random_checkpoints import RANDOM_ARCHS, build_smolvlm_random

    assert RANDOM_ARCHS["smolvlm-256m"] is build_smolvlm_random
    cfg = json.loads((tiny_smolvlm / "config.json").read_text())
    assert cfg["model_type"] == "smolvlm" and cfg["image_token_id"] == 49190 and cfg["scale_factor"] == 4
    assert cfg["text_config"]["vocab_size"] == 49280
    proc = AutoProcessor.from_pretrained(tiny_smolvlm)
    tok = proc.tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<global-img>",
                                                   "<fake_token_around_image>", "<image>", "<end_of_utterance>")] \
        == [1, 2, 49152, 49189, 49190, 49279]
    assert len(tok) == 49280 and not proc.image_processor.do_image_splitting
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                  {"type": "text", "text": SMOLVLM_QUESTION}]}],
                                    add_generation_prompt=True)
    assert text == f"<|im_start|>User:<image>{SMOLVLM_QUESTION}<end_of_utterance>\nAssistant:"
    ids = proc(text=[text], images=[[np.zeros((40, 60, 3), np.uint8)]])["input_ids"][0]
    assert list(ids[:4]) == [1, tok.convert_tokens_to_ids("User"), tok.convert_tokens_to_ids(":"), 49189]
    assert list(ids).count(49190) == 4  # (64 / 8)^2 patches / 4^2
    assert len(ids) < 4 + 25  # the question's words are tokens, as with the real tokenizer, not bytes


def test_recorded_settings_reproduce_the_checkpoints_pixel_values(tiny_smolvlm):
    from transformers import AutoProcessor

    from edgecap.idefics3_image import preprocess_idefics3
    from edgecap_export.idefics3_settings import idefics3_settings

    proc = AutoProcessor.from_pretrained(tiny_smolvlm)
    imgs = [np.random.default_rng(i).integers(0, 256, s + (3,), dtype=np.uint8)
            for i, s in enumerate([(480, 640), (91, 37)])]
    ref = proc.image_processor(images=[[im] for im in imgs], return_tensors="np")["pixel_values"][:, 0]
    assert float(np.max(np.abs(preprocess_idefics3(imgs, idefics3_settings(proc)) - ref))) <= 1e-4


def test_eager_runner_generates_the_forced_tokens_for_the_question(tiny_smolvlm):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from edgecap_export.bench import smolvlm_eager_runner

    model = AutoModelForImageTextToText.from_pretrained(tiny_smolvlm, attn_implementation="eager").eval()
    proc = AutoProcessor.from_pretrained(tiny_smolvlm)
    calls = []

    class Recording:
        def generate(self, **kw):
            out = model.generate(**kw)
            calls.append((kw, out))
            return out

    imgs = [np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8) for i in range(2)]
    kw = dict(min_new_tokens=3, max_new_tokens=3, num_beams=1)
    timings = smolvlm_eager_runner(Recording(), proc, imgs, kw, question="Is the gate open?")()
    (inputs, out), = calls
    assert set(timings) == {"preprocess", "prefill", "decode_per_token", "total"}
    assert 0 < timings["prefill"] < timings["total"] and timings["decode_per_token"] > 0
    ids = inputs["input_ids"]
    assert ids.shape[0] == 2 and int((ids == 49190).sum()) == 2 * 4
    assert out.shape == (2, ids.shape[1] + 3)  # exactly the forced tokens, greedy
    with torch.no_grad():
        alone = model.generate(**proc(text=[proc.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is the gate open?"}]}],
            add_generation_prompt=True)], images=[[imgs[1]]], return_tensors="pt"), do_sample=False, **kw)
    assert torch.equal(out[1, -3:], alone[0, -3:])


def test_floor_shapes_and_report_for_smolvlm(tiny_smolvlm, floor, tmp_path):
    cfg = json.loads((tiny_smolvlm / "config.json").read_text())
    stages = floor.smolvlm_gemm_shapes(cfg, prompt_tokens=30)
    assert stages["vision"][1] == 64 and stages["connector"] == ([(32 * 16, 32)], 4)
    assert stages["prefill"][1] == 30 and stages["prefill"][0][0] == (32, 4 * 8 + 2 * 2 * 8)  # 4 q + 2 kv heads
    assert stages["decoder_step"][0] == stages["prefill"][0] + [(32, 49280)] and stages["lm_head"][1] == 1
    out = tmp_path / "floor.json"
    assert floor.main(["--hf", str(tiny_smolvlm), "--runs", "2", "--rounds", "1", "--eager-runs", "1",
                       "--tokens", "3", "--eager-batch", "1", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["prompt_tokens"] == report["stages"]["prefill"]["rows"] > 4
    assert report["stages"]["decoder_step"]["per_caption"] == 2 and set(report["eager"]["batches"]) == {"1", "2"}
    for name, r in report["floors"].items():
        assert r["floor_per_caption_ms"] == pytest.approx(
            r["vision_gemms_ms"] + r["connector_gemms_ms"] + r["prefill_gemms_ms"] + r["lm_head_gemvs_ms"]
            + 2 * r["decoder_step_gemvs_ms"])
        assert r["target_speedup"] == (1.3 if name == "fp32" else 3.0)  # issue 13's targets
        assert r["max_speedup_vs_eager"] == pytest.approx(report["eager"]["median_ms"] / r["floor_per_caption_ms"])
