"""manifest.json: everything the runtime needs to run an exported model, so that it never guesses a name.

Schema (version 1), written by the export step::

    schema_version, edgecap_version, name, created_utc
    source:        {model, revision, weights_sha256, architecture}
    architecture:  {encoder_type, decoder_type, num_layers, num_heads, head_dim, hidden_size, vocab_size,
                    encoder_seq_len, encoder_hidden_size}
    image:         {height, width, do_resize, resample, resample_name, do_rescale, rescale_factor, do_normalize,
                    mean, std}
    tokenizer:     {file, skip_special_tokens, clean_up_tokenization_spaces}
    special_tokens:{decoder_start_token_id, eos_token_id: [..], pad_token_id, bos_token_id}
    generation:    {max_new_tokens, min_new_tokens, min_length, num_beams, length_penalty, early_stopping,
                    no_repeat_ngram_size, repetition_penalty}
    graphs:        {<precision>: {encoder: GRAPH, decoder: GRAPH}}  with GRAPH = {file, sha256, inputs, outputs}
                   and each input/output {name, dtype, shape} (a shape entry is an int or an axis name)
    io:            roles -> graph names: encoder {pixel_values, cross_k[], cross_v[], pooled}
                                         decoder {input_ids, past_k[], past_v[], cross_k[], cross_v[], logits,
                                                  present_k[], present_v[]}
    validation:    what the export checked against transformers, with tolerances and results
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ManifestError, ModelError

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
_REQUIRED = ("schema_version", "architecture", "image", "tokenizer", "special_tokens", "generation", "graphs", "io")


@dataclass(frozen=True)
class Manifest:
    """A parsed, checked manifest; ``data`` is the raw dictionary."""

    directory: Path
    data: dict[str, Any]

    @property
    def num_layers(self) -> int:
        return int(self.data["architecture"]["num_layers"])

    @property
    def num_heads(self) -> int:
        return int(self.data["architecture"]["num_heads"])

    @property
    def head_dim(self) -> int:
        return int(self.data["architecture"]["head_dim"])

    @property
    def precisions(self) -> list[str]:
        return sorted(self.data["graphs"])

    def graph_path(self, precision: str, part: str) -> Path:
        graphs = self.data["graphs"]
        if precision not in graphs:
            raise ModelError(f"precision {precision!r} is not exported in {self.directory}: "
                             f"available {sorted(graphs)}; run `edgecap quantize` for int8")
        path = self.directory / graphs[precision][part]["file"]
        if not path.is_file():
            raise ModelError(f"{part} graph missing: expected {path}; re-run `edgecap export`")
        return path

    def io(self, part: str) -> dict[str, Any]:
        return self.data["io"][part]


def load_manifest(directory: str | os.PathLike) -> Manifest:
    """Read and check ``DIR/manifest.json``.

    Raises:
        ModelError: the directory does not exist.
        ManifestError: the manifest is missing, not JSON, of another schema version, or incomplete.
    """
    d = Path(directory)
    if not d.is_dir():
        raise ModelError(f"model directory not found: {d}; expected a directory written by `edgecap export`")
    path = d / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_FILE} in {d}: expected an exported model directory; "
                            "run `edgecap export MODEL --out DIR` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc.__class__.__name__}); re-run `edgecap export`") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path} must hold a JSON object, found {type(data).__name__}; re-run `edgecap export`")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{path} has schema_version {version!r}, this edgecap reads {SCHEMA_VERSION}; "
                            "re-export the model with this version of edgecap")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ManifestError(f"{path} lacks {missing}; re-run `edgecap export`")
    layers = data["architecture"].get("num_layers")
    for part, roles in (("encoder", ("cross_k", "cross_v")), ("decoder", ("past_k", "past_v", "present_k"))):
        for role in roles:
            names = data["io"].get(part, {}).get(role)
            if not isinstance(names, list) or len(names) != layers:
                raise ManifestError(f"{path}: io.{part}.{role} should list {layers} names (one per layer), "
                                    f"found {names!r}; re-run `edgecap export`")
    return Manifest(d, data)
