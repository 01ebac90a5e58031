"""`edgecap export`, `quantize`, `finetune` and `bench`: the export side. They need the export extra (torch,
transformers, onnx) and import `edgecap_export` only when they run."""

from __future__ import annotations

import argparse

from ..errors import DependencyError, ParityError
from .args import add_quiet, add_threads, non_negative_float, positive_float, positive_int


def _require_export_extra() -> None:
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise DependencyError(f"`{exc.name}` is not installed: the export step needs the export extra; install the "
                              "CPU build of torch first (pip install torch==2.13.0, or the CPU index elsewhere), "
                              "then pip install 'edgecap[export]'") from None


def cmd_export(args: argparse.Namespace) -> int:
    import sys

    _require_export_extra()
    from edgecap_export import export_model

    try:
        out = export_model(args.model, args.out, opset=args.opset, validate=not args.skip_validation,
                           name=args.name, progress=not args.quiet, attention=args.attention,
                           target=args.target, trt_version=args.trt_version, fp16=args.fp16)
    except ParityError as exc:
        print(f"edgecap: error: {exc}", file=sys.stderr)
        for line in exc.report:
            print(f"  mismatch: {line}", file=sys.stderr)
        return 1
    print(f"exported {args.model} -> {out}")
    if args.int8:
        return _quantize(args, out)
    return 0


def _quantize(args: argparse.Namespace, model_dir) -> int:
    from edgecap_export.quantize import quantize_dir

    report = quantize_dir(model_dir, calib=args.calib, calib_frames=args.calib_frames,
                          encoder_mode=args.encoder_mode, decoder_mode=args.decoder_mode,
                          accept_quality_drop=args.accept_quality_drop, progress=not args.quiet,
                          target=args.target)
    line = (f"int8 written to {model_dir}: caption exact match vs fp32 {report['exact_match']:.1%}, "
            f"token agreement {report['token_agreement']:.1%}")
    if "attribute_accuracy" in report:
        line += f", largest attribute-accuracy drop {report['attribute_accuracy']['max_drop']:.1%}"
    print(line + (" (quality drop accepted)" if report.get("accepted_quality_drop") else ""))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    _require_export_extra()
    return _quantize(args, args.model_dir)


def cmd_check_trt(args: argparse.Namespace) -> int:
    import sys

    _require_export_extra()
    from edgecap_export.tensorrt import graph_files, lint_dir, support_table

    files = graph_files(args.model_dir)
    version = args.trt_version or support_table()["default_version"]
    violations = lint_dir(args.model_dir, trt_version=version, files=files)
    for v in violations:
        print(f"edgecap: trt: {v}", file=sys.stderr)
    if violations:
        print(f"edgecap: error: {len(violations)} TensorRT {version} violation(s) in "
              f"{len({v.graph for v in violations})} of {len(files)} graph(s); export with --target tensorrt "
              "(and quantize with --target tensorrt)", file=sys.stderr)
        return 1
    print(f"{len(files)} graph(s) pass the TensorRT {version} lint: {', '.join(f.name for f in files)}")
    return 0


def cmd_engines_build(args: argparse.Namespace) -> int:
    _require_export_extra()
    from edgecap.providers import ProfileLimits
    from edgecap_export.tensorrt.engines import build_engines

    limits = ProfileLimits(max_batch=args.max_batch, max_past=args.max_past, max_new_tokens=args.max_new_tokens)
    for path in build_engines(args.model_dir, precisions=tuple(args.precision) if args.precision else None,
                              limits=limits):
        print(path)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    _require_export_extra()
    from edgecap_export.finetune import TrainConfig, finetune

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      threads=args.threads)
    out = finetune(args.data, args.out, base=args.base, cfg=cfg, progress=not args.quiet,
                   max_steps=args.max_steps)
    print(f"trained and exported -> {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    _require_export_extra()
    from edgecap_export.bench import run

    return run(args)


def _add_int8_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", default=None, help="calibration frames: a video file, an image folder or a stream URL "
                                                 "(default: generated surveillance scenes)")
    p.add_argument("--calib-frames", type=positive_int, default=64, help="frames used to calibrate (default 64)")
    p.add_argument("--encoder-mode", choices=("static", "dynamic"), default=None,
                   help="encoder quantization: dynamic (fastest on CPU, the onnxruntime default) or calibrated "
                        "static QDQ (the only --target tensorrt mode)")
    p.add_argument("--decoder-mode", choices=("static", "dynamic"), default=None,
                   help="decoder quantization: dynamic (fastest on CPU, the onnxruntime default) or calibrated "
                        "static QDQ (the only --target tensorrt mode)")
    p.add_argument("--accept-quality-drop", action="store_true",
                   help="keep INT8 graphs that fail the quality gate (recorded in the manifest; for random-weight "
                        "benchmark models)")


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", choices=("onnxruntime", "tensorrt"), default="onnxruntime",
                   help="onnxruntime (default); tensorrt: standard ONNX ops, opset within --trt-version's range, "
                        "Q scaled before Q.K^T, and every graph passes `edgecap check-trt` before the command "
                        "succeeds")


def _add_trt_version(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trt-version", default=None,
                   help="the TensorRT version to check against (default 10.0; the table knows 10.0 and 10.15)")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `edgecap bench` (also used by benchmarks/bench.py)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="an exported directory (transformers eager is included if DIR/hf exists)")
    src.add_argument("--arch", choices=("vitgpt2-base", "blip-base", "florence2-base", "smolvlm-256m"),
                     help="build, export and quantize a random-weight model at a real architecture's dimensions: "
                          "vit-gpt2-image-captioning, blip-image-captioning-base, Florence-2-base or "
                          "SmolVLM-256M-Instruct (asked \"Describe what happens in this frame.\")")
    src.add_argument("--vitgpt2-random", action="store_true", help="the same as --arch vitgpt2-base")
    p.add_argument("--workdir", default=None,
                   help="where the random model is built and exported (default: ./engines/ARCH-random, e.g. "
                        "./engines/blip-random)")
    p.add_argument("--runs", type=positive_int, default=10, help="timed runs per system and batch (after one warm-up)")
    p.add_argument("--tokens", type=positive_int, default=20, help="exactly this many new tokens")
    p.add_argument("--batch", type=positive_int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    add_threads(p, "threads for every system")
    p.add_argument("--settle-ms", type=non_negative_float, default=200.0,
                   help="pause before each timed call so the previous system's idle threads settle (default 200)")
    p.add_argument("--systems", nargs="+", choices=("eager", "fp32", "int8"), default=None,
                   help="subset of eager fp32 int8 (default: those the model directory holds; eager needs DIR/hf)")
    p.add_argument("--out", default=None,
                   help="JSON report, a PNG plot is written next to it (default: ./benchmarks/results/bench.json)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a Hugging Face captioner to ONNX with a full KV cache",
                       description="Export a captioner (a VisionEncoderDecoder with ViT/DeiT encoder + GPT-2 "
                                   "decoder, BLIP's BlipForConditionalGeneration or Florence2ForConditionalGeneration) "
                                   "to "
                                   "encoder.onnx (which also computes every decoder layer's cross-attention K/V) and "
                                   "decoder.onnx (one cached step, no If node), copy tokenizer.json, write "
                                   "manifest.json, and validate against transformers (tokens must be identical). "
                                   "Needs the export extra (torch, transformers, onnx).")
    p.add_argument("model", help="hub id (e.g. nlpconnect/vit-gpt2-image-captioning) or a save_pretrained directory")
    p.add_argument("--out", required=True, help="output directory (e.g. engines/vitgpt2)")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--name", help="display name recorded in the manifest")
    p.add_argument("--attention", choices=("contrib", "standard"), default=None,
                   help="contrib (default for --target onnxruntime): one fused com.microsoft.MultiHeadAttention node "
                        "per attention, the fast form for ONNX Runtime; standard: only standard ONNX ops (the "
                        "--target tensorrt default)")
    _add_target(p)
    _add_trt_version(p)
    p.add_argument("--fp16", action="store_true",
                   help="with --target tensorrt: also write FP16 graphs (LayerNorm and Softmax kept in FP32) and "
                        "record how often their generated ids equal FP32's on held-out synthetic scenes")
    p.add_argument("--skip-validation", action="store_true",
                   help="do not compare with transformers (not recommended: parity is the product)")
    p.add_argument("--int8", action="store_true", help="also write INT8 graphs (see `edgecap quantize --help`)")
    _add_int8_options(p)
    add_quiet(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("quantize", help="add INT8 graphs to an exported model, with a quality gate",
                       description="Quantize an exported directory to INT8 (per-channel symmetric INT8 weights on "
                                   "every weight MatMul; attention, LayerNorm and Softmax stay in float), then "
                                   "compare INT8 with FP32 on held-out frames; fails when captions change (exact "
                                   "match < 95%) unless --accept-quality-drop. CPU default: dynamic activations for "
                                   "both graphs (fastest with ONNX Runtime). For TensorRT: export with --attention "
                                   "standard, then --encoder-mode static --decoder-mode static gives static QDQ "
                                   "(S8S8, symmetric activations calibrated on --calib frames). Needs the export "
                                   "extra.")
    p.add_argument("model_dir", help="an exported model directory")
    _add_target(p)
    _add_int8_options(p)
    add_quiet(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("check-trt", help="lint every graph of a model directory against TensorRT's ONNX support",
                       description="Check every .onnx graph in DIR against a table of TensorRT's ONNX parser support "
                                   "(ops and domains, opset range, dtypes, constant inputs, QDQ rules); prints each "
                                   "violation with node, op and rule and exits 1 on any. Pure Python: TensorRT is "
                                   "not needed. Needs the export extra (onnx).")
    p.add_argument("model_dir", help="an exported model directory")
    _add_trt_version(p)
    p.set_defaults(func=cmd_check_trt)

    p = sub.add_parser("engines", help="TensorRT engines of a --target tensorrt export (needs TensorRT and a GPU)")
    engines = p.add_subparsers(dest="engines_command", metavar="COMMAND", required=True)
    p = engines.add_parser("build", help="build (or reuse from the cache) an engine per graph and precision",
                           description="Build TensorRT engines from DIR's graphs with the TensorRT Python API: "
                                       "optimization profiles batch 1..B and past 0..max, an engine cache keyed by "
                                       "graph hash + precision + TensorRT version + GPU SM under DIR/engines, and a "
                                       "timing cache. Not validated on this project's machines (no GPU).")
    p.add_argument("model_dir", help="a --target tensorrt export")
    p.add_argument("--precision", nargs="+", choices=("fp32", "fp16", "int8"), default=None,
                   help="which graphs (default: every precision the export holds)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="largest batch of the profile (default 8)")
    p.add_argument("--max-past", type=positive_int, default=64, help="longest past of the profile (default 64)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32,
                   help="longest prompt prefill of the profile (default 32)")
    p.set_defaults(func=cmd_engines_build)

    p = sub.add_parser("finetune", help="train or fine-tune a captioner on image+caption pairs, then export it",
                       description="Train (from a preset) or fine-tune (from a checkpoint) a VisionEncoderDecoder "
                                   "captioner. DATA: a JSONL of {\"image\": path, \"caption\": text}, a folder "
                                   "(captions.jsonl, or images with same-named .txt files), or synth:N for N "
                                   "generated scenes. Resumes from OUT/train automatically; ends with `edgecap "
                                   "export` into OUT. Needs the export extra.")
    p.add_argument("--data", required=True, help="JSONL file, folder, or synth:N")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--base", default="tiny", help="checkpoint directory, preset (tiny, demo) or preset JSON")
    p.add_argument("--epochs", type=positive_int, default=10, help="passes over the data (default 10)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per step (default 64)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_threads(p, "torch threads")
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many steps (smoke tests)")
    add_quiet(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("bench", help="latency benchmark: transformers eager vs edgecap FP32 vs INT8, alternated",
                       description="Time transformers eager generate, edgecap FP32 and edgecap INT8 side by side "
                                   "(alternating in one run) at batch 1 and 8 with exactly 20 new tokens; per-stage "
                                   "percentiles, captions/s, tokens/s, RSS; JSON + PNG. Needs the export extra.")
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)
