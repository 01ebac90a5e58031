"""`edgecap caption`, `edgecap demo` and `edgecap evaluate`: the bundled model and image files."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import EdgecapError
from .args import add_precision, add_quiet, add_threads, non_negative_int, positive_float, positive_int


def cmd_caption(args: argparse.Namespace) -> int:
    from ..captioner import Captioner

    cap = Captioner(args.model, precision=args.precision, threads=args.threads)
    # what holds for every image fails once, in one line, not once per image
    cap.check_prompt(args.prompt)
    cap.options(num_beams=args.beams, max_new_tokens=args.max_new_tokens)
    failed = 0
    for path in args.images:
        try:
            out = cap.caption_batch([path], args.prompt, num_beams=args.beams,
                                    max_new_tokens=args.max_new_tokens)[0]
        except EdgecapError as exc:
            if len(args.images) == 1:
                raise
            print(f"edgecap: error: {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            row = {"path": path, "text": out.text, "token_ids": out.token_ids,
                   "milliseconds": round(out.timings.get("total", 0.0), 2)}
            if out.prompt is not None:
                row["prompt"] = out.prompt
            if out.objects is not None:
                row["objects"] = [{"label": o.label, "box": list(o.box)} for o in out.objects]
            print(json.dumps(row, ensure_ascii=False))
        else:
            print(f"{path}\t{out.text}")
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ..synth import parse_caption
    from ..units import format_ts

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


def register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="caption a generated camera clip with the bundled model (works offline)",
                       description="Render a ~60 s synthetic surveillance clip with scene changes and objects "
                                   "entering and leaving, caption it with the bundled demo model, print the "
                                   "timeline of captions and write the outputs to --out.")
    p.add_argument("--out", default="edgecap-demo", help="output directory (default: ./edgecap-demo)")
    p.add_argument("--model", default="demo", help="model directory (default: the bundled demo model)")
    p.add_argument("--duration", type=positive_float, default=60.0, help="clip length in seconds (default 60)")
    p.add_argument("--interval", type=positive_float, default=1.0,
                   help="seconds between captioned frames (default 1)")
    add_precision(p)
    p.set_defaults(func=cmd_demo)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="caption image files with an exported model",
                       description="Caption image files with an exported model directory; one line per image "
                                   "(path, tab, caption) or, with --json, one JSON object per line.")
    p.add_argument("model", help="exported model directory, or 'demo' for the bundled model")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--beams", type=positive_int, default=None,
                   help="beam count (default: the model's generation config)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="token budget (default: the model's)")
    p.add_argument("--prompt", default=None,
                   help='prompt for models that take one: BLIP\'s caption start ("a photography of"), Florence-2\'s '
                        'task token ("<DETAILED_CAPTION>", "<OD>", "<CAPTION_TO_PHRASE_GROUNDING>a red car") '
                        "(default: an unconditional caption; Florence-2's <CAPTION>)")
    add_precision(p)
    add_threads(p)
    p.add_argument("--json", action="store_true", help="print JSON lines: path, text, token_ids, milliseconds (and prompt, "
                   "objects with label and pixel box for detection tasks)")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("evaluate", help="attribute accuracy on held-out synthetic scenes",
                       description="Caption held-out synthetic scenes (seeds >= 10**9, never trained on) and "
                                   "report, per attribute (kind, colour, count, position, background, time of "
                                   "day), the share of captions that state it correctly.")
    p.add_argument("model", nargs="?", default="demo", help="model directory (default: the bundled model)")
    p.add_argument("--scenes", type=positive_int, default=500, help="number of scenes (default 500)")
    p.add_argument("--start-seed", type=non_negative_int, default=10**9,
                   help="first held-out seed (default 10**9)")
    add_precision(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_quiet(p)
    p.set_defaults(func=cmd_evaluate)
