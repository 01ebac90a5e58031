"""How fast can a caption get on this machine? The weight-GEMM floor of ViT-GPT2, next to transformers eager.

    python benchmarks/floor.py [--hf engines/vitgpt2-random/hf] [--runs 30] [--tokens 20] [--no-eager]

A caption is the encoder once plus one decoder step per token. Whatever else an implementation does, it has to
multiply by every weight matrix. At ViT-GPT2 size that is the encoder's 60 GEMMs over 197 image tokens (Q/K/V,
attention out, MLP in and out per layer, and the cross-attention K/V projections) and, per generated token, the
decoder's 73 GEMVs (self QKV, self out, cross Q, cross out, MLP in and out per layer, and the 50257-word LM
head). This script times exactly those matrix products and nothing else -- no attention, LayerNorm, GELU,
softmax, sampling or Python -- with ONNX Runtime's own kernels, FP32 and dynamic INT8, warm (weights as hot in
cache as they can be), as graphs of independent MatMuls so no dependency between them is counted:

    floor per caption = encoder GEMMs + tokens x decoder-step GEMVs

With a transformers checkpoint it also times transformers eager generate() in the same run, so the speed-ups the
floors allow can be set against targets like "INT8 >= 5.9x faster than eager". The INT8 graphs are quantized with
edgecap's own recipe (and, for reference, per tensor). The decoder step's GB/s shows how close its GEMVs come to
the memory bandwidth. Writes benchmarks/results/floor.json.

With a SmolVLM checkpoint (``--hf engines/smolvlm-256m-random/hf``, see ``RANDOM_ARCHS["smolvlm-256m"]`` in
edgecap_export/random_checkpoints.py) an answer is the vision tower's GEMMs over its patches, the connector over the
image tokens, the prefill's GEMMs over the whole prompt (chat template, image tokens, question), the LM head once
for the last prompt position, then tokens - 1 decoder steps (GEMVs with the LM head); eager is timed on the same
question at each --eager-batch, with its prefill and per-token times.

BLIP and Florence-2 (``blip_gemms``, ``florence2_gemms``), in the same process as the bench they are compared with:

    python benchmarks/floor.py --bench "--model DIR --batch 1 8 --out benchmarks/results/bench-blip.json"

times their floor at each batch size right before and right after `edgecap bench` and adds both, and edgecap's
distance from them per caption, encoder and token, to the bench's JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "export"))

from edgecap_export.bench import (cpu_flags, cpu_model, load_average, package_versions,  # noqa: E402
                                  smolvlm_eager_runner)

# nlpconnect/vit-gpt2-image-captioning's dimensions (ViT-B/16 224 px + GPT-2 124M), used without --hf.
VITGPT2 = {"encoder": {"model_type": "vit", "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "image_size": 224, "patch_size": 16},
           "decoder": {"model_type": "gpt2", "n_embd": 768, "n_inner": None, "n_layer": 12, "vocab_size": 50257}}
TARGETS = {"int8": 5.9, "fp32": 2.2}  # issue 4: "INT8 >= 5.9x faster than eager", "FP32 >= 2.2x"
SMOLVLM_TARGETS = {"int8": 3.0, "fp32": 1.3}  # issue 13: "INT8 at least 3x faster than eager per answer; FP32 1.3x"
SMOLVLM_TYPES = ("smolvlm", "idefics3")
VARIANTS = {  # name -> precision
    "fp32": "fp32",
    "int8": "int8",  # edgecap's recipe (edgecap_export.quantize.quantize_dynamic_graph): per-channel weights
    "int8_per_tensor": "int8",  # reference: per-tensor weights, as optimum's documented examples quantize
}


def gemm_shapes(config: dict[str, Any]) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """(K, N) of every weight matrix of a ViT/DeiT + GPT-2 VisionEncoderDecoder config: the encoder's (with the
    decoder's cross-attention K/V projections, computed once per image) and one decoder step's; and the number of
    image tokens."""
    enc, dec = config["encoder"], config["decoder"]
    if enc.get("model_type") not in ("vit", "deit") or dec.get("model_type") != "gpt2":
        raise ValueError(f"knows ViT/DeiT + GPT-2 shapes, got {enc.get('model_type')} + {dec.get('model_type')}")
    de, mlp_e, le = enc["hidden_size"], enc["intermediate_size"], enc["num_hidden_layers"]
    dd, ld, vocab = dec["n_embd"], dec["n_layer"], dec["vocab_size"]
    mlp_d = dec.get("n_inner") or 4 * dd
    tokens = (enc["image_size"] // enc["patch_size"]) ** 2 + 1 + (enc.get("model_type") == "deit")
    encoder = [(de, 3 * de), (de, de), (de, mlp_e), (mlp_e, de)] * le + [(dd, 2 * dd)] * ld
    if de != dd:
        encoder.append((de, dd))  # enc_to_dec_proj
    decoder = [(dd, 3 * dd), (dd, dd), (dd, dd), (dd, dd), (dd, mlp_d), (mlp_d, dd)] * ld + [(dd, vocab)]
    return encoder, decoder, tokens


def smolvlm_gemm_shapes(config: dict[str, Any], prompt_tokens: int) -> dict[str, tuple[list[tuple[int, int]], int]]:
    """Stage -> ((K, N) of each weight matrix, rows) of a SmolVLM/Idefics3 config, one tile: the vision tower
    (patch embedding as a GEMM, then Q/K/V, out, MLP in and out per layer) over its patches; the connector (the
    pixel-shuffled patches, scale_factor^2 x vision width, to the text width) over the image tokens; the prefill
    (per layer fused Q/K/V with grouped KV heads, out, gate+up, down) over ``prompt_tokens``; the LM head for one
    row; and a decoder step (the layers and the LM head) for one row."""
    v, t = config["vision_config"], config["text_config"]
    dv, mv, lv, patch = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"], v["patch_size"]
    patches = (v["image_size"] // patch) ** 2
    scale = config.get("scale_factor", 2)
    dt, mt, lt, vocab = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"], t["vocab_size"]
    heads = t["num_attention_heads"]
    head_dim = t.get("head_dim") or dt // heads
    q, kv = heads * head_dim, (t.get("num_key_value_heads") or heads) * head_dim
    layers = [(dt, q + 2 * kv), (q, dt), (dt, 2 * mt), (mt, dt)] * lt
    return {"vision": ([(3 * patch * patch, dv)] + [(dv, 3 * dv), (dv, dv), (dv, mv), (mv, dv)] * lv, patches),
            "connector": ([(dv * scale * scale, dt)], patches // (scale * scale)),
            "prefill": (layers, prompt_tokens),
            "lm_head": ([(dt, vocab)], 1),
            "decoder_step": (layers + [(dt, vocab)], 1)}


def floor_plan(config: dict[str, Any], tokens: int, prompt_tokens: int = 0) -> dict[str, tuple[list, int, int]]:
    """Stage -> (shapes, rows, times per caption) for a checkpoint config; the floor is the sum of each stage's
    time x its count."""
    if config.get("model_type") in SMOLVLM_TYPES:
        stages = smolvlm_gemm_shapes(config, prompt_tokens)
        counts = {"decoder_step": tokens - 1}  # the first token's logits come from the prefill's last position
        return {name: (shapes, rows, counts.get(name, 1)) for name, (shapes, rows) in stages.items()}
    enc, dec, image_tokens = gemm_shapes(config)
    return {"encoder": (enc, image_tokens, 1), "decoder_step": (dec, 1, tokens)}


def smolvlm_prompt_tokens(hf: Path, question: str) -> int:
    """The prompt's length as the checkpoint's processor builds it: chat template, the tile's image tokens and
    ``question``."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(hf)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                      "text": question}]}],
                                    add_generation_prompt=True)
    image = np.zeros((32, 32, 3), np.uint8)
    return int(proc(text=[text], images=[[image]], return_tensors="np")["input_ids"].shape[1])


def blip_gemms(config: dict[str, Any]) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """BlipForConditionalGeneration's weight matrices: the encoder's (K, N, rows) -- the ViT's patch embedding, each
    layer's qkv, projection, fc1 and fc2 over the image tokens, and every text layer's cross K/V projection -- and
    one decoder step's (K, N): per text layer self Q/K/V, self out, cross Q, cross out, intermediate and output, then
    the prediction head's transform and the LM head."""
    vis, txt = config["vision_config"], config["text_config"]
    dv, mv = vis["hidden_size"], vis["intermediate_size"]
    patches = (vis["image_size"] // vis["patch_size"]) ** 2
    dt, mt, lt = txt["hidden_size"], txt["intermediate_size"], txt["num_hidden_layers"]
    tokens = patches + 1
    encoder = [(3 * vis["patch_size"] ** 2, dv, patches)]
    encoder += [(k, n, tokens) for k, n in [(dv, 3 * dv), (dv, dv), (dv, mv), (mv, dv)] * vis["num_hidden_layers"]]
    encoder += [(dv, 2 * dt, tokens)] * lt
    decoder = [(dt, 3 * dt), (dt, dt), (dt, dt), (dt, dt), (dt, mt), (mt, dt)] * lt
    decoder += [(dt, dt), (dt, txt["vocab_size"])]  # the prediction head's transform, the LM head
    return encoder, decoder


def florence2_gemms(config: dict[str, Any], image_size: int, prompt_tokens: int
                    ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Florence2ForConditionalGeneration's weight matrices at a square ``image_size`` input whose task prompt is
    ``prompt_tokens`` ids long. Encoder (K, N, rows): per DaViT stage its patch-embedding convolution as a GEMM
    (kernel x kernel x input channels -> width, over the stage's positions) and, per block, a spatial and a channel
    sub-block's qkv, projection, fc1 and fc2; the projector over the image features; the BART encoder's layers and
    the decoder's cross K/V over image features + prompt. Decoder step (K, N): per layer self Q/K/V, self out,
    cross Q, cross out, fc1, fc2, then the LM head. Depthwise convolutions are not weight GEMMs and not counted."""
    vis, txt = config["vision_config"], config["text_config"]
    encoder: list[tuple[int, int, int]] = []
    side, channels = image_size, vis.get("in_channels", 3)
    for width, depth, kernel, stride, pad in zip(vis["embed_dim"], vis["depths"], vis["patch_size"],
                                                 vis["patch_stride"], vis["patch_padding"]):
        side = (side + 2 * pad - kernel) // stride + 1
        rows, mlp = side * side, int(width * vis.get("mlp_ratio", 4.0))
        encoder.append((kernel * kernel * channels, width, rows))
        block = [(width, 3 * width), (width, width), (width, mlp), (mlp, width)]
        encoder += [(k, n, rows) for k, n in block] * 2 * depth  # a spatial and a channel sub-block
        channels = width
    d = txt["d_model"]
    features = side * side + 1  # the spatial positions and their mean (the projector's temporal token)
    encoder.append((channels, vis["projection_dim"], features))
    seq = features + prompt_tokens
    encoder += [(k, n, seq) for k, n in [(d, 3 * d), (d, d), (d, txt["encoder_ffn_dim"]),
                                         (txt["encoder_ffn_dim"], d)]] * txt["encoder_layers"]
    encoder += [(d, 2 * d, seq)] * txt["decoder_layers"]
    f = txt["decoder_ffn_dim"]
    decoder = [(d, 3 * d), (d, d), (d, d), (d, d), (d, f), (f, d)] * txt["decoder_layers"] + [(d, txt["vocab_size"])]
    return encoder, decoder


def time_floor(encoder: list[tuple[int, int, int]], decoder: list[tuple[int, int]], *, batch: int, tokens: int,
               threads: int, runs: int, rounds: int) -> dict[str, dict[str, float]]:
    """FP32 and edgecap-INT8 weight-GEMM floors of one caption at ``batch`` images: the encoder GEMMs over
    ``batch`` times their rows, the decoder step's over ``batch`` rows; per caption = per batch / batch."""
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="edgecap-floor-") as tmp:
        t = Path(tmp)
        enc_feed = matmul_graph([(k, n, r * batch) for k, n, r in encoder], 0, t / "encoder.onnx")
        dec_feed = matmul_graph(decoder, batch, t / "decoder.onnx", seed=1)
        for name in ("fp32", "int8"):
            enc, dec = (t / "encoder.onnx", t / "decoder.onnx") if name == "fp32" else \
                (quantized(t / "encoder.onnx", name), quantized(t / "decoder.onnx", name))
            e = time_graph(enc, enc_feed, threads, runs, rounds, warmup=1)  # seconds per call at batch 8
            s = time_graph(dec, dec_feed, threads, runs, rounds)
            rows[name] = {"encoder_gemms_ms": e, "decoder_step_gemvs_ms": s,
                          "floor_per_caption_ms": (e + tokens * s) / batch}
    return rows


def matmul_graph(shapes: list[tuple[int, int]] | list[tuple[int, int, int]], rows: int, path: Path,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """An ONNX graph of independent MatMuls [1, rows, K] x [K, N]; returns a feed for it. A shape given as
    (K, N, R) multiplies R rows instead of ``rows`` (Florence-2's DaViT stages run over different positions)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    full = [(s[0], s[1], s[2] if len(s) == 3 else rows) for s in shapes]
    xs = sorted({(k, r) for k, _, r in full})
    inputs = [helper.make_tensor_value_info(f"x{k}_{r}", TensorProto.FLOAT, [1, r, k]) for k, r in xs]
    nodes, inits, outputs = [], [], []
    for i, (k, n, r) in enumerate(full):
        inits.append(numpy_helper.from_array((rng.standard_normal((k, n)) * 0.02).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"x{k}_{r}", f"w{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    model = helper.make_model(helper.make_graph(nodes, "gemms", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    return {f"x{k}_{r}": rng.standard_normal((1, r, k)).astype(np.float32) for k, r in xs}


def quantized(src: Path, variant: str) -> Path:
    """``src`` quantized the way ``variant`` says."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgecap_export.quantize import quantize_dynamic_graph

    dst = src.with_name(f"{src.stem}.{variant}.onnx")
    if variant == "int8":
        quantize_dynamic_graph(src, dst)
    else:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=False,
                         op_types_to_quantize=["MatMul"])
    return dst


def time_graph(path: Path, feed: dict[str, np.ndarray], threads: int, runs: int, rounds: int,
               warmup: int = 5) -> float:
    """Best round median, in ms, of ``runs`` back-to-back calls after ``warmup`` calls (the floor: warm caches)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        sess.run(None, feed)
    medians = []
    for _ in range(rounds):
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, feed)
            ts.append(time.perf_counter() - t0)
        medians.append(statistics.median(ts) * 1e3)
    return min(medians)


def time_eager(hf: Path, tokens: int, threads: int, runs: int) -> dict[str, Any]:
    """transformers eager generate() of exactly ``tokens`` greedy tokens, batch 1, median ms."""
    import torch
    import transformers
    from transformers import VisionEncoderDecoderModel

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    model = VisionEncoderDecoderModel.from_pretrained(hf).eval()
    size = model.config.encoder.image_size
    px = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32))
    kw = dict(min_new_tokens=tokens, max_new_tokens=tokens, num_beams=1, do_sample=False)
    ts = []
    with torch.inference_mode():
        for i in range(runs + 1):
            t0 = time.perf_counter()
            model.generate(pixel_values=px, **kw)
            if i:  # the first call is the warm-up
                ts.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(ts), "runs": len(ts), "transformers": transformers.__version__,
            "torch": torch.__version__}


def time_eager_smolvlm(hf: Path, tokens: int, threads: int, runs: int, batches: list[int]) -> dict[str, Any]:
    """transformers eager generate() of exactly ``tokens`` greedy tokens per answer, for the bench's question, at
    each batch size: median ms per batch and per answer, prefill and per-token ms; ``median_ms`` is batch 1's."""
    import torch
    import transformers
    from transformers import AutoModelForImageTextToText, AutoProcessor

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    model = AutoModelForImageTextToText.from_pretrained(hf, attn_implementation="eager").eval()
    proc = AutoProcessor.from_pretrained(hf)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(max(batches))]
    kw = dict(min_new_tokens=tokens, max_new_tokens=tokens, num_beams=1)
    out: dict[str, Any] = {"batches": {}, "runs": runs, "transformers": transformers.__version__,
                           "torch": torch.__version__}
    for b in batches:
        run = smolvlm_eager_runner(model, proc, images[:b], kw)
        run()  # warm-up
        rows = [run() for _ in range(runs)]
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        out["batches"][str(b)] = {"per_batch_ms": med["total"], "per_answer_ms": med["total"] / b,
                                  "preprocess_ms": med["preprocess"], "prefill_ms": med["prefill"],
                                  "decode_per_token_ms": med["decode_per_token"]}
    out["median_ms"] = out["batches"][str(batches[0])]["per_batch_ms"] / batches[0]
    return out


def model_gemms(model_dir: Path) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """The weight GEMMs of an exported BLIP or Florence-2 directory (its ``hf`` checkpoint's config; Florence-2's
    prompt is the default task's text, as the bench sends it)."""
    from tokenizers import Tokenizer

    from edgecap.manifest import load_manifest

    config = json.loads((model_dir / "hf" / "config.json").read_text())
    if config.get("model_type") == "blip":
        return blip_gemms(config)
    if config.get("model_type") == "florence2":
        m = load_manifest(model_dir).data
        prompt = m["prompt"]["tasks"][m["prompt"]["default_task"]]["text"]
        ids = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(prompt, add_special_tokens=False).ids
        return florence2_gemms(config, m["image"]["height"], len(ids) + 2)  # <s> prompt </s>
    raise ValueError(f"knows BLIP and Florence-2 shapes, got model_type {config.get('model_type')!r}")


def bench_with_floor(bench_argv: list[str], *, threads: int, runs: int, rounds: int) -> int:
    """`edgecap bench` between two floor timings in one process; the floors and ratios go into its JSON."""
    from edgecap.cli.args import OneLineParser
    from edgecap.cli.model import add_bench_arguments
    from edgecap_export.bench import run as run_bench

    p = OneLineParser(prog="floor.py --bench")
    add_bench_arguments(p)
    bench_args = p.parse_args(bench_argv)
    if not bench_args.model or not bench_args.out:
        p.error("--bench needs --model DIR (an exported BLIP or Florence-2 directory with its hf/) and --out")
    model_dir = Path(bench_args.model)
    encoder, decoder = model_gemms(model_dir)
    threads = bench_args.threads or threads
    kw = dict(tokens=bench_args.tokens, threads=threads, runs=runs, rounds=rounds)
    load = [load_average()]
    before = {b: time_floor(encoder, decoder, batch=b, **kw) for b in bench_args.batch}
    load.append(load_average())
    run_bench(bench_args)
    load.append(load_average())
    after = {b: time_floor(encoder, decoder, batch=b, **kw) for b in bench_args.batch}
    load.append(load_average())
    out = Path(bench_args.out)
    report = json.loads(out.read_text())
    floors, distance = {}, {}
    for b in bench_args.batch:
        for name in ("fp32", "int8"):
            best = {k: min(before[b][name][k], after[b][name][k]) for k in before[b][name]}
            floors[f"{name}/batch{b}"] = {"before": before[b][name], "after": after[b][name], "best": best}
            r = report["results"].get(f"edgecap_{name}/batch{b}")
            if r:
                distance[f"edgecap_{name}/batch{b}"] = {
                    "caption": r["per_caption_ms_p50"] / best["floor_per_caption_ms"],
                    "encoder": r["stages_ms"]["encoder"]["p50"] / best["encoder_gemms_ms"],
                    "decode_per_token": r["stages_ms"]["decode_per_token"]["p50"] / best["decoder_step_gemvs_ms"]}
            eager = report["results"].get(f"transformers_eager/batch{b}")
            if eager:
                floors[f"{name}/batch{b}"]["max_speedup_vs_eager"] = \
                    eager["per_caption_ms_p50"] / best["floor_per_caption_ms"]
    report["floor"] = {
        "what": "ONNX Runtime weight GEMMs only (FP32, and edgecap's INT8 recipe), warm, best round median, timed "
                "in the same process right before and right after the bench; per caption = (encoder GEMMs + tokens "
                "x decoder-step GEMVs) / batch; 'best' is the lower of the two timings",
        "encoder_gemms": len(encoder), "decoder_gemvs": len(decoder),
        "parameters": {"encoder": sum(k * n for k, n, _ in encoder), "decoder_step": sum(k * n for k, n in decoder)},
        "runs": runs, "rounds": rounds, "floors": floors, "edgecap_vs_floor": distance,
        "loadavg_1m": {"before_floor": load[0], "before_bench": load[1], "after_bench": load[2],
                       "after_floor": load[3]}}
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, d in distance.items():
        print(f"{name:24s} {d['caption']:.2f}x its floor per caption (encoder {d['encoder']:.2f}x, "
              f"per token {d['decode_per_token']:.2f}x)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from edgecap_export.bench import SMOLVLM_QUESTION

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=20, help="generated tokens per caption (default 20)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument("--runs", type=int, default=30, help="timed calls per graph and round (default 30)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per graph; the best round median counts")
    default_hf = ROOT / "engines" / "vitgpt2-random" / "hf"
    p.add_argument("--hf", type=Path, default=default_hf if default_hf.is_dir() else None,
                   help="transformers VisionEncoderDecoder or SmolVLM checkpoint: its shapes are floored and it is "
                        "timed with eager generate() in the same run (default engines/vitgpt2-random/hf when it "
                        "exists, see `edgecap bench --vitgpt2-random`; without one, ViT-GPT2 shapes and no eager)")
    p.add_argument("--no-eager", action="store_true", help="do not time transformers eager")
    p.add_argument("--eager-runs", type=int, default=10, help="timed eager captions (default 10)")
    p.add_argument("--eager-batch", type=int, nargs="+", default=[1],
                   help="SmolVLM: eager batch sizes (default 1); the first one is set against the floor")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "floor.json")
    p.add_argument("--bench", metavar="ARGS", default=None,
                   help='BLIP and Florence-2: run `edgecap bench ARGS` (e.g. "--model DIR --batch 1 8 --out X.json") '
                        "in this process with the floor of DIR/hf's shapes timed right before and right after it, "
                        "and add both and edgecap's distance from them to the bench's JSON (--threads, --runs, "
                        "--rounds and --tokens apply to the floor; --out and --hf are not used)")
    args = p.parse_args(argv)
    if args.bench is not None:
        return bench_with_floor(shlex.split(args.bench), threads=args.threads, runs=args.runs, rounds=args.rounds)
    if min(args.tokens, args.threads, args.runs, args.rounds, args.eager_runs, *args.eager_batch) < 1:
        p.error("--tokens, --threads, --runs, --rounds, --eager-runs and --eager-batch must be >= 1")
    config = VITGPT2
    if args.hf is not None:
        try:
            config = json.loads((args.hf / "config.json").read_text())
        except (OSError, ValueError) as exc:
            p.error(f"--hf {args.hf}: cannot read config.json ({exc.__class__.__name__}); "
                    "pass a transformers checkpoint directory")
    smolvlm = config.get("model_type") in SMOLVLM_TYPES
    try:
        prompt_tokens = smolvlm_prompt_tokens(args.hf, SMOLVLM_QUESTION) if smolvlm else 0
        plan = floor_plan(config, args.tokens, prompt_tokens)
    except (KeyError, TypeError, ValueError, OSError) as exc:
        p.error(f"--hf {args.hf}: {exc.__class__.__name__}: {exc}")
    params = {name: sum(k * n for k, n in shapes) for name, (shapes, _, _) in plan.items()}
    keys = {name: f"{name}_{'gemvs' if rows == 1 else 'gemms'}_ms" for name, (_, rows, _) in plan.items()}
    rows_out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="edgecap-floor-") as tmp:
        t = Path(tmp)
        feeds = {name: matmul_graph(shapes, rows, t / f"{name}.onnx", seed=i)
                 for i, (name, (shapes, rows, _)) in enumerate(plan.items())}
        with tqdm(total=len(plan) * len(VARIANTS), desc="floor", unit="graph", file=sys.stderr) as bar:
            for variant in VARIANTS:
                rows_out[variant] = {}
                for name in plan:
                    graph = t / f"{name}.onnx" if variant == "fp32" else quantized(t / f"{name}.onnx", variant)
                    rows_out[variant][keys[name]] = time_graph(graph, feeds[name], args.threads, args.runs,
                                                               args.rounds)
                    bar.update()
    eager = None
    if not args.no_eager and args.hf is not None:
        eager = (time_eager_smolvlm(args.hf, args.tokens, args.threads, args.eager_runs, args.eager_batch)
                 if smolvlm else time_eager(args.hf, args.tokens, args.threads, args.eager_runs))
    targets = SMOLVLM_TARGETS if smolvlm else TARGETS
    for name, r in rows_out.items():
        r["floor_per_caption_ms"] = sum(r[keys[stage]] * count for stage, (_, _, count) in plan.items())
        bytes_per_param = 4 if VARIANTS[name] == "fp32" else 1
        r["decoder_step_gb_per_s"] = params["decoder_step"] * bytes_per_param / r["decoder_step_gemvs_ms"] / 1e6
        if eager:
            r["max_speedup_vs_eager"] = eager["median_ms"] / r["floor_per_caption_ms"]
            target = targets[VARIANTS[name]]
            r["target_speedup"] = target
            r["caption_ms_needed_for_target"] = eager["median_ms"] / target
    report = {
        "benchmark": "floor", "checkpoint": str(args.hf) if args.hf else "vit-gpt2 dimensions",
        "tokens": args.tokens, "threads": args.threads,
        "parameters": params,
        "stages": {name: {"gemms": len(shapes), "rows": rows, "per_caption": count}
                   for name, (shapes, rows, count) in plan.items()},
        "what": "ONNX Runtime weight GEMMs only (no attention, norms, activations, sampling); warm; best round "
                "median. floor_per_caption_ms = the sum over stages of each stage's ms x its per_caption count",
        "floors": rows_out, "eager": eager,
        "machine": {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
                    "loadavg_1m": load_average()},
        "versions": package_versions("onnxruntime", "onnx", "numpy", "torch", "transformers"),
    }
    if smolvlm:
        report.update(question=SMOLVLM_QUESTION, prompt_tokens=prompt_tokens)
    else:
        report["image_tokens"] = plan["encoder"][1]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if eager:
        print(f"transformers {eager['transformers']} eager generate(): {eager['median_ms']:.0f} ms per caption")
    for name, r in rows_out.items():
        stages = ", ".join(f"{stage} {r[keys[stage]]:.2f} ms" for stage in plan)
        line = f"{name:16s} {stages} ({r['decoder_step_gb_per_s']:.0f} GB/s), floor {r['floor_per_caption_ms']:.1f} ms"
        if eager:
            line += (f"; at most {r['max_speedup_vs_eager']:.2f}x vs eager (target {r['target_speedup']}x needs "
                     f"<= {r['caption_ms_needed_for_target']:.0f} ms)")
        print(line)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
