"""`edgecap finetune`: end to end on a small generated dataset, resumable, deterministic, data formats."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgecap_export.finetune import TrainConfig, caption_pairs, finetune  # noqa: E402

from edgecap import Captioner  # noqa: E402
from edgecap.errors import InputError  # noqa: E402


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "checkpoint_every": 2, **kw})


@pytest.mark.slow  # a full run with export and parity validation; the resume and seed tests below are the fast ones
def test_finetune_synth_end_to_end_exports_a_loadable_model(tmp_path):
    out = finetune("synth:24", tmp_path / "run", base="tiny", cfg=_cfg(), progress=False, max_steps=3)
    m = json.loads((out / "manifest.json").read_text())
    assert m["validation"]["passed"]
    cap = Captioner(out)
    from edgecap import synth

    img, _ = synth.render_scene(synth.HELD_OUT_SEED_START)
    assert isinstance(cap.caption(img).text, str)
    info = json.loads((out / "hf" / "training.json").read_text())
    assert info["steps"] == 3


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    finetune("synth:16", out, base="tiny", cfg=_cfg(), progress=False, export=False, max_steps=2)
    assert torch.load(out / "train" / "last.pt", weights_only=False)["step"] == 2
    finetune("synth:16", out, base="tiny", cfg=_cfg(), progress=False, export=False, max_steps=4)
    assert json.loads((out / "hf" / "training.json").read_text())["steps"] == 4
    # the resumed run ends where an uninterrupted one does
    ref = tmp_path / "ref"
    finetune("synth:16", ref, base="tiny", cfg=_cfg(), progress=False, export=False, max_steps=4)
    from safetensors.numpy import load_file

    a, b = load_file(out / "hf" / "model.safetensors"), load_file(ref / "hf" / "model.safetensors")
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    from safetensors.numpy import load_file

    w = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        finetune("synth:16", tmp_path / name, base="tiny", cfg=_cfg(seed=seed), progress=False, export=False,
                 max_steps=2)
        w[name] = load_file(tmp_path / name / "hf" / "model.safetensors")
    key = next(iter(w["a"]))
    assert all(np.array_equal(w["a"][k], w["b"][k]) for k in w["a"])
    assert not np.array_equal(w["a"][key], w["c"][key])


def test_jsonl_and_folder_data(tmp_path):
    from PIL import Image

    from edgecap import synth

    rows = []
    for i in range(4):
        img, spec = synth.render_scene(i)
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(spec.caption())
        rows.append({"image": f"{i}.png", "caption": spec.caption()})
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    from_jsonl = caption_pairs(tmp_path / "data.jsonl")
    from_folder = caption_pairs(tmp_path)
    assert [c for _, c in from_jsonl] == [c for _, c in from_folder] == [r["caption"] for r in rows]
    out = finetune(str(tmp_path / "data.jsonl"), tmp_path / "run", base="tiny", cfg=_cfg(batch_size=2),
                   progress=False, export=False, max_steps=1)
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("data,fragment", [
    ("synth:abc", "integer"),
    ("synth:0", "0 < N"),
    ("/nonexistent/data.jsonl", "not found"),
])
def test_bad_data(data, fragment, tmp_path):
    with pytest.raises(InputError, match=fragment):
        finetune(data, tmp_path / "run", base="tiny", cfg=_cfg(), progress=False, export=False, max_steps=1)


def test_bad_jsonl_line_names_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"image": "a.png", "caption": "x"}\nnot json\n')
    with pytest.raises(InputError, match="d.jsonl:2"):
        caption_pairs(p)
