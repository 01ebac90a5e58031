"""FP16 vs FP32 generated ids of the demo model's --target tensorrt graphs on held-out synthetic scenes (ONNX
Runtime CPU), with every caption that differs and the FP32 logit margin at the first differing step.

    python -m edgecap_export.demo_checkpoint runs/demo-hf --check
    edgecap export runs/demo-hf --out runs/demo-trt --target tensorrt --fp16
    python benchmarks/fp16_demo.py runs/demo-trt --frames 500 --out benchmarks/results/fp16-demo.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def _margin(cap, pixel_values: np.ndarray, ids: list[int], step: int) -> float:
    """FP32 top-1 minus top-2 logit at ``step`` of the FP32 sequence ``ids`` (how close the choice was)."""
    enc = cap.encode(pixel_values)
    cross, past = cap.decoder_inputs(enc, 1)
    seq = [cap.defaults.decoder_start_token_id] + ids
    logits = None
    for t in range(step + 1):
        logits, past = cap.decoder_step(cross, np.array([[seq[t]]], dtype=np.int64), past)
    top = np.sort(logits[0])[-2:]
    return float(top[1] - top[0])


def main() -> None:
    from edgecap import Captioner, synth
    from edgecap_export.bench import cpu_model
    from edgecap_export.tensorrt.fp16 import fp16_captioner

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="a --target tensorrt --fp16 export of the demo model")
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    fp32 = Captioner(args.model)
    differ, same, tokens, same_tokens = [], 0, 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        fp16 = fp16_captioner(args.model, Path(tmp) / "fp16")
        for start in range(0, args.frames, 16):
            seeds = [synth.HELD_OUT_SEED_START + i for i in range(start, min(start + 16, args.frames))]
            images = [synth.render_scene(s)[0] for s in seeds]
            for seed, image, a, b in zip(seeds, images, fp32.caption(images), fp16.caption(images)):
                same += a.token_ids == b.token_ids
                tokens += max(len(a.token_ids), len(b.token_ids))
                same_tokens += sum(p == q for p, q in zip(a.token_ids, b.token_ids))
                if a.token_ids != b.token_ids:
                    step = next((i for i, (p, q) in enumerate(zip(a.token_ids, b.token_ids)) if p != q),
                                min(len(a.token_ids), len(b.token_ids)))
                    differ.append({"seed": seed, "fp32": a.text, "fp16": b.text, "first_different_step": step,
                                   "fp32_top2_logit_margin": _margin(fp32, fp32.preprocess([image]),
                                                                     a.token_ids, step)})
    report = {"model": str(args.model), "source": "held-out synthetic scenes", "first_seed": synth.HELD_OUT_SEED_START,
              "frames": args.frames, "identical_captions": same, "exact_match": same / args.frames,
              "token_agreement": same_tokens / max(1, tokens), "runtime": "onnxruntime cpu",
              "cpu": cpu_model(), "differences": differ}
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "differences"}, indent=1))
    for d in differ:
        print(d)


if __name__ == "__main__":
    main()
