"""The demo model's transformers checkpoint rebuilt from its shipped FP32 graphs (edgecap_export.demo_checkpoint):
every parameter gets a graph weight, transformers reproduces the shipped graphs, and a normal export of the rebuild
gives the shipped graphs' outputs and ids."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from edgecap import Captioner, synth  # noqa: E402
from edgecap.errors import ExportError  # noqa: E402
from edgecap.models import demo_model_dir  # noqa: E402


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    from edgecap_export.demo_checkpoint import rebuild_demo_checkpoint

    return rebuild_demo_checkpoint(tmp_path_factory.mktemp("demo-hf"))


def _frames(n: int) -> list[np.ndarray]:
    return [synth.render_scene(synth.HELD_OUT_SEED_START + i)[0] for i in range(n)]


def test_every_parameter_comes_from_the_graphs():
    from edgecap_export.demo_checkpoint import demo_state_dict
    from edgecap_export.finetune import PRESETS

    state = demo_state_dict(demo_model_dir(), PRESETS["demo"]["enc_hidden"])
    # 4 ViT layers with un-fused Q/K/V, GPT-2's 3 layers, the head
    assert {f"encoder.layers.{i}.attention.{p}_proj.weight" for i in range(4) for p in "qkvo"} <= set(state)
    assert state["encoder.layers.0.attention.q_proj.weight"].shape == (192, 192)
    assert not np.array_equal(state["encoder.layers.0.attention.q_proj.weight"],
                              state["encoder.layers.0.attention.k_proj.weight"])
    assert state["decoder.transformer.h.2.crossattention.c_attn.weight"].shape == (192, 384)
    assert state["decoder.lm_head.weight"].shape == (51, 192)


@pytest.mark.slow
def test_transformers_on_the_rebuild_generates_what_the_shipped_graphs_do(rebuilt):
    """The checkpoint itself (no export): transformers' greedy ids equal the shipped demo's on held-out scenes."""
    from transformers import VisionEncoderDecoderModel

    model = VisionEncoderDecoderModel.from_pretrained(rebuilt).eval()
    cap = Captioner("demo")
    px = cap.preprocess(_frames(6))
    with torch.no_grad():
        out = model.generate(torch.from_numpy(px), max_new_tokens=cap.defaults.max_new_tokens, num_beams=1)
    eos = cap.defaults.eos_token_id[0]
    hf = [row.tolist()[1:] for row in out]
    hf = [row[: row.index(eos) + 1] if eos in row else row for row in hf]
    assert hf == cap.generate(px)


def test_a_graph_the_tool_does_not_know_is_refused(tmp_path):
    import shutil

    from edgecap_export.demo_checkpoint import rebuild_demo_checkpoint

    demo = tmp_path / "demo"
    shutil.copytree(demo_model_dir(), demo)
    shutil.copyfile(demo / "decoder.onnx", demo / "encoder.onnx")  # the decoder's weights where the encoder's go
    with pytest.raises(ExportError):
        rebuild_demo_checkpoint(tmp_path / "out", demo_dir=demo)


@pytest.mark.slow
def test_export_of_the_rebuild_equals_the_shipped_graphs(rebuilt, tmp_path):
    """The proof: `edgecap export` of the rebuild (validated against transformers) gives the shipped graphs' encoder
    cross K/V and pooled, decoder logits and present K/V within 1e-5, and the same ids on held-out scenes."""
    from edgecap_export import export_model
    from edgecap_export.demo_checkpoint import compare_exports

    out = export_model(str(rebuilt), tmp_path / "export", progress=False, name="demo")
    report = compare_exports(demo_model_dir(), out, frames=12)
    assert report["passed"], report
    assert report["ids_identical"] == 12 and set(report["max_abs_diff"]) >= {"encoder.cross_k.0", "decoder.logits"}
