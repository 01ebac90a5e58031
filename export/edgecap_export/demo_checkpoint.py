"""Rebuild the bundled demo model's transformers checkpoint from its shipped FP32 ONNX graphs.

The demo's checkpoint (``runs/demo/hf``) is not in the repository and retraining takes 30+ minutes; its FP32
graphs hold every weight. This maps the graphs' initializers back onto a ``VisionEncoderDecoderModel`` built from the
``demo`` preset (ViT 4x192 + GPT-2 3x192, see docs/DEMO_MODEL.md) and saves it with ``save_pretrained``, with the
ViT image processor (Pil, the manifest's settings) and the tokenizer, so that tools which need a checkpoint
(``edgecap export --target tensorrt --fp16``) run on the demo model.

What the export changed and the rebuild undoes:

* the ViT's Q, K and V projections were fused into one MatMul (weight [D, 3D], transposed, bias [3D]) and written
  as unnamed initializers, in layer order: (QKV weight, QKV bias, o_proj, fc1, fc2) per layer;
* Linear weights appear transposed ([in, out]); GPT-2's Conv1D weights are [in, out] already;
* the decoder's cross-attention K/V projection (``c_attn``) lives in the encoder graph (``step.t.h.*``).

:func:`compare_exports` proves a rebuild: a normal export of it must give the shipped graphs' outputs (encoder
cross K/V and pooled, decoder logits and present K/V) within ``atol`` and the same generated ids.

    python -m edgecap_export.demo_checkpoint OUT [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgecap._log import logger
from edgecap.errors import ExportError

_UNUSED = ("encoder.pooler.",)
_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def _initializers(path: Path) -> tuple[dict[str, np.ndarray], list[tuple[np.ndarray, Any]]]:
    """(named initializers, [(unnamed initializer, the first node reading it)] in node order)."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    unnamed, seen = [], set()
    for node in g.node:
        for name in node.input:
            if name.startswith("onnx::") and name in inits and name not in seen:
                seen.add(name)
                unnamed.append((inits[name], node))
    return {k: v for k, v in inits.items() if not k.startswith("onnx::")}, unnamed


def demo_state_dict(demo_dir: Path, width: int) -> dict[str, np.ndarray]:
    """The checkpoint's parameters (VisionEncoderDecoderModel names) read from the demo's FP32 graphs.

    Args:
        demo_dir: the bundled model directory (encoder.onnx, decoder.onnx).
        width: the ViT hidden size (192).

    Returns:
        name -> array, in transformers' [out, in] layout for Linear weights.

    Raises:
        ExportError: an unnamed initializer this layout does not explain.
    """
    enc_named, enc_unnamed = _initializers(demo_dir / "encoder.onnx")
    dec_named, dec_unnamed = _initializers(demo_dir / "decoder.onnx")
    state: dict[str, np.ndarray] = {}
    for name, value in enc_named.items():
        state[name.replace("step.t.", "decoder.transformer.", 1) if name.startswith("step.t.") else name] = value
    for name, value in dec_named.items():
        state[name.replace("t.", "decoder.transformer.", 1)] = value
    layer = -1
    for value, node in enc_unnamed:
        if value.shape == (width, 3 * width) and node.op_type == "MatMul":  # a new layer's fused QKV weight
            layer += 1
            for part, w in zip(("q_proj", "k_proj", "v_proj"), np.split(value, 3, axis=1)):
                state[f"encoder.layers.{layer}.attention.{part}.weight"] = w.T
        elif value.shape == (3 * width,) and node.op_type == "Add":
            for part, b in zip(("q_proj", "k_proj", "v_proj"), np.split(value, 3)):
                state[f"encoder.layers.{layer}.attention.{part}.bias"] = b
        elif "o_proj" in node.name:
            state[f"encoder.layers.{layer}.attention.o_proj.weight"] = value.T
        elif "fc1" in node.name or "fc2" in node.name:
            state[f"encoder.layers.{layer}.mlp.{'fc1' if 'fc1' in node.name else 'fc2'}.weight"] = value.T
        else:
            raise ExportError(f"unexpected unnamed initializer {list(value.shape)} read by {node.name}; the demo "
                              "graphs are not in the layout this tool knows")
    if len(dec_unnamed) != 1 or "lm_head" not in dec_unnamed[0][1].name:
        raise ExportError(f"expected the decoder's one unnamed initializer to be the LM head, found "
                          f"{[n.name for _, n in dec_unnamed]}")
    state["decoder.lm_head.weight"] = dec_unnamed[0][0].T
    return state


def rebuild_demo_checkpoint(out: str | Path, *, demo_dir: str | Path | None = None) -> Path:
    """Write a transformers checkpoint of the demo model (model, ViT image processor, tokenizer) to ``out``.

    Args:
        out: the checkpoint directory (created).
        demo_dir: the exported demo directory (default: the bundled one).

    Returns:
        ``out``.

    Raises:
        ExportError: a graph weight has no place in the model, or a model parameter found no weight.
    """
    import torch
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast, ViTImageProcessorPil

    from edgecap.imaging import BILINEAR
    from edgecap.models import demo_model_dir

    from .finetune import PRESETS, build_from_preset

    demo = Path(demo_dir) if demo_dir else demo_model_dir()
    manifest = json.loads((demo / "manifest.json").read_text(encoding="utf-8"))
    preset = PRESETS["demo"]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(demo / manifest["tokenizer"]["file"])),
                                  **_SPECIALS)
    special = manifest["special_tokens"]
    if (tok.bos_token_id, tok.pad_token_id, [tok.eos_token_id]) != (special["bos_token_id"], special["pad_token_id"],
                                                                      special["eos_token_id"]):
        raise ExportError(f"the demo tokenizer's special ids differ from the manifest's {special}")
    model = build_from_preset(preset, tok, seed=0)
    model.generation_config.max_length = manifest["generation"]["max_new_tokens"] + 1
    state = demo_state_dict(demo, int(preset["enc_hidden"]))
    head = state.pop("decoder.lm_head.weight")
    if model.config.decoder.tie_word_embeddings and not np.array_equal(head, state["decoder.transformer.wte.weight"]):
        raise ExportError("the demo's LM head differs from its token embeddings, but the preset ties them")
    # the ViT pooler is not part of any graph (captions never read it): it keeps the preset's seeded init
    params = {k: p for k, p in model.named_parameters() if not k.startswith(_UNUSED)}
    missing = sorted(set(params) - set(state))
    extra = sorted(set(state) - set(params))
    if missing or extra:
        raise ExportError(f"demo graphs and model disagree: parameters without a weight {missing[:4]}, weights "
                          f"without a parameter {extra[:4]}")
    with torch.no_grad():
        for name, p in params.items():
            value = torch.from_numpy(np.array(state[name]))  # a writable copy
            if tuple(value.shape) != tuple(p.shape):
                raise ExportError(f"{name}: graph weight {list(value.shape)}, model parameter {list(p.shape)}")
            p.copy_(value)
    image = manifest["image"]
    proc = ViTImageProcessorPil(size={"height": image["height"], "width": image["width"]}, resample=BILINEAR,
                                image_mean=image["mean"], image_std=image["std"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    proc.save_pretrained(out)
    logger.info("rebuilt the demo checkpoint from %s into %s", demo, out)
    return out


def compare_exports(reference: str | Path, candidate: str | Path, *, frames: int = 32,
                    atol: float = 1e-5) -> dict[str, Any]:
    """Compare two exports of one model: graph outputs on held-out synthetic scenes and generated ids.

    Args:
        reference: an exported directory (the shipped demo).
        candidate: another (the export of a rebuilt checkpoint).
        frames: held-out scenes (seeds from ``synth.HELD_OUT_SEED_START``).
        atol: the largest absolute difference allowed on any output.

    Returns:
        ``{"frames", "max_abs_diff": {output: value}, "ids_identical": n, "passed": bool}``.
    """
    from edgecap import Captioner, synth

    images = [synth.render_scene(synth.HELD_OUT_SEED_START + i)[0] for i in range(frames)]
    ref, cand = Captioner(reference), Captioner(candidate)
    px = ref.preprocess(images)
    diffs: dict[str, float] = {}

    def note(name: str, a: np.ndarray, b: np.ndarray) -> None:
        diffs[name] = max(diffs.get(name, 0.0), float(np.abs(a - b).max()))

    enc_r, enc_c = ref.encode(px), cand.encode(px)
    for i, (a, b) in enumerate(zip(enc_r.cross_k + enc_r.cross_v, enc_c.cross_k + enc_c.cross_v)):
        note(f"encoder.{'cross_k' if i < len(enc_r.cross_k) else 'cross_v'}.{i % len(enc_r.cross_k)}", a, b)
    note("encoder.pooled", enc_r.pooled, enc_c.pooled)
    ids_r, ids_c = ref.generate(px), cand.generate(px)
    # the decoder on the reference's own sequences, step by step from an empty past
    cross, past = ref.decoder_inputs(enc_r, 1)
    past_c = list(past)
    longest = max(len(s) for s in ids_r)
    seqs = np.array([[ref.defaults.decoder_start_token_id] + s + [ref.defaults.eos_token_id[0]] * (longest - len(s))
                     for s in ids_r], dtype=np.int64)
    for t in range(seqs.shape[1]):
        logits_r, past = ref.decoder_step(cross, seqs[:, t:t + 1], past)
        logits_c, past_c = cand.decoder_step(cross, seqs[:, t:t + 1], past_c)
        note("decoder.logits", logits_r, logits_c)
        for a, b in zip(past, past_c):
            note("decoder.present", a, b)
    same = sum(a == b for a, b in zip(ids_r, ids_c))
    return {"frames": frames, "atol": atol, "max_abs_diff": diffs, "ids_identical": same,
            "passed": same == frames and all(v <= atol for v in diffs.values())}


def main(argv: list[str] | None = None) -> int:
    """``python -m edgecap_export.demo_checkpoint OUT [--check]``: rebuild, and with --check prove the rebuild."""
    parser = argparse.ArgumentParser(prog="python -m edgecap_export.demo_checkpoint", description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the checkpoint directory to write")
    parser.add_argument("--check", action="store_true", help="export the rebuild and compare it with the shipped "
                                                             "graphs (outputs within 1e-5, identical ids)")
    parser.add_argument("--frames", type=int, default=32, help="held-out scenes for --check")
    args = parser.parse_args(argv)
    out = rebuild_demo_checkpoint(args.out)
    if not args.check:
        return 0
    from edgecap.models import demo_model_dir

    from .exporter import export_model

    with tempfile.TemporaryDirectory() as tmp:
        export_model(str(out), tmp, progress=False, name="demo")
        report = compare_exports(demo_model_dir(), tmp, frames=args.frames)
    sys.stdout.write(json.dumps(report, indent=1) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
