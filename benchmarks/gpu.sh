#!/usr/bin/env bash
# GPU benchmark of a --target tensorrt export: export (with the ONNX Runtime CPU parity check against transformers),
# quantize (static QDQ, quality gate), lint, build TensorRT engines (when the tensorrt package is installed), check
# that the GPU captions equal the CPU ones, and time FP16 and INT8 at batch 1 and 8 with exactly 20 new tokens, each
# with the IO-bound decoder loop (KV cache on the GPU) and the plain one.
# One results JSON. Budget: under 10 minutes on one GPU for ViT-GPT2 base.
#
# NOT VALIDATED: written on machines without a GPU, onnxruntime-gpu or TensorRT; it has never run.
#
# usage: benchmarks/gpu.sh [HF_MODEL]   (env: WORK=engines/gpu-bench OUT=benchmarks/results/gpu.json
#                                        PROVIDER=tensorrt|cuda RUNS=10 CALIB=video-or-folder)
set -euo pipefail
MODEL=${1:-nlpconnect/vit-gpt2-image-captioning}
WORK=${WORK:-engines/gpu-bench}
OUT=${OUT:-benchmarks/results/gpu.json}
PROVIDER=${PROVIDER:-tensorrt}
RUNS=${RUNS:-10}
PY=${PYTHON:-python}

"$PY" - <<'PYEOF' || { echo "gpu.sh: needs onnxruntime-gpu with the CUDA provider on a machine with a GPU" >&2; exit 2; }
import onnxruntime as ort
assert "CUDAExecutionProvider" in ort.get_available_providers()
PYEOF

start=$(date +%s)
"$PY" -m edgecap export "$MODEL" --out "$WORK" --target tensorrt --fp16 --quiet
"$PY" -m edgecap quantize "$WORK" --target tensorrt ${CALIB:+--calib "$CALIB"} --quiet
"$PY" -m edgecap check-trt "$WORK"
if "$PY" -c "import tensorrt" 2>/dev/null; then
  "$PY" -m edgecap engines build "$WORK" --precision fp16 int8 --max-batch 8
fi

"$PY" - "$WORK" "$OUT" "$PROVIDER" "$RUNS" "$start" <<'PYEOF'
import json, os, statistics, sys, tempfile, time
from pathlib import Path

import onnxruntime as ort

from edgecap import Captioner, synth
from edgecap_export.quantize import caption_agreement
from edgecap_export.tensorrt.fp16 import fp16_captioner

work, out, provider, runs, start = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
frames = [synth.render_scene(synth.HELD_OUT_SEED_START + i)[0] for i in range(16)]
cpu = Captioner(work)
opts = {"max_new_tokens": 20, "min_new_tokens": 20, "num_beams": 1}
results = {"model": json.loads((work / "manifest.json").read_text())["source"], "provider": provider,
           "onnxruntime": ort.__version__, "available_providers": ort.get_available_providers(), "systems": {}}
with tempfile.TemporaryDirectory() as tmp:
    systems = {"fp16": fp16_captioner(work, Path(tmp) / "fp16", providers=[provider]),
               "int8": Captioner(work, precision="int8", providers=[provider])}
    for name, cap in systems.items():
        entry = {"parity_vs_cpu_fp32": caption_agreement(cpu, cap, frames), "latency_ms": {}}
        for batch in (1, 8):
            # the decoder loop with IO binding (KV cache on the GPU, the default there) and the plain one
            # (EDGECAP_IO_BINDING=0: K/V through the host every step), alternated run by run
            loops = {"io_binding": "1", "plain": "0"}
            times = {loop: [] for loop in loops}
            for flag in loops.values():
                os.environ["EDGECAP_IO_BINDING"] = flag
                cap.caption(frames[:batch], **opts)  # warm-up: engine build or cache load, allocations
            for _ in range(runs):
                for loop, flag in loops.items():
                    os.environ["EDGECAP_IO_BINDING"] = flag
                    t = time.perf_counter()
                    cap.caption(frames[:batch], **opts)
                    times[loop].append((time.perf_counter() - t) * 1000)
            entry["latency_ms"][f"batch{batch}"] = {
                loop: {"median": statistics.median(ts), "min": min(ts),
                       "captions_per_s": batch * 1000 / statistics.median(ts)} for loop, ts in times.items()}
            os.environ.pop("EDGECAP_IO_BINDING")
        results["systems"][name] = entry
results["wall_s"] = time.time() - start
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(results, indent=2) + "\n")
print(json.dumps(results, indent=2))
PYEOF
