"""Bad input fails with a typed error in the library and one line, exit != 0, no traceback in the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgecap import Captioner
from edgecap.errors import InputError, ManifestError, ModelError, UnsupportedModelError


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecap.cli", *args], capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgecap: error:") and fragment in lines[0], lines[0]


@pytest.fixture()
def model_copy(tiny_export, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_export, dst)
    return dst


def _edit_manifest(d, fn):
    p = d / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


# (case id, how to damage the copy, expected exception, message fragment)
DAMAGE = [
    ("no-manifest", lambda d: (d / "manifest.json").unlink(), ManifestError, "no manifest.json"),
    ("not-json", lambda d: (d / "manifest.json").write_text("{oops"), ManifestError, "not valid JSON"),
    ("json-list", lambda d: (d / "manifest.json").write_text("[]"), ManifestError, "JSON object"),
    ("other-schema", lambda d: _edit_manifest(d, lambda m: m.update(schema_version=99)), ManifestError,
     "schema_version 99"),
    ("missing-key", lambda d: _edit_manifest(d, lambda m: m.pop("io")), ManifestError, r"lacks \['io'\]"),
    ("wrong-layer-count", lambda d: _edit_manifest(d, lambda m: m["architecture"].update(num_layers=7)),
     ManifestError, "one per layer"),
    ("renamed-input", lambda d: _edit_manifest(
        d, lambda m: m["graphs"]["fp32"]["decoder"]["inputs"][0].update(name="ids")), ManifestError, "disagree"),
    ("missing-graph", lambda d: (d / "decoder.onnx").unlink(), ModelError, "decoder graph missing"),
    ("corrupt-graph", lambda d: (d / "encoder.onnx").write_bytes(b"garbage"), ModelError, "cannot load"),
    ("missing-tokenizer", lambda d: (d / "tokenizer.json").unlink(), ModelError, "tokenizer missing"),
    ("bad-image-section", lambda d: _edit_manifest(d, lambda m: m["image"].pop("mean")), ManifestError, "malformed"),
]


@pytest.mark.parametrize("case,damage,exc,fragment", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_model_dir(case, damage, exc, fragment, model_copy):
    damage(model_copy)
    with pytest.raises(exc, match=fragment):
        Captioner(model_copy)


def test_missing_directory(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        Captioner(tmp_path / "nope")


def test_int8_not_exported_yet(tiny_export):
    with pytest.raises(ModelError, match="precision 'int8' is not exported"):
        Captioner(tiny_export, precision="int8")
    with pytest.raises(InputError, match="unknown precision"):
        Captioner(tiny_export, precision="fp8")


@pytest.mark.parametrize("pixels,fragment", [
    (np.zeros((0, 3, 32, 32), np.float32), "empty batch"),
    (np.zeros((1, 3, 16, 16), np.float32), "shape"),
    (np.zeros((3, 32, 32), np.float32), "shape"),
    ([[0.0]], "numpy array"),
])
def test_bad_pixel_values(pixels, fragment, tiny_export):
    with pytest.raises(InputError, match=fragment):
        Captioner(tiny_export).generate(pixels)


@pytest.mark.parametrize("opts,fragment", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(num_beams=0), "num_beams"),
    (dict(temperature=0.7), "unknown generation option"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    # wrong types were a TypeError deep in the search, a forced id past the vocabulary an IndexError, and a
    # negative one silently forced the token numpy's negative indexing picked
    (dict(num_beams="3"), "num_beams must be a whole number >= 1, got '3'"),
    (dict(num_beams=3.0), "num_beams must be a whole number"),
    (dict(no_repeat_ngram_size=2.5), "no_repeat_ngram_size must be a whole number >= 0"),
    (dict(max_new_tokens=5.5), "max_new_tokens must be a whole number >= 1"),
    (dict(repetition_penalty="1.2"), "repetition_penalty must be a number"),
    (dict(length_penalty=None, repetition_penalty=True), "repetition_penalty must be a number"),
    (dict(eos_token_id="3"), "eos_token_id must be a token id or a list of them"),
    (dict(eos_token_id=[3, -1]), "eos_token_id must be a whole number >= 0"),
    (dict(forced_eos_token_id=-5), "forced_eos_token_id must be a whole number >= 0, got -5"),
    (dict(forced_bos_token_id=10**6), "forced_bos_token_id 1000000 is not a token of this model"),
])
def test_bad_generation_options(opts, fragment, tiny_export):
    cap = Captioner(tiny_export)
    with pytest.raises(InputError, match=fragment) as err:
        cap.generate(cap.preprocess([np.zeros((8, 8, 3), np.uint8)]), **opts)
    assert "\n" not in str(err.value)


def test_a_pil_image_whose_mode_cannot_become_rgb_is_one_input_error(tiny_export):
    from PIL import Image

    odd = Image.new("La", (8, 8))  # Pillow cannot convert "La" (premultiplied grey + alpha) to RGB
    with pytest.raises(InputError, match="cannot convert a PIL image of mode 'La' to RGB"):
        Captioner(tiny_export).preprocess([odd])


def test_caption_single_and_list(tiny_export):
    cap = Captioner(tiny_export)
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    one = cap.caption(img, max_new_tokens=5)
    many = cap.caption([img, img], max_new_tokens=5)
    assert isinstance(many, list) and len(many) == 2
    assert one.token_ids == many[0].token_ids == many[1].token_ids and one.text == many[0].text
    assert {"preprocess", "encoder", "decoder_first", "total"} <= set(one.timings)


def test_unsupported_architecture(tmp_path):
    transformers = pytest.importorskip("transformers")
    from edgecap_export import export_model

    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bert")
    with pytest.raises(UnsupportedModelError, match="unsupported model type 'bert'.*vit.*gpt2"):
        export_model(str(tmp_path / "bert"), tmp_path / "out", progress=False)


def test_unsupported_decoder_in_vision_encoder_decoder(tmp_path):
    transformers = pytest.importorskip("transformers")
    from edgecap_export import export_model

    enc = transformers.ViTConfig(image_size=32, patch_size=8, num_hidden_layers=1, hidden_size=16,
                                 num_attention_heads=2, intermediate_size=32)
    dec = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, is_decoder=True, add_cross_attention=True)
    cfg = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    transformers.VisionEncoderDecoderModel(config=cfg).save_pretrained(tmp_path / "vitbert")
    with pytest.raises(UnsupportedModelError, match="vit encoder \\+ bert decoder"):
        export_model(str(tmp_path / "vitbert"), tmp_path / "out", progress=False)


# -- CLI --------------------------------------------------------------------------------------------------------
def test_cli_caption_json(tiny_export, tmp_path):
    from PIL import Image

    paths = []
    for i in range(2):
        p = tmp_path / f"f{i}.png"
        Image.fromarray(np.full((30, 30, 3), 40 * i, np.uint8)).save(p)
        paths.append(str(p))
    proc = run_cli("caption", str(tiny_export), *paths, "--json", "--max-new-tokens", "6", "--beams", "2")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in rows] == paths
    assert all(set(r) == {"path", "text", "token_ids", "milliseconds"} for r in rows)
    assert Captioner(tiny_export).caption(paths[1], num_beams=2, max_new_tokens=6).token_ids == rows[1]["token_ids"]


@pytest.mark.parametrize("args,fragment", [
    (("caption", "/nonexistent/model", "x.png"), "model directory not found"),
    (("caption", "{model}", "/nonexistent.png"), "image file not found"),
    (("caption", "{model}", "{garbage}"), "cannot decode"),
    (("caption", "{broken}", "x.png"), "not valid JSON"),
    (("caption", "{garbage}", "x.png"), "garbage.png is a file, not a model directory;"),
    (("quantize", "{garbage}"), "garbage.png is a file, not a model directory;"),
    (("export", "/nonexistent/ckpt", "--out", "{tmp}/o"), "model directory not found"),
    (("export", "{model}/manifest.json", "--out", "{tmp}/o"), "manifest.json is a file, not a model directory;"),
    (("export", "{bert}", "--out", "{tmp}/o"), "unsupported model type 'bert'"),
    (("export", "https://me:s3cret@example.com/m", "--out", "{tmp}/o"), "not found: https://me:***@example.com/m;"),
    (("export", "{model}", "--out", "{tmp}/garbage.png"), "garbage.png: it is a file, not a directory"),
    (("export", "{model}", "--out", "{tmp}/garbage.png/o"), "garbage.png is a file, not a directory"),
    (("run", "/nonexistent/clip.mp4", "--model", "{model}", "--db", "{tmp}/e.db"), "not found"),
    (("run", "concat:a.mp4|b.mp4", "--model", "{model}", "--db", "{tmp}/e.db"), "refused"),
    (("run", "ftp://host/x.mp4", "--model", "{model}", "--db", "{tmp}/e.db"), "scheme"),
    (("run", "--model", "{model}", "--db", "{tmp}/e.db"), "no sources"),
    (("run", "--config", "{tmp}/nope.toml", "--model", "{model}"), "camera config not found"),
    (("events", "search", "car", "--db", "{tmp}/missing.sqlite"), "not found"),
])
def test_cli_user_errors_are_one_line(args, fragment, tiny_export, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"nope")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_export, broken)
    (broken / "manifest.json").write_text("{")
    bert = tmp_path / "bert"
    if "{bert}" in args:
        transformers = pytest.importorskip("transformers")
        transformers.BertModel(transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=8)).save_pretrained(bert)
    subs = {"{model}": str(tiny_export), "{garbage}": str(garbage), "{broken}": str(broken), "{bert}": str(bert),
            "{tmp}": str(tmp_path)}
    argv = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        argv.append(a)
    assert_one_line_error(run_cli(*argv), fragment)


def test_export_takes_a_hub_id_through_the_hub_cache(checkpoint_factory, tmp_path):
    """"owner/name" is a hub id, not a relative path (it was refused as "model directory not found" without being
    looked up). Offline, from a Hugging Face cache holding it: the export loads it, names it by its id and records
    the cached weights' checksum; an id neither here nor in the cache is one line."""
    from types import SimpleNamespace

    from edgecap_export.checkpoint import source_info

    ckpt = checkpoint_factory("blip")
    hub = tmp_path / "hf-home" / "hub" / "models--acme--tiny-blip"
    shutil.copytree(ckpt, hub / "snapshots" / ("0" * 40))
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}

    def export(model: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edgecap.cli", "export", model, "--out", str(tmp_path / "out"),
                               "-q", "--skip-validation"], capture_output=True, text=True, timeout=300, env=env,
                              cwd=tmp_path)

    proc = export("acme/tiny-blip")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["name"] == "tiny-blip" and manifest["source"]["model"] == "acme/tiny-blip"
    assert manifest["source"]["revision"] == "0" * 40  # the snapshot's commit (it was null under transformers 5)
    local = source_info(str(ckpt), SimpleNamespace(config=None))
    assert manifest["source"]["weights_sha256"] == local["weights_sha256"]
    assert_one_line_error(export("acme/not-cached"), "cannot load 'acme/not-cached' (no such directory here, and "
                                                     "from the hub)")


@pytest.mark.parametrize("sub", ["", "export", "caption", "run", "demo", "quantize", "finetune", "evaluate",
                                 "events"])
def test_help_is_useful(sub):
    proc = run_cli(*([sub] if sub else []), "--help")
    assert proc.returncode == 0
    assert "usage: edgecap" in proc.stdout and len(proc.stdout.splitlines()) > 8


@pytest.mark.parametrize("arch", ["blip", "florence2"])
def test_export_refuses_a_checkpoint_saved_without_its_tokenizer_before_touching_out(arch, checkpoint_factory,
                                                                                     tiny_export, tmp_path):
    """A BLIP or Florence-2 checkpoint saved without tokenizer.json: transformers 5 builds an empty tokenizer (its
    special tokens only) from the config, the export passed validation (the ids agree) and every caption decoded
    to "". Found by a stress round. Now one line, before an earlier export in --out loses anything."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint_factory(arch), ckpt)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (ckpt / name).unlink()
    out = tmp_path / "out"
    shutil.copytree(tiny_export, out)
    for part in ("encoder", "decoder"):  # stand-ins for an earlier quantize's graphs
        shutil.copy(out / f"{part}.onnx", out / f"{part}.int8.onnx")
    before = sorted(p.name for p in out.iterdir())
    assert_one_line_error(run_cli("export", str(ckpt), "--out", str(out), "-q"), "has no usable")
    assert sorted(p.name for p in out.iterdir()) == before
    Captioner(out)  # the earlier export still loads


def test_a_mistyped_path_under_a_local_directory_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    """"engines/blip" where ./engines exists (a typo of a local export source) was taken as a hub id: without
    HF_HUB_OFFLINE, half a minute of network retries and a dozen warning lines before the error. Found by a stress
    round. It is a missing directory; "owner/name" with no ./owner stays a hub id."""
    from edgecap_export.checkpoint import is_hub_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "engines").mkdir()
    assert not is_hub_id("engines/blip") and is_hub_id("acme/blip") and is_hub_id("blip")
    proc = subprocess.run([sys.executable, "-m", "edgecap.cli", "export", "engines/blip", "--out", "out", "-q"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc, "model directory not found: engines/blip")
