"""The `edgecap` command line. User errors exit non-zero with one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

from .._version import __version__
from ..errors import DependencyError, EdgecapError, InputError

EXIT_USER_ERROR = 2


def _require_export_extra() -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import onnx  # noqa: F401
    except ImportError as exc:
        raise DependencyError(f"`{exc.name}` is not installed: the export step needs the export extra; install the "
                              "CPU build of torch first (pip install torch==2.13.0, or the CPU index elsewhere), "
                              "then pip install 'edgecap[export]'") from None


def cmd_export(args: argparse.Namespace) -> int:
    _require_export_extra()
    from edgecap_export import export_model

    from ..errors import ParityError

    try:
        out = export_model(args.model, args.out, opset=args.opset, validate=not args.skip_validation,
                           name=args.name, progress=not args.quiet, attention=args.attention)
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
                          accept_quality_drop=args.accept_quality_drop, progress=not args.quiet)
    line = (f"int8 written to {model_dir}: caption exact match vs fp32 {report['exact_match']:.1%}, "
            f"token agreement {report['token_agreement']:.1%}")
    if "attribute_accuracy" in report:
        line += f", largest attribute-accuracy drop {report['attribute_accuracy']['max_drop']:.1%}"
    print(line + (" (quality drop accepted)" if report.get("accepted_quality_drop") else ""))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    _require_export_extra()
    return _quantize(args, args.model_dir)


def _add_int8_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", default=None, help="calibration frames: a video file, an image folder or a stream URL "
                                                 "(default: generated surveillance scenes)")
    p.add_argument("--calib-frames", type=int, default=64, help="frames used to calibrate (default 64)")
    p.add_argument("--encoder-mode", choices=("static", "dynamic"), default="dynamic",
                   help="encoder quantization: dynamic (fastest on CPU, default) or calibrated static QDQ (TensorRT)")
    p.add_argument("--decoder-mode", choices=("static", "dynamic"), default="dynamic",
                   help="decoder quantization: dynamic (fastest on CPU, default) or calibrated static QDQ "
                        "(TensorRT, with an --attention standard export)")
    p.add_argument("--accept-quality-drop", action="store_true",
                   help="keep INT8 graphs that fail the quality gate (recorded in the manifest; for random-weight "
                        "benchmark models)")


def _add_quantize(sub: argparse._SubParsersAction) -> None:
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
    _add_int8_options(p)
    _add_quiet(p)
    p.set_defaults(func=cmd_quantize)


def cmd_caption(args: argparse.Namespace) -> int:
    from ..captioner import Captioner

    cap = Captioner(args.model, precision=args.precision, threads=args.threads)
    failed = 0
    for path in args.images:
        try:
            out = cap.caption(path, num_beams=args.beams, max_new_tokens=args.max_new_tokens)
        except EdgecapError as exc:
            if len(args.images) == 1:
                raise
            print(f"edgecap: error: {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps({"path": path, "text": out.text, "token_ids": out.token_ids,
                              "milliseconds": round(out.timings.get("total", 0.0), 2)}, ensure_ascii=False))
        else:
            print(f"{path}\t{out.text}")
    return 1 if failed else 0


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="graph precision (default fp32; int8 needs `edgecap quantize`)")


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a Hugging Face captioner to ONNX with a full KV cache",
                       description="Export a VisionEncoderDecoder captioner (ViT/DeiT encoder + GPT-2 decoder) to "
                                   "encoder.onnx (which also computes every decoder layer's cross-attention K/V) and "
                                   "decoder.onnx (one cached step, no If node), copy tokenizer.json, write "
                                   "manifest.json, and validate against transformers (tokens must be identical). "
                                   "Needs the export extra (torch, transformers, onnx).")
    p.add_argument("model", help="hub id (e.g. nlpconnect/vit-gpt2-image-captioning) or a save_pretrained directory")
    p.add_argument("--out", required=True, help="output directory (e.g. engines/vitgpt2)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--name", help="display name recorded in the manifest")
    p.add_argument("--attention", choices=("contrib", "standard"), default="contrib",
                   help="contrib (default): one fused com.microsoft.MultiHeadAttention node per attention, the fast "
                        "form for ONNX Runtime; standard: only standard ONNX ops, for TensorRT")
    p.add_argument("--skip-validation", action="store_true",
                   help="do not compare with transformers (not recommended: parity is the product)")
    p.add_argument("--int8", action="store_true", help="also write INT8 graphs (see `edgecap quantize --help`)")
    _add_int8_options(p)
    _add_quiet(p)
    p.set_defaults(func=cmd_export)


def _add_caption(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="caption image files with an exported model",
                       description="Caption image files with an exported model directory; one line per image "
                                   "(path, tab, caption) or, with --json, one JSON object per line.")
    p.add_argument("model", help="exported model directory, or 'demo' for the bundled model")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--beams", type=int, default=None, help="beam count (default: the model's generation config)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="token budget (default: the model's)")
    _add_precision(p)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    p.add_argument("--json", action="store_true", help="print JSON lines: path, text, token_ids, milliseconds")
    p.set_defaults(func=cmd_caption)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import format_ts, run_demo

    print(f"edgecap demo: rendering a {args.duration:.0f} s synthetic camera clip, sampling a frame every "
          f"{args.interval:g} s, captioning changed scenes with the "
          f"{'bundled' if args.model == 'demo' else args.model} model ({args.precision}) ...", flush=True)
    res = run_demo(args.out, model=args.model, duration_s=args.duration, interval_s=args.interval,
                   precision=args.precision)
    c = res.counters
    print(f"\nscene events (✓ = states every attribute of the generated scene; {res.truth_scenes} scenes in the "
          "clip)")
    for seg in res.segments:
        mark = "✓" if seg.correct else "✗"
        line = f"  {format_ts(seg.start_s)}-{format_ts(seg.end_s)}  {mark} {seg.text}"
        print(line if seg.correct else f"{line}\n{'':21}truth: {seg.truth}")
    correct = sum(s.correct for s in res.segments)
    print(f"\n{correct}/{len(res.segments)} scene events correct; {c.get('sampled', 0)} frames sampled, "
          f"{c.get('gated_out', 0)} skipped as unchanged, {c.get('captioned', 0)} captioned at "
          f"{res.ms_per_caption:.1f} ms each on this CPU")
    from ..synth import parse_caption

    objects = [o for seg in res.segments for o in parse_caption(seg.text).objects if o.kind and o.colour]
    query = f"{objects[0].colour} {objects[0].kind}" if objects else "car"
    print(f"outputs: {res.clip} (clip), {res.db} (event database, thumbnails/ beside it), {res.jsonl}, "
          f"{res.timeline_txt}")
    print(f'search it: edgecap events search "{query}" --db {res.db}')
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..captioner import Captioner
    from ..evaluation import evaluate_synth

    cap = Captioner(args.model, precision=args.precision)
    res = evaluate_synth(cap, scenes=args.scenes, start_seed=args.start_seed, progress=not args.quiet)
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != "captions"}))
        return 0
    print(f"held-out scenes: {res['scenes']} (seeds {res['start_seed']}..{res['start_seed'] + res['scenes'] - 1})")
    print("| attribute | accuracy |")
    print("|---|---|")
    for name, acc in res["accuracy"].items():
        print(f"| {name} | {100 * acc:.1f}% |")
    print(f"| caption equals the canonical reference | {100 * res['exact_reference']:.1f}% |")
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


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="caption a generated camera clip with the bundled model (works offline)",
                       description="Render a ~60 s synthetic surveillance clip with scene changes and objects "
                                   "entering and leaving, caption it with the bundled demo model, print the "
                                   "timeline of captions and write the outputs to --out.")
    p.add_argument("--out", default="edgecap-demo", help="output directory (default: ./edgecap-demo)")
    p.add_argument("--model", default="demo", help="model directory (default: the bundled demo model)")
    p.add_argument("--duration", type=float, default=60.0, help="clip length in seconds (default 60)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between captioned frames (default 1)")
    _add_precision(p)
    p.set_defaults(func=cmd_demo)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="attribute accuracy on held-out synthetic scenes",
                       description="Caption held-out synthetic scenes (seeds >= 10**9, never trained on) and "
                                   "report, per attribute (kind, colour, count, position, background, time of "
                                   "day), the share of captions that state it correctly.")
    p.add_argument("model", nargs="?", default="demo", help="model directory (default: the bundled model)")
    p.add_argument("--scenes", type=int, default=500, help="number of scenes (default 500)")
    p.add_argument("--start-seed", type=int, default=10**9, help="first held-out seed (default 10**9)")
    _add_precision(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_quiet(p)
    p.set_defaults(func=cmd_evaluate)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from edgecap_export.bench import add_arguments

    p = sub.add_parser("bench", help="latency benchmark: transformers eager vs edgecap FP32 vs INT8, alternated",
                       description="Time transformers eager generate, edgecap FP32 and edgecap INT8 side by side "
                                   "(alternating in one run) at batch 1 and 8 with exactly 20 new tokens; per-stage "
                                   "percentiles, captions/s, tokens/s, RSS; JSON + PNG. Needs the export extra.")
    add_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    _require_export_extra()
    from edgecap_export.bench import run

    return run(args)


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="train or fine-tune a captioner on image+caption pairs, then export it",
                       description="Train (from a preset) or fine-tune (from a checkpoint) a VisionEncoderDecoder "
                                   "captioner. DATA: a JSONL of {\"image\": path, \"caption\": text}, a folder "
                                   "(captions.jsonl, or images with same-named .txt files), or synth:N for N "
                                   "generated scenes. Resumes from OUT/train automatically; ends with `edgecap "
                                   "export` into OUT. Needs the export extra.")
    p.add_argument("--data", required=True, help="JSONL file, folder, or synth:N")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--base", default="tiny", help="checkpoint directory, preset (tiny, demo) or preset JSON")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")
    _add_quiet(p)
    p.set_defaults(func=cmd_finetune)


def cmd_run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from ..captioner import Captioner
    from ..runtime.config import camera_from_values, load_cameras
    from ..demo import format_ts
    from ..events import EventStore
    from ..runtime import RunOptions, Runtime, default_camera_name
    from ..sources import classify_source, mask_url

    cameras = load_cameras(args.config) if args.config else []
    taken = {c.name for c in cameras}
    values = {"interval": args.interval, "realtime": args.realtime}
    if args.max_interval is not None:
        values["max_interval"] = args.max_interval
    for src in args.sources:
        cameras.append(camera_from_values(default_camera_name(src, taken), src, values, mask_url(src)))
    if not cameras:
        raise InputError("no sources: pass video files, URLs, webcams or image folders, or --config cameras.toml")
    for cam in cameras:
        classify_source(cam.url)  # unsupported schemes and refused protocols fail before the model loads
    cap = Captioner(args.model, precision=args.precision, threads=args.threads)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def show(ev) -> None:
        if ev.source_start_s is not None and ev.source_end_s is not None:
            span = f"{format_ts(ev.source_start_s)}-{format_ts(ev.source_end_s)}"
        else:
            span = f"{ev.start:%H:%M:%S}-{ev.end:%H:%M:%S}Z" if ev.end else f"{ev.start:%H:%M:%S}Z"
        print(f"[{ev.camera}] {span}  {ev.caption}  ({ev.observations} obs)", flush=True)

    with EventStore(args.db, jsonl=args.jsonl) as store:
        rt = Runtime(cap, cameras, store, options=RunOptions(max_batch=args.max_batch), on_scene=show)
        code = rt.run(stop)
    for name, c in rt.stats.per_camera.items():
        print(f"[{name}] sampled {c['sampled']}, gated out {c['gated_out']}, captioned {c['captioned']}, "
              f"dropped {c['dropped']}, decode errors {c['decode_errors']}, reconnects {c['reconnects']}")
    print(f"{rt.stats.scenes} scene events, {rt.stats.batches} batches (largest {rt.stats.max_batch_seen}); "
          f"events in {args.db}" + (f" and {args.jsonl}" if args.jsonl else ""))
    return code


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="caption camera streams and files into a searchable event log",
                       description="Read every SOURCE (video file, rtsp://, http(s):// MJPEG/HLS, a webcam "
                                   "/dev/videoN or index, or an image folder), sample a frame every --interval "
                                   "seconds, skip frames where nothing changed, caption the rest in batches "
                                   "across cameras, and write scene events (and source up/down events) to an "
                                   "SQLite database with full-text search. Stops by itself when every source is a "
                                   "file and all are done; Ctrl-C or SIGTERM closes open scenes and exits 0. "
                                   "Review with `edgecap events search`.")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="video files, stream URLs, webcams, image folders")
    p.add_argument("--model", default="demo", help="exported model directory (default: the bundled demo model)")
    p.add_argument("--config", help="cameras.toml with named cameras (credentials from environment variables)")
    p.add_argument("--db", default="events.sqlite", help="event database (default: ./events.sqlite)")
    p.add_argument("--jsonl", help="also append every event to this JSONL file")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between sampled frames (default 1)")
    p.add_argument("--max-interval", type=float, default=None,
                   help="re-caption an unchanged scene at least this often (default 30 s)")
    p.add_argument("--realtime", action="store_true", help="pace files like live cameras (drop late frames)")
    _add_precision(p)
    p.add_argument("--max-batch", type=int, default=8, help="most frames per captioner batch (default 8)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    p.set_defaults(func=cmd_run)


def _add_events(sub: argparse._SubParsersAction) -> None:
    from .events import register

    register(sub)


REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_demo, _add_run, _add_events, _add_caption, _add_export, _add_quantize, _add_finetune, _add_evaluate,
    _add_bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecap",
        description="Optimized edge and real-time video captioning: export Hugging Face captioners to KV-cached "
                    "ONNX, caption images and camera streams, and search the event log.",
        epilog="Start with `edgecap demo` (bundled model, generated clip). `edgecap COMMAND --help` for details.")
    parser.add_argument("--version", action="version", version=f"edgecap {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or 0)
    except EdgecapError as exc:
        print(f"edgecap: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("edgecap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
