"""The code base's seams: public names only across modules, and the export step's model-family registry."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgecap.errors import UnsupportedModelError

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"edgecap": ROOT / "src" / "edgecap", "edgecap_export": ROOT / "export" / "edgecap_export"}
SOURCES = sorted(p for pkg in PACKAGES.values() for p in pkg.rglob("*.py"))

def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_project(module: str | None, level: int) -> bool:
    return level > 0 or (module or "").split(".")[0] in PACKAGES


def private_uses(source: str) -> list[str]:
    """Private names this source takes from another project module: ``from m import _x`` or ``m._x`` on a module
    imported from the project. Private modules (``edgecap._log``) are fine; their names are what counts."""
    tree = ast.parse(source)
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _is_project(node.module, node.level):
            for alias in node.names:
                if _is_private(alias.name):
                    found.append((node.lineno, f"from {'.' * node.level}{node.module or ''} import {alias.name}"))
                modules.add(alias.asname or alias.name)  # `from . import exporter` binds a module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _is_project(alias.name, 0):
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _is_private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in modules):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return [f"line {line}: {what}" for line, what in sorted(found)]


def test_the_checker_finds_each_form_of_private_use() -> None:
    """The scan below would pass vacuously if the checker missed a form: each form here must be reported."""
    source = ("from .exporter import _graph_io, sha256_file\n"
              "from edgecap.generation import _Stepper\n"
              "from . import exporter\n"
              "import edgecap.sources as src\n"
              "import argparse\n"
              "from edgecap._log import logger\n"
              "x = exporter._first_line(e)\n"
              "y = src._Reader\n"
              "z = argparse._SubParsersAction\n"
              "w = self._private\n")
    assert private_uses(source) == ["line 1: from .exporter import _graph_io",
                                    "line 2: from edgecap.generation import _Stepper",
                                    "line 7: exporter._first_line", "line 8: src._Reader"]


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_modules_use_only_public_names_of_other_modules(path: Path) -> None:
    assert private_uses(path.read_text(encoding="utf-8")) == [], f"{path.relative_to(ROOT)} uses private names"


# -- model families ---------------------------------------------------------------------------------------------


def _ved_config(encoder: str = "vit", decoder: str = "gpt2", **decoder_extra):  # noqa: ANN202
    """A VisionEncoderDecoder config built from transformers' own config classes (no weights)."""
    transformers = pytest.importorskip("transformers")
    enc_cls = {"vit": transformers.ViTConfig, "deit": transformers.DeiTConfig, "bert": transformers.BertConfig}
    dec_cls = {"gpt2": transformers.GPT2Config, "bert": transformers.BertConfig}
    enc = enc_cls[encoder](image_size=48, patch_size=16, num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                           intermediate_size=64)
    dec_kw = dict(n_layer=3, n_head=4, n_embd=48, vocab_size=321) if decoder == "gpt2" else {}
    dec = dec_cls[decoder](**dec_kw, **decoder_extra)
    return transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)


@pytest.mark.parametrize("encoder,extra_tokens", [("vit", 1), ("deit", 2)])
def test_vision_encoder_decoder_family_reads_the_shape(encoder: str, extra_tokens: int) -> None:
    from edgecap_export.families import family_for

    config = _ved_config(encoder)
    family = family_for(config)
    shape = family.shape(config)
    assert family.name == "vision-encoder-decoder"
    assert (shape.encoder_type, shape.decoder_type) == (encoder, "gpt2")
    assert (shape.num_layers, shape.num_heads, shape.head_dim, shape.vocab_size) == (3, 4, 12, 321)
    assert shape.image_size == (48, 48) and shape.num_channels == 3
    assert shape.encoder_seq_len == 9 + extra_tokens  # 3x3 patches plus [CLS] (and DeiT's distillation token)
    assert shape.architecture()["hidden_size"] == 48


def test_unsupported_models_name_what_was_found_and_what_is_supported() -> None:
    from edgecap_export.families import family_for

    with pytest.raises(UnsupportedModelError, match=r"model type 'bert'.*vision-encoder-decoder.*vit.*gpt2"):
        family_for(SimpleNamespace(model_type="bert"))
    config = _ved_config(decoder="bert", is_decoder=True, add_cross_attention=True)
    with pytest.raises(UnsupportedModelError, match=r"vit encoder \+ bert decoder"):
        family_for(config).shape(config)


def test_a_registered_family_is_chosen_by_model_type(monkeypatch) -> None:  # noqa: ANN001
    """The seam the next families use: an entry in FAMILIES is all the exporter needs to find one."""
    from edgecap_export import families

    other = SimpleNamespace(name="pix2struct", model_types=("pix2struct",), describe=lambda: "pix2struct (test)")
    monkeypatch.setattr(families, "FAMILIES", (*families.FAMILIES, other))
    assert families.family_for(SimpleNamespace(model_type="pix2struct")) is other
    with pytest.raises(UnsupportedModelError, match=r"pix2struct \(test\)"):
        families.family_for(SimpleNamespace(model_type="git"))
