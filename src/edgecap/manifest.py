"""manifest.json: everything the runtime needs to run an exported model, so that it never guesses a name.

Schema (version 1), written by the export step::

    schema_version, edgecap_version, name, created_utc, family (the export family; absent before BLIP)
    source:        {model, revision, weights_sha256, architecture}
    architecture:  {encoder_type, decoder_type, num_layers, num_heads, head_dim, hidden_size, vocab_size,
                    encoder_seq_len, encoder_hidden_size, decoder_positions (optional: the decoder's learned
                    position table; no decoding step feeds it more tokens in all)}
    image:         {height, width, do_resize, resample, resample_name, do_rescale, rescale_factor, do_normalize,
                    mean, std, do_convert_rgb (transparency onto white; absent before it was recorded: dropped)}
    tokenizer:     {file, skip_special_tokens, clean_up_tokenization_spaces}
    special_tokens:{decoder_start_token_id, eos_token_id: [..], pad_token_id, bos_token_id}
    generation:    {max_new_tokens (null: max_length counts the prefix), max_length, min_new_tokens, min_length,
                    num_beams, length_penalty, early_stopping, no_repeat_ngram_size, repetition_penalty,
                    forced_bos_token_id, forced_eos_token_id (optional), length_cap (optional: the default
                    max_new_tokens stops where prefix + answer reach it, as transformers caps its default length
                    at the generating model's max_position_embeddings; a length the caller sets is not capped)}
    prompt:        optional; absent: the model takes no prompt. {kind: "prefix", add_special_tokens, first_token_id,
                   drop_last, max_positions}: the prompt is tokenized (with the tokenizer's special tokens when
                   add_special_tokens), its first id replaced by first_token_id and, with drop_last, its last id
                   dropped; the result is the decoder's prefix (BLIP's conditional captioning). {kind: "task", tasks:
                   {TOKEN: {text, takes_input, post_processing}}, default_task, bos_token, eos_token, max_positions,
                   image_positions (optional, 0 when absent), reserved (optional: the image token, refused in a
                   prompt as the processor refuses it), banned_grounding_tokens, quantize_bins}: the prompt
                   is a task token (with text after it when takes_input); bos_token + the task's text + eos_token,
                   tokenized without added specials, is the encoder's ``input_ids`` (Florence-2); the image
                   features take image_positions of the encoder's max_positions before it; the decoder starts from
                   its start token alone.
                   {kind: "chat", before, after, default_prompt, accepts_questions, reserved, add_special_tokens,
                   max_positions}: a decoder-only model's chat template rendered at export around the user text
                   (the image already expanded into its tokens): before + text + after, tokenized (with the
                   tokenizer's specials when add_special_tokens), is the prefill's prompt; a text holding one of
                   the ``reserved`` (image) tokens is refused; no prompt asks ``default_prompt`` (SmolVLM)
    graphs:        {<precision>: {encoder: GRAPH, decoder: GRAPH}}  with GRAPH = {file, sha256, inputs, outputs}
                   and each input/output {name, dtype, shape} (a shape entry is an int or an axis name)
    io:            roles -> graph names: encoder {pixel_values, input_ids (only a "task" prompt's encoder), cross_k[],
                                                  cross_v[], pooled}
                                         decoder {input_ids, past_k[], past_v[], cross_k[], cross_v[], logits,
                                                  present_k[], present_v[]}
                   decoder-only models (architecture.decoder_only, with num_kv_heads: the cache's heads): the
                   encoder graph is the prefill {pixel_values, input_ids, attention_mask, position_ids, logits,
                   present_k[], present_v[], pooled}; decoder {input_ids, attention_mask, position_ids, past_k[],
                   past_v[], logits, present_k[], present_v[]}
    validation:    what the export checked against transformers, with tolerances and results
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable

from .errors import ManifestError, ModelError, directory_not_found
from .imaging import RESAMPLE_NAMES
from .tasks import TASK_POST_PROCESSING

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
_REQUIRED = ("schema_version", "architecture", "image", "tokenizer", "special_tokens", "generation", "graphs", "io")
_MISSING = object()


@dataclass(frozen=True)
class Manifest:
    """A parsed, checked manifest; ``data`` is the raw dictionary.

    Every section the runtime reads has been checked by :func:`load_manifest` (types, required keys, file entries
    inside ``directory``), so readers index it without guarding against KeyError or TypeError.
    """

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
    def decoder_only(self) -> bool:
        """True for a decoder-only model: the encoder graph is a prefill (image and prompt -> K/V, first logits)."""
        return bool(self.data["architecture"].get("decoder_only", False))

    @property
    def num_kv_heads(self) -> int:
        """The cache's heads (fewer than num_heads with grouped-query attention)."""
        return int(self.data["architecture"].get("num_kv_heads") or self.num_heads)

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

    Args:
        directory: a model directory written by ``edgecap export``.

    Returns:
        The checked manifest.

    Raises:
        ModelError: the directory does not exist.
        ManifestError: the manifest is missing, not JSON, of another schema version, incomplete, has a value of
            the wrong type or range, or a file entry that is absolute, contains ``..`` or resolves (through
            symlinks too) outside the directory. The message names the key.
    """
    d = Path(directory)
    if not d.is_dir():
        raise ModelError(f"{directory_not_found(d)}; expected a directory written by `edgecap export`")
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
    _Checker(path, d).check(data)
    return Manifest(d, data)


# -- validation ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """What one key must hold: ``expected`` is the wording of the error, ``ok`` the test of a present value."""

    expected: str
    ok: Callable[[Any], bool]
    required: bool = True  # False: the key may be absent (the reader has a default)
    nullable: bool = False  # True: the key may be null (the reader treats null as its default)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, float) and math.isfinite(v)) or _is_int(v)


def _token_ids(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(t) and t >= 0 for t in v)


def _three_numbers(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(_is_number(x) for x in v)


_POSITIVE_INT = _Rule("an integer >= 1", lambda v: _is_int(v) and v >= 1)
_TOKEN_ID = _Rule("an integer >= 0", lambda v: _is_int(v) and v >= 0)
_BOOL = _Rule("true or false", lambda v: isinstance(v, bool))
_NAME = _Rule("a non-empty string", lambda v: isinstance(v, str) and bool(v))
_FILE = _Rule("a file name relative to the model directory", lambda v: isinstance(v, str) and bool(v))
_OPTIONAL_NON_NEGATIVE = _Rule("an integer >= 0", lambda v: _is_int(v) and v >= 0, required=False, nullable=True)
_OPTIONAL_BOOL = _Rule("true or false", lambda v: isinstance(v, bool), required=False, nullable=True)

# The keys the runtime reads from each section (captioner, imaging, generation defaults, pipeline provenance).
_SECTIONS: dict[str, dict[str, _Rule]] = {
    "architecture": {"num_layers": _POSITIVE_INT, "num_heads": _POSITIVE_INT, "head_dim": _POSITIVE_INT,
                     "num_kv_heads": _Rule("an integer >= 1", lambda v: _is_int(v) and v >= 1, required=False),
                     "decoder_only": _OPTIONAL_BOOL,
                     "decoder_positions": _Rule("an integer >= 1", lambda v: _is_int(v) and v >= 1, required=False)},
    "image": {
        "height": _POSITIVE_INT, "width": _POSITIVE_INT, "do_resize": _BOOL,
        "resample": _Rule(f"one of the filter ids {sorted(RESAMPLE_NAMES)}",
                          lambda v: _is_int(v) and v in RESAMPLE_NAMES),
        "do_rescale": _BOOL, "rescale_factor": _Rule("a number", _is_number), "do_normalize": _BOOL,
        "mean": _Rule("a list of 3 numbers", _three_numbers),
        "std": _Rule("a list of 3 non-zero numbers", lambda v: _three_numbers(v) and all(x != 0 for x in v)),
        "do_convert_rgb": _OPTIONAL_BOOL,
    },
    "tokenizer": {
        "file": _FILE,
        "skip_special_tokens": _OPTIONAL_BOOL,
        "clean_up_tokenization_spaces": _OPTIONAL_BOOL,
    },
    "special_tokens": {
        "decoder_start_token_id": _TOKEN_ID,
        "eos_token_id": _Rule("a list of integers >= 0", _token_ids, required=False, nullable=True),
        "pad_token_id": _OPTIONAL_NON_NEGATIVE,
    },
    "generation": {
        "max_new_tokens": _Rule("an integer >= 1", lambda v: _is_int(v) and v >= 1, nullable=True),
        "max_length": _Rule("an integer >= 2", lambda v: _is_int(v) and v >= 2, required=False, nullable=True),
        "min_new_tokens": _OPTIONAL_NON_NEGATIVE, "min_length": _OPTIONAL_NON_NEGATIVE,
        "no_repeat_ngram_size": _OPTIONAL_NON_NEGATIVE,
        "forced_bos_token_id": _OPTIONAL_NON_NEGATIVE, "forced_eos_token_id": _OPTIONAL_NON_NEGATIVE,
        "length_cap": _OPTIONAL_NON_NEGATIVE,
        "num_beams": _Rule("an integer >= 1", lambda v: _is_int(v) and v >= 1, required=False, nullable=True),
        "length_penalty": _Rule("a number", _is_number, required=False),
        "early_stopping": _Rule('true, false or "never"', lambda v: v is True or v is False or v == "never",
                                required=False),
        "repetition_penalty": _Rule("a number > 0", lambda v: _is_number(v) and v > 0, required=False,
                                    nullable=True),
    },
}
# The prompt forms the runtime implements (the manifest's ``prompt.kind``) and the keys each one reads.
PROMPT_KINDS = ("prefix", "task", "chat")
_STRING = _Rule("a string", lambda v: isinstance(v, str))
_TASK_TABLE = _Rule("an object of task token -> {text, takes_input, post_processing}", lambda v: isinstance(v, dict)
                    and bool(v) and all(isinstance(t, dict) and isinstance(t.get("text"), str)
                                        and isinstance(t.get("takes_input"), bool)
                                        and t.get("post_processing") in TASK_POST_PROCESSING for t in v.values()))
_PROMPT_RULES: dict[str, dict[str, _Rule]] = {
    "prefix": {"add_special_tokens": _BOOL, "first_token_id": _TOKEN_ID, "drop_last": _BOOL,
               "max_positions": _POSITIVE_INT},
    "task": {"tasks": _TASK_TABLE, "default_task": _NAME, "bos_token": _NAME, "eos_token": _NAME,
             "max_positions": _POSITIVE_INT,
             "image_positions": _Rule("an integer >= 0", lambda v: _is_int(v) and v >= 0, required=False),
             "banned_grounding_tokens": _Rule("a list of strings", lambda v: isinstance(v, list) and all(
                 isinstance(x, str) for x in v)),
             "quantize_bins": _Rule("two integers >= 1", lambda v: isinstance(v, list) and len(v) == 2 and all(
                 _is_int(x) and x >= 1 for x in v)),
             "reserved": _Rule("a list of strings", lambda v: isinstance(v, list) and all(
                 isinstance(x, str) and x for x in v), required=False)},
    "chat": {"before": _STRING, "after": _STRING, "default_prompt": _NAME, "accepts_questions": _BOOL,
             "add_special_tokens": _BOOL, "max_positions": _POSITIVE_INT,
             "reserved": _Rule("a list of strings", lambda v: isinstance(v, list) and all(
                 isinstance(x, str) and x for x in v))},
}
_GRAPH_PARTS = ("encoder", "decoder")
_IO_NAMES = {"encoder": ("pixel_values",), "decoder": ("input_ids", "logits")}
_IO_LISTS = {"encoder": ("cross_k", "cross_v"),
             "decoder": ("past_k", "past_v", "cross_k", "cross_v", "present_k", "present_v")}
_DECODER_ONLY_NAMES = {"encoder": ("pixel_values", "input_ids", "attention_mask", "position_ids", "logits"),
                       "decoder": ("input_ids", "attention_mask", "position_ids", "logits")}
_DECODER_ONLY_LISTS = {"encoder": ("present_k", "present_v"), "decoder": ("past_k", "past_v", "present_k", "present_v")}


class _Checker:
    """Checks a manifest's sections against the rules above; the first problem raises one ManifestError line."""

    def __init__(self, path: Path, directory: Path):
        self.path = path
        self.directory = directory

    def fail(self, key: str, expected: str, found: Any) -> ManifestError:
        shown = "nothing" if found is _MISSING else repr(found)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return ManifestError(f"{self.path} is malformed: {key} must be {expected}, found {shown}; "
                             "re-run `edgecap export`")

    def section(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "an object", value)
        return value

    def rules(self, section: dict[str, Any], key: str, rules: dict[str, _Rule]) -> None:
        for name, rule in rules.items():
            value = section.get(name, _MISSING)
            if (value is _MISSING and not rule.required) or (value is None and rule.nullable):
                continue
            if value is _MISSING or value is None or not rule.ok(value):
                raise self.fail(f"{key}.{name}", rule.expected, value)

    def file(self, value: Any, key: str) -> None:
        """A file entry must name a file inside the model directory: no absolute path, no ``..``, no symlink out."""
        if not (isinstance(value, str) and value):
            raise self.fail(key, _FILE.expected, value)
        # PureWindowsPath splits on "/" too and sees drives and UNC roots: it catches both spellings
        if PurePosixPath(value).is_absolute() or PureWindowsPath(value).anchor:
            raise self.fail(key, "a path relative to the model directory", value)
        if ".." in PureWindowsPath(value).parts:
            raise self.fail(key, "a path without '..'", value)
        root = self.directory.resolve()
        target = (self.directory / value).resolve()
        if root not in target.parents:
            raise self.fail(key, f"a path that stays inside {root} (it resolves to {target})", value)

    def check(self, data: dict[str, Any]) -> None:
        for name, rules in _SECTIONS.items():
            self.rules(self.section(data[name], name), name, rules)
        generation = data["generation"]
        if generation["max_new_tokens"] is None and generation.get("max_length") is None:
            raise self.fail("generation.max_new_tokens", "an integer >= 1 when generation.max_length is absent",
                            None)
        if data.get("prompt") is not None:
            self.prompt(self.section(data["prompt"], "prompt"))
        self.file(data["tokenizer"]["file"], "tokenizer.file")
        self.graphs(self.section(data["graphs"], "graphs"))
        decoder_only = bool(data["architecture"].get("decoder_only", False))
        self.io(self.section(data["io"], "io"), data["architecture"]["num_layers"], decoder_only)
        kind = (data.get("prompt") or {}).get("kind")
        if decoder_only != (kind == "chat"):
            raise self.fail("prompt.kind", "\"chat\" exactly when architecture.decoder_only", kind)
        if (kind in ("task", "chat")) != ("input_ids" in data["io"]["encoder"]):
            raise self.fail("io.encoder.input_ids", "present exactly when prompt.kind is \"task\" or \"chat\"",
                            data["io"]["encoder"].get("input_ids", _MISSING))

    def prompt(self, prompt: dict[str, Any]) -> None:
        kind = prompt.get("kind", _MISSING)
        if kind not in PROMPT_KINDS:
            raise self.fail("prompt.kind", f"one of {list(PROMPT_KINDS)}", kind)
        self.rules(prompt, "prompt", _PROMPT_RULES[kind])

    def graphs(self, graphs: dict[str, Any]) -> None:
        if not graphs:
            raise self.fail("graphs", "an object with at least one precision", graphs)
        for precision, parts in graphs.items():
            parts = self.section(parts, f"graphs.{precision}")
            for part in _GRAPH_PARTS:
                key = f"graphs.{precision}.{part}"
                graph = self.section(parts.get(part, _MISSING), key)
                self.file(graph.get("file", _MISSING), f"{key}.file")
                self.rules(graph, key, {"sha256": _Rule("a string", lambda v: isinstance(v, str), required=False)})
                for kind in ("inputs", "outputs"):
                    tensors = graph.get(kind, _MISSING)
                    if not isinstance(tensors, list) or not all(
                            isinstance(t, dict) and isinstance(t.get("name"), str) for t in tensors):
                        raise self.fail(f"{key}.{kind}", "a list of {name, dtype, shape} objects", tensors)

    def io(self, io: dict[str, Any], layers: int, decoder_only: bool) -> None:
        singles, lists = (_DECODER_ONLY_NAMES, _DECODER_ONLY_LISTS) if decoder_only else (_IO_NAMES, _IO_LISTS)
        for part in _GRAPH_PARTS:
            roles = self.section(io.get(part, _MISSING), f"io.{part}")
            self.rules(roles, f"io.{part}", dict.fromkeys(singles[part], _NAME))
            for role in lists[part]:
                names = roles.get(role)
                if not isinstance(names, list) or len(names) != layers or not all(
                        isinstance(n, str) and n for n in names):
                    raise self.fail(f"io.{part}.{role}", f"a list of {layers} names (one per layer)", names)
        ids = io["encoder"].get("input_ids")
        if ids is not None and not (isinstance(ids, str) and ids):
            raise self.fail("io.encoder.input_ids", "a non-empty string or absent", ids)
        pooled = io["encoder"].get("pooled")
        if pooled is not None and not (isinstance(pooled, str) and pooled):
            raise self.fail("io.encoder.pooled", "a non-empty string or null", pooled)
