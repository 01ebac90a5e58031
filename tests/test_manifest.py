"""load_manifest refuses a malformed manifest with one ManifestError line naming the key (issue 11, bug 5).

Each damage below used to pass the check and fail later with AttributeError/KeyError/TypeError (a traceback in the
CLI), or, for file entries, to join a path outside the model directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgecap import demo_model_dir
from edgecap.errors import ManifestError
from edgecap.manifest import MANIFEST_FILE, load_manifest


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """A model directory holding the demo model's manifest (load_manifest reads no graph)."""
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(Path(demo_model_dir()) / MANIFEST_FILE, d / MANIFEST_FILE)
    return d


def _edit(d: Path, fn) -> None:  # noqa: ANN001
    path = d / MANIFEST_FILE
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _set(*keys_and_value):  # noqa: ANN002, ANN202
    """A damage that sets data[k1][k2]... = value."""
    *keys, value = keys_and_value

    def damage(data: dict) -> None:
        for k in keys[:-1]:
            data = data[k]
        data[keys[-1]] = value
    return damage


def _drop(*keys: str):  # noqa: ANN202
    def damage(data: dict) -> None:
        for k in keys[:-1]:
            data = data[k]
        del data[keys[-1]]
    return damage


# (case id, damage, the key the message must name)
DAMAGE = [
    ("architecture-not-object", _set("architecture", [3, 3, 64]), "architecture"),
    ("num-heads-string", _set("architecture", "num_heads", "3"), "architecture.num_heads"),
    ("head-dim-zero", _set("architecture", "head_dim", 0), "architecture.head_dim"),
    ("io-not-object", _set("io", "encoder"), "io"),
    ("io-decoder-missing", _drop("io", "decoder"), "io.decoder"),
    ("io-present-v-short", _set("io", "decoder", "present_v", ["present_v.0"]), "io.decoder.present_v"),
    ("io-pixel-values-int", _set("io", "encoder", "pixel_values", 3), "io.encoder.pixel_values"),
    ("io-logits-missing", _drop("io", "decoder", "logits"), "io.decoder.logits"),
    ("tokenizer-not-object", _set("tokenizer", "tokenizer.json"), "tokenizer"),
    ("tokenizer-file-missing", _drop("tokenizer", "file"), "tokenizer.file"),
    ("tokenizer-file-number", _set("tokenizer", "file", 7), "tokenizer.file"),
    ("image-not-object", _set("image", None), "image"),
    ("image-height-string", _set("image", "height", "128"), "image.height"),
    ("image-mean-two", _set("image", "mean", [0.5, 0.5]), "image.mean"),
    ("image-std-zero", _set("image", "std", [0.5, 0.0, 0.5]), "image.std"),
    ("image-resample-unknown", _set("image", "resample", 99), "image.resample"),
    ("image-do-resize-string", _set("image", "do_resize", "yes"), "image.do_resize"),
    ("special-tokens-not-object", _set("special_tokens", [0, 1]), "special_tokens"),
    ("start-token-missing", _drop("special_tokens", "decoder_start_token_id"), "special_tokens.decoder_start_token_id"),
    ("eos-string", _set("special_tokens", "eos_token_id", "1"), "special_tokens.eos_token_id"),
    ("generation-not-object", _set("generation", 39), "generation"),
    ("max-new-tokens-string", _set("generation", "max_new_tokens", "39"), "generation.max_new_tokens"),
    ("num-beams-bool", _set("generation", "num_beams", True), "generation.num_beams"),
    ("length-penalty-null", _set("generation", "length_penalty", None), "generation.length_penalty"),
    ("early-stopping-word", _set("generation", "early_stopping", "sometimes"), "generation.early_stopping"),
    ("graphs-empty", _set("graphs", {}), "graphs"),
    ("graphs-precision-list", _set("graphs", "fp32", ["encoder.onnx"]), "graphs.fp32"),
    ("graph-part-missing", _drop("graphs", "fp32", "decoder"), "graphs.fp32.decoder"),
    ("graph-file-missing", _drop("graphs", "fp32", "encoder", "file"), "graphs.fp32.encoder.file"),
    ("graph-inputs-not-list", _set("graphs", "fp32", "encoder", "inputs", "pixel_values"),
     "graphs.fp32.encoder.inputs"),
    ("graph-sha-number", _set("graphs", "int8", "decoder", "sha256", 12), "graphs.int8.decoder.sha256"),
    # file entries that leave the model directory
    ("graph-file-absolute", _set("graphs", "fp32", "encoder", "file", "/etc/passwd"), "graphs.fp32.encoder.file"),
    ("graph-file-drive", _set("graphs", "fp32", "decoder", "file", "C:\\models\\decoder.onnx"),
     "graphs.fp32.decoder.file"),
    ("graph-file-unc", _set("graphs", "int8", "decoder", "file", "\\\\server\\share\\decoder.onnx"),
     "graphs.int8.decoder.file"),
    ("tokenizer-file-parent", _set("tokenizer", "file", "../tokenizer.json"), "tokenizer.file"),
    ("tokenizer-file-inner-parent", _set("tokenizer", "file", "sub/../../tokenizer.json"), "tokenizer.file"),
    ("tokenizer-file-backslash-parent", _set("tokenizer", "file", "..\\tokenizer.json"), "tokenizer.file"),
]


@pytest.mark.parametrize("case,damage,key", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_malformed_manifest_is_one_error_naming_the_key(case, damage, key, model_dir):  # noqa: ANN001
    _edit(model_dir, damage)
    with pytest.raises(ManifestError) as info:
        load_manifest(model_dir)
    message = str(info.value)
    assert "\n" not in message
    assert f" {key} must be " in message, message
    assert "re-run `edgecap export`" in message


@pytest.mark.parametrize("link", ["tokenizer.json", "sub"])
def test_file_entry_symlinked_out_of_the_directory_is_refused(link, model_dir, tmp_path):  # noqa: ANN001
    """A symlinked file, or a file inside a symlinked folder, that resolves outside the model directory."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "tokenizer.json").write_text("{}")
    (model_dir / link).symlink_to(outside / link if link.endswith(".json") else outside)
    _edit(model_dir, _set("tokenizer", "file", "tokenizer.json" if link.endswith(".json") else "sub/tokenizer.json"))
    with pytest.raises(ManifestError, match="tokenizer.file must be a path that stays inside"):
        load_manifest(model_dir)


def test_symlink_inside_the_directory_and_optional_nulls_are_accepted(model_dir):  # noqa: ANN001
    """The checks refuse only what the runtime cannot use: a link within the directory and null optional values
    (the readers' defaults) still load."""
    (model_dir / "real").mkdir()
    (model_dir / "real" / "tokenizer.json").write_text("{}")
    (model_dir / "tok").symlink_to(model_dir / "real")

    def damage(data: dict) -> None:
        data["tokenizer"]["file"] = "tok/tokenizer.json"
        data["special_tokens"].update(eos_token_id=None, pad_token_id=None)
        data["generation"].update(num_beams=None, min_length=None, repetition_penalty=None)
        del data["generation"]["length_penalty"]
        data["io"]["encoder"]["pooled"] = None

    _edit(model_dir, damage)
    m = load_manifest(model_dir)
    assert m.num_layers == 3 and m.precisions == ["fp32", "int8"]


def test_cli_reports_a_malformed_manifest_in_one_line(model_dir, tmp_path):  # noqa: ANN001
    _edit(model_dir, _set("architecture", [3]))
    image = tmp_path / "frame.png"
    image.write_bytes(b"not read: the model fails first")
    proc = subprocess.run([sys.executable, "-m", "edgecap.cli", "caption", str(model_dir), str(image)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgecap: error:"), proc.stderr
    assert "architecture must be an object" in lines[0]
