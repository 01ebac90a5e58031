"""`edgecap ask`: questions about an image file or about a logged event's thumbnail, for models that answer them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError
from .args import add_precision, add_threads, positive_int


def _event_image(db: str, event_id: int) -> Path:
    """The thumbnail file of event ``event_id`` in database ``db``; InputError (one line) when there is none."""
    from ..events import get_event, resolve_thumbnail, thumbnail_dir

    ev = get_event(db, event_id)
    if ev is None:
        raise InputError(f"no event {event_id} in {db}; list events with `edgecap events search --db {db}`")
    if not ev.thumbnail:
        raise InputError(f"event {event_id} ({ev.kind}) has no thumbnail to ask about; scene events of "
                         "`edgecap run` carry one")
    path = resolve_thumbnail(thumbnail_dir(db).resolve(), ev.thumbnail)
    if path is None:
        raise InputError(f"the thumbnail of event {event_id} is missing from {thumbnail_dir(db)} (pruned or moved)")
    return path


def cmd_ask(args: argparse.Namespace) -> int:
    from ..captioner import Captioner

    if (args.image is None) == (args.event is None):
        raise InputError("give the image to ask about: --image FILE, or --event ID with --db DB")
    if args.event is not None and args.db is None:
        raise InputError("--event needs the event database: add --db DB (the one `edgecap run --db` wrote)")
    if args.db is not None and args.event is None:
        raise InputError("--db goes with --event ID; to ask about a file, use --image FILE alone")
    questions = [q.strip() for q in args.questions]
    if not all(questions):
        raise InputError("a question is empty; give the question as text, such as \"is the gate open?\"")
    image = Path(args.image) if args.image is not None else _event_image(args.db, args.event)
    cap = Captioner(args.model, precision=args.precision, threads=args.threads)
    if not cap.accepts_questions:
        raise InputError(f"model {args.model} is a captioner and takes no questions; ask needs a vision-language "
                         "model such as an exported SmolVLM (`edgecap caption` captions with this one)")
    answers = cap.caption(str(image), questions, num_beams=args.beams, max_new_tokens=args.max_new_tokens)
    for question, answer in zip(questions, answers):
        if args.json:
            row = {"question": question, "answer": answer.text, "token_ids": answer.token_ids,
                   "image": str(image), "milliseconds": round(answer.timings.get("total", 0.0), 2)}
            if args.event is not None:
                row["event_id"] = args.event
            print(json.dumps(row, ensure_ascii=False))
        elif len(questions) == 1:
            print(answer.text)
        else:
            print(f"{question}\t{answer.text}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask a vision-language model questions about an image or a logged event",
                       description="Answer questions about one image: a file (--image) or the thumbnail of an "
                                   "event in the log written by `edgecap run` (--event ID --db DB). Several "
                                   "questions are answered in one batch. Needs a model that takes questions "
                                   "(an exported SmolVLM); captioners such as the demo model do not.",
                       epilog='example: edgecap ask engines/smolvlm "is the gate open?" "how many people are '
                              'at the door?" --event 42 --db events.db')
    p.add_argument("model", help="exported model directory that answers questions")
    p.add_argument("questions", nargs="+", metavar="QUESTION", help="question text (quote it)")
    p.add_argument("--image", default=None, help="image file to ask about")
    p.add_argument("--event", type=positive_int, default=None, help="event id whose thumbnail to ask about")
    p.add_argument("--db", default=None, help="event database of --event")
    p.add_argument("--beams", type=positive_int, default=None,
                   help="beam count (default: the model's generation config)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="token budget (default: the model's)")
    add_precision(p)
    add_threads(p)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per question: question, answer, token_ids, image, milliseconds "
                        "(and event_id)")
    p.set_defaults(func=cmd_ask)
