"""`edgecap ask`: questions about an image file or a logged event's thumbnail, and its one-line errors."""

from __future__ import annotations

import json
import sqlite3

import pytest

from cli_helpers import run_cli


@pytest.fixture(scope="module")
def demo_log(tmp_path_factory, review_clips, write_log):
    """A log written by `edgecap run` (bundled model): its path and the id of a scene event with a thumbnail."""
    db = tmp_path_factory.mktemp("ask-log") / "events.db"
    write_log(db, review_clips["gate"])
    with sqlite3.connect(db) as conn:
        (scene_id,) = conn.execute("SELECT id FROM events WHERE kind = 'scene' AND thumbnail IS NOT NULL "
                                   "ORDER BY id LIMIT 1").fetchone()
        (other_id,) = conn.execute("SELECT id FROM events WHERE thumbnail IS NULL ORDER BY id LIMIT 1").fetchone()
    return db, scene_id, other_id


@pytest.fixture(scope="module")
def synth_frame_png(tmp_path_factory):
    """A held-out synthetic scene saved as a PNG file."""
    from PIL import Image

    from edgecap import synth

    path = tmp_path_factory.mktemp("ask-image") / "frame.png"
    Image.fromarray(synth.render_scene(synth.HELD_OUT_SEED_START + 5)[0]).save(path)
    return path


def _one_line_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2 and out == ""
    assert err.startswith("edgecap: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("argv, needle", [
    (["ask", "demo", "is the gate open?"], "--image FILE, or --event ID"),
    (["ask", "demo", "q", "--image", "a.jpg", "--event", "3", "--db", "x.db"], "--image FILE, or --event ID"),
    (["ask", "demo", "q", "--event", "3"], "add --db DB"),
    (["ask", "demo", "q", "--image", "a.jpg", "--db", "x.db"], "--db goes with --event"),
    (["ask", "demo", "  ", "--image", "a.jpg"], "a question is empty"),
    (["ask", "demo", "q", "--event", "0", "--db", "x.db"], "--event"),
])
def test_bad_arguments_are_one_line(argv, needle, capsys):
    _one_line_error(*run_cli(argv, capsys), needle)


def test_a_captioner_takes_no_questions(synth_frame_png, capsys):
    _one_line_error(*run_cli(["ask", "demo", "is the gate open?", "--image", str(synth_frame_png)], capsys),
                    "model demo is a captioner and takes no questions", "SmolVLM")


def test_event_errors_name_the_event_and_what_to_do(demo_log, tmp_path, capsys):
    db, scene_id, other_id = demo_log
    _one_line_error(*run_cli(["ask", "demo", "q", "--event", "999999", "--db", str(db)], capsys),
                    "no event 999999", "edgecap events search")
    _one_line_error(*run_cli(["ask", "demo", "q", "--event", str(other_id), "--db", str(db)], capsys),
                    f"event {other_id}", "has no thumbnail")
    _one_line_error(*run_cli(["ask", "demo", "q", "--event", "1", "--db", str(tmp_path / "none.db")], capsys),
                    "not found")
    # A thumbnail path that leaves the thumbnail folder is refused like a missing one.
    copy = tmp_path / "copy.db"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
        dst.execute("UPDATE events SET thumbnail = '../../etc/passwd.jpg' WHERE id = ?", (scene_id,))
    _one_line_error(*run_cli(["ask", "demo", "q", "--event", str(scene_id), "--db", str(copy)], capsys),
                    f"thumbnail of event {scene_id} is missing")


def test_answers_about_an_image_and_an_event(smolvlm_export, demo_log, synth_frame_png, capsys):
    """The answers are the model's own answers for each question, asked alone or together, about a file or about
    an event's thumbnail from a log `edgecap run` wrote."""
    from edgecap import Captioner
    from edgecap.events import get_event, thumbnail_dir

    cap = Captioner(smolvlm_export)
    questions = ["is the gate open?", "how many people are at the door right now?"]
    alone = [cap.caption(str(synth_frame_png), prompt=q) for q in questions]

    code, out, err = run_cli(["ask", str(smolvlm_export), questions[0], "--image", str(synth_frame_png)], capsys)
    assert (code, err) == (0, "") and out == alone[0].text + "\n"

    code, out, err = run_cli(["ask", str(smolvlm_export), *questions, "--image", str(synth_frame_png), "--json"],
                             capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["question"] for r in rows] == questions
    assert [r["token_ids"] for r in rows] == [a.token_ids for a in alone]

    db, scene_id, _ = demo_log
    thumb = thumbnail_dir(db) / get_event(db, scene_id).thumbnail
    expected = cap.caption(str(thumb), prompt=questions[1])
    code, out, err = run_cli(["ask", str(smolvlm_export), questions[1], "--event", str(scene_id), "--db", str(db),
                              "--json"], capsys)
    row = json.loads(out)
    assert code == 0 and row["event_id"] == scene_id and row["token_ids"] == expected.token_ids
