"""The command line: every numeric flag checked with one line, sources checked before the model loads, and a
closed stdout ends `edgecap run` quietly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgecap.cli import main


# bug 1: numeric flags were not validated (`run --max-batch 0` waited forever for a batch that could never fill)
@pytest.mark.parametrize("argv,fragment", [
    (["run", "a.mp4", "--max-batch", "0"], "--max-batch: expected an integer >= 1, got '0'"),
    (["run", "a.mp4", "--max-batch", "-2"], "--max-batch: expected an integer >= 1"),
    (["run", "a.mp4", "--max-batch", "two"], "--max-batch: expected an integer >= 1, got 'two'"),
    (["run", "a.mp4", "--interval", "0"], "--interval: expected a number > 0"),
    (["run", "a.mp4", "--interval", "nan"], "--interval: expected a number > 0"),
    (["run", "a.mp4", "--max-interval", "-1"], "--max-interval: expected a number > 0"),
    (["run", "a.mp4", "--threads", "0"], "--threads: expected an integer >= 1"),
    (["caption", "demo", "x.png", "--beams", "0"], "--beams: expected an integer >= 1"),
    (["caption", "demo", "x.png", "--max-new-tokens", "-5"], "--max-new-tokens: expected an integer >= 1"),
    (["demo", "--duration", "-60"], "--duration: expected a number > 0"),
    (["evaluate", "--scenes", "0"], "--scenes: expected an integer >= 1"),
    (["export", "m", "--out", "o", "--opset", "0"], "--opset: expected an integer >= 1"),
    (["quantize", "m", "--calib-frames", "0"], "--calib-frames: expected an integer >= 1"),
    (["finetune", "--data", "synth:4", "--out", "o", "--lr", "0"], "--lr: expected a number > 0"),
    (["bench", "--model", "m", "--runs", "0"], "--runs: expected an integer >= 1"),
    (["events", "search", "--limit", "0"], "--limit: expected an integer >= 1"),
    (["events", "tail", "--last", "-1"], "--last: expected an integer >= 0"),
    (["events", "tail", "--poll", "0"], "--poll: expected a number > 0"),
    (["run", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_flags_fail_with_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgecap: error: ") and fragment in err, err


def test_run_checks_sources_before_it_loads_the_model(tmp_path, capsys):
    # bug 7: `edgecap run /missing.mp4` loaded the model first; with a missing model too, the source is named
    assert main(["run", str(tmp_path / "missing.mp4"), "--model", str(tmp_path / "no-model"),
                 "--db", str(tmp_path / "e.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "video file not found" in err and "missing.mp4" in err and "model" not in err.split("not found")[1]
    assert not (tmp_path / "e.sqlite").exists()


def test_a_config_typo_fails_before_the_model_loads(tmp_path, capsys):
    cfg = tmp_path / "cameras.toml"
    cfg.write_text('[[camera]]\nname = "door"\nurl = "door.mp4"\nrealtime = "false"\n')
    assert main(["run", "--config", str(cfg), "--model", str(tmp_path / "no-model")]) == 2
    assert "realtime must be true or false" in capsys.readouterr().err


@pytest.mark.slow
def test_run_into_a_closed_pipe_ends_quietly(tmp_path):
    # bug 3: `edgecap run ... | head` ended in a BrokenPipe traceback
    from edgecap import synth

    clip = tmp_path / "clip.mp4"
    synth.render_clip(clip, seed=synth.HELD_OUT_SEED_START + 3, duration_s=30)
    proc = subprocess.Popen([sys.executable, "-m", "edgecap", "run", str(clip), "--db", str(tmp_path / "e.sqlite")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # the first closed scene, then the reader goes away (as `head -1` does)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert first.startswith("[clip] ") and "Traceback" not in err and "BrokenPipe" not in err


def test_run_with_retain_prunes_old_events_through_the_store(tmp_path):
    from datetime import datetime, timedelta, timezone

    from edgecap import synth
    from edgecap.events import Event, EventStore, search

    db = tmp_path / "e.sqlite"
    old = datetime.now(timezone.utc) - timedelta(days=60)
    with EventStore(db) as store:
        for i in range(5):
            store.put(Event(uid=f"old-{i}", kind="scene", camera="gone", start=old, end=old + timedelta(seconds=i),
                            caption=f"an old scene {i}"))
    clip = tmp_path / "clip.mp4"
    synth.render_clip(clip, seed=synth.HELD_OUT_SEED_START + 5, duration_s=4)
    assert main(["run", str(clip), "--db", str(db), "--retain", "30d"]) == 0
    events = search(db, limit=1000)
    # the row written last always stays (it carries the log's write counter, see edgecap.events.prune): when the
    # first prune runs before the runtime's first write, that row is old-4
    left = [e.uid for e in events if e.camera == "gone"]
    assert left in ([], ["old-4"])
    [pruned] = [e for e in events if e.kind == "prune"]
    assert pruned.details["events_deleted"] == 5 - len(left)
    assert any(e.kind == "scene" and e.camera == "clip" for e in events)


def test_a_bad_retain_age_fails_with_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["run", "a.mp4", "--retain", "soon"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--retain" in err
