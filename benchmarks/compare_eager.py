"""edgecap FP32 vs transformers eager generate, side by side in one run, on a random-weight model with the exact
dimensions of nlpconnect/vit-gpt2-image-captioning (ViT-B/16 224 px + GPT-2 124M with cross-attention).

    python benchmarks/compare_eager.py [--runs 10] [--tokens 20] [--threads 2] [--workdir engines/vitgpt2-random]

Builds the model from configs (no hub), exports it with validation, then alternates the two systems on the same
pixel values with exactly --tokens new tokens (min = max), greedy, batch 1. Prints medians and the ratio and writes
benchmarks/results/compare_eager.json with CPU model, threads and library versions. Timings are medians of one
run on a shared machine: quote the ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build_vitgpt2_random(out: Path, seed: int = 0) -> Path:
    """save_pretrained a random-weight model with nlpconnect/vit-gpt2-image-captioning's architecture."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (GPT2Config, PreTrainedTokenizerFast, ViTConfig, ViTImageProcessorPil,
                              VisionEncoderDecoderConfig, VisionEncoderDecoderModel)

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    enc = ViTConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072)
    dec = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                     add_cross_attention=True, is_decoder=True, bos_token_id=50256, eos_token_id=50256,
                     pad_token_id=50256)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 50256, 50256, 50256
    model = VisionEncoderDecoderModel(config=cfg).eval()
    model.generation_config.max_length = 21
    model.save_pretrained(out)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["a photo of a street"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(out)
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default=str(ROOT / "engines" / "vitgpt2-random"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compare_eager.json"))
    args = p.parse_args(argv)

    import onnxruntime
    import torch
    import transformers
    from tqdm import tqdm

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "export"))
    from edgecap import Captioner
    from edgecap_export import export_model

    work = Path(args.workdir)
    ckpt = build_vitgpt2_random(work / "hf")
    if not (work / "manifest.json").is_file():
        export_model(str(ckpt), work, name="vitgpt2-random")
    model = transformers.VisionEncoderDecoderModel.from_pretrained(ckpt).eval()
    cap = Captioner(work, threads=args.threads)
    img = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    px = cap.preprocess([img])
    kw = dict(min_new_tokens=args.tokens, max_new_tokens=args.tokens, num_beams=1)

    def eager() -> list[int]:
        with torch.no_grad():
            return model.generate(pixel_values=torch.from_numpy(px), **kw)[0, 1:].tolist()

    def ours() -> list[int]:
        return cap.generate(px, **kw)[0]

    same = eager() == ours()  # warm-up, and parity with forced tokens
    times: dict[str, list[float]] = {"transformers_eager": [], "edgecap_fp32": []}
    stages: list[dict] = []
    for _ in tqdm(range(args.runs), desc="bench", unit="pair"):
        t = time.perf_counter()
        eager()
        times["transformers_eager"].append((time.perf_counter() - t) * 1e3)
        timing: dict = {}
        t = time.perf_counter()
        cap.generate(px, _timings=timing, **kw)
        times["edgecap_fp32"].append((time.perf_counter() - t) * 1e3)
        stages.append(timing)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "what": "per-caption latency, batch 1, greedy, exactly %d new tokens, random weights at "
                "nlpconnect/vit-gpt2-image-captioning dimensions" % args.tokens,
        "median_ms": med, "runs_ms": times,
        "speedup_edgecap_fp32_vs_eager": med["transformers_eager"] / med["edgecap_fp32"],
        "edgecap_stage_median_ms": {k: statistics.median(s[k] for s in stages)
                                    for k in ("encoder", "decoder_first", "decoder_rest")},
        "tokens_identical": same,
        "machine": {"cpu": cpu_model(), "threads": args.threads, "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median_ms", "speedup_edgecap_fp32_vs_eager",
                                             "edgecap_stage_median_ms", "tokens_identical")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
