"""Hugging Face checkpoint -> encoder.onnx + decoder.onnx + tokenizer.json + manifest.json, validated."""

from __future__ import annotations

import datetime as _dt
import enum
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from edgecap._log import logger
from edgecap._version import __version__
from edgecap.device_loop import interleaved
from edgecap.errors import ExportError, ParityError, UnsupportedModelError
from edgecap.imaging import RESAMPLE_NAMES
from edgecap.manifest import MANIFEST_FILE, SCHEMA_VERSION

from .checkpoint import (image_processor_settings, load_checkpoint, load_config, pil_image_processor, sha256_file,
                         source_info)
from .families import family_for
from .specs import Family, ModelShape, io_names

DEFAULT_OPSET = 17


class Target(str, enum.Enum):
    """The runtime a graph is exported for: ONNX Runtime (fused contrib attention) or TensorRT (standard ops only,
    opset in the target version's range, checked by the TensorRT lint before the export succeeds)."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


# transformers' generate makes this many new tokens when the generation config sets neither max_new_tokens nor
# max_length (transformers 5 leaves both unset by default).
DEFAULT_NEW_TOKENS = 20
# Held-out synthetic scenes on which --fp16 exports compare FP16 with FP32 generated ids.
FP16_FRAMES = 16
# Generation settings whose processors the runtime does not implement: refuse rather than say different words.
_UNSUPPORTED_GENERATION = ("bad_words_ids", "suppress_tokens",
                           "begin_suppress_tokens", "sequence_bias", "exponential_decay_length_penalty",
                           "encoder_no_repeat_ngram_size", "renormalize_logits")


@contextmanager
def _quiet_torch_export() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


_LOADED_KEYS = ("do_resize", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
                "do_center_crop", "do_convert_rgb")


def loaded_image_settings(model: str, saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with the values the checkpoint's image processor actually runs with, as transformers builds it:
    the class defaults fill the keys a saved file leaves out (BLIP's and CLIP's processors resize bicubic and
    normalise with CLIP's mean/std, not edgecap's generic fallbacks), and processor_config.json's nested settings win
    over a stale preprocessor_config.json beside it, as AutoProcessor reads them."""
    proc = pil_image_processor(model)
    if proc is None:
        return saved
    out = dict(saved)
    for key in _LOADED_KEYS:
        value = getattr(proc, key, None)
        if value is not None:
            out[key] = [float(v) for v in value] if key in ("image_mean", "image_std") else value
    for key in ("size", "crop_size"):
        value = getattr(proc, key, None)
        if value is not None:
            items = value.items() if hasattr(value, "items") else vars(value).items()
            out[key] = {k: int(v) for k, v in items if v is not None}
    return out


def image_config(model: str, shape: ModelShape) -> dict[str, Any]:
    """The preprocessing recipe: the checkpoint's image processor settings as transformers loads them
    (:func:`loaded_image_settings`)."""
    h, w = shape.image_size
    pc = image_processor_settings(model)
    if pc:
        pc = loaded_image_settings(model, pc)
    if not pc:
        raise ExportError(f"{model} has no preprocessor_config.json; save the image processor with the model "
                          "(processor.save_pretrained(dir)) so edgecap knows the resize and normalisation")
    size = pc.get("size", {"height": h, "width": w})
    if isinstance(size, int):
        size = {"height": size, "width": size}
    if "height" not in size or "width" not in size:
        raise UnsupportedModelError(f"image processor size {size} is not supported: expected height and width")
    if pc.get("do_center_crop") and pc.get("crop_size") not in (None, size):
        raise UnsupportedModelError("image processors that centre-crop are not supported yet")
    if (int(size["height"]), int(size["width"])) != (h, w):
        raise ExportError(f"image processor size {size['height']}x{size['width']} differs from the encoder's "
                          f"image_size {h}x{w}")
    resample = int(pc.get("resample", 2))
    return {
        "height": h, "width": w, "do_resize": bool(pc.get("do_resize", True)), "resample": resample,
        "resample_name": RESAMPLE_NAMES.get(resample, str(resample)),
        "do_rescale": bool(pc.get("do_rescale", True)), "rescale_factor": float(pc.get("rescale_factor", 1 / 255)),
        "do_normalize": bool(pc.get("do_normalize", True)),
        "mean": [float(v) for v in pc.get("image_mean", [0.5, 0.5, 0.5])],
        "std": [float(v) for v in pc.get("image_std", [0.5, 0.5, 0.5])],
        # the loaded processor's do_convert_rgb (its class default where the file says nothing: BLIP and CLIP
        # composite transparency onto white, ViT does not)
        "do_convert_rgb": bool(pc.get("do_convert_rgb")),
        "processor_type": pc.get("image_processor_type", pc.get("feature_extractor_type")),
    }


def generation_settings(family: Family, hf_model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(special_tokens, generation defaults) as transformers' generate would resolve them for the family."""
    gc = family.generation_config(hf_model)
    for attr in _UNSUPPORTED_GENERATION:
        if getattr(gc, attr, None) not in (None, [], 0):
            raise UnsupportedModelError(f"generation setting {attr}={getattr(gc, attr)!r} is not supported by the "
                                        "edgecap runtime; remove it from generation_config.json")
    if getattr(gc, "num_beam_groups", 1) not in (None, 1):
        raise UnsupportedModelError("group beam search (num_beam_groups > 1) is not supported")
    special = family.special_tokens(hf_model)
    max_length = length_cap = None
    if gc.max_new_tokens is not None:
        max_new: int | None = int(gc.max_new_tokens)
    elif gc.max_length is None:
        max_new = DEFAULT_NEW_TOKENS
        length_cap = family.default_length_cap(hf_model)  # transformers' default stops there (prefix included)
    elif family.prompt_spec(hf_model) is None:
        max_new = int(gc.max_length) - 1  # the prefix is the start token alone
    else:  # max_length counts a prompt's tokens too: the runtime subtracts each prefix's length
        max_new, max_length = None, int(gc.max_length)
    gen = {"max_new_tokens": max_new, "max_length": max_length, "min_new_tokens": int(gc.min_new_tokens or 0),
           "min_length": int(gc.min_length or 0), "num_beams": int(gc.num_beams or 1),
           "length_penalty": float(gc.length_penalty if gc.length_penalty is not None else 1.0),
           "early_stopping": gc.early_stopping if gc.early_stopping is not None else False,
           "no_repeat_ngram_size": int(gc.no_repeat_ngram_size or 0),
           "repetition_penalty": float(gc.repetition_penalty or 1.0), "do_sample_in_source": bool(gc.do_sample),
           **({"length_cap": int(length_cap)} if length_cap is not None else {}),
           **{k: int(v) for k in ("forced_bos_token_id", "forced_eos_token_id") if (v := getattr(gc, k, None)) is not None}}
    return special, gen


def _fast_backend(tok: Any) -> Any | None:
    """A transformers tokenizer's `tokenizers` object (what tokenizer.json holds), or None for a slow one."""
    return getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)


def load_tokenizer(model: str) -> Any:
    """The checkpoint's tokenizer, checked before anything is written: one line when it cannot be loaded, has no
    fast backend, or holds no vocabulary (transformers 5 builds an empty tokenizer -- its special tokens only --
    from the config of a checkpoint saved without its tokenizer files, whose every caption would decode to "")."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError, TypeError) as exc:
        raise ExportError(f"{model} has no usable tokenizer ({type(exc).__name__}); save the tokenizer with the "
                          "model (tokenizer.save_pretrained(dir))") from None
    backend = _fast_backend(tok)
    if backend is None:
        raise ExportError(f"the tokenizer of {model} has no fast (tokenizers) backend; edgecap needs tokenizer.json")
    if not set(backend.get_vocab(with_added_tokens=False)) - set(tok.all_special_tokens):
        raise ExportError(f"{model} has no usable tokenizer (its vocabulary holds special tokens only: no tokenizer "
                          "files were saved with it); save the tokenizer with the model "
                          "(tokenizer.save_pretrained(dir))")
    return tok


def save_tokenizer(model: str, out: Path, tok: Any | None = None) -> dict[str, Any]:
    """Write ``tok`` (default: the checkpoint's, see :func:`load_tokenizer`) to out/tokenizer.json."""
    tok = tok if tok is not None else load_tokenizer(model)
    backend = _fast_backend(tok)
    backend.save(str(out / "tokenizer.json"))
    return {"file": "tokenizer.json", "skip_special_tokens": True,
            "clean_up_tokenization_spaces": decode_cleans_up(tok, backend)}


def decode_cleans_up(tok: Any, backend: Any) -> bool:
    """Whether the tokenizer's ``decode`` really cleans up spaces before punctuation: transformers 5 ignores
    ``clean_up_tokenization_spaces=True`` for a BPE model (GPT-2's, BART's and so Florence-2's) unless its
    ``..._for_bpe_even_though_it_will_corrupt_output`` twin is set; transformers 4 applies it to every model."""
    if not getattr(tok, "clean_up_tokenization_spaces", False):
        return False
    forced = getattr(tok, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", None)
    if forced is None:  # a transformers without the BPE exception
        return True
    return bool(forced) or type(backend.model).__name__ != "BPE"


def graph_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Describe an ONNX graph's inputs and outputs for the manifest.

    Args:
        path: an .onnx file (external data is not read).

    Returns:
        ``{"inputs": [...], "outputs": [...]}``, each entry ``{name, dtype, shape}`` with a shape entry an int or
        an axis name.
    """
    import onnx
    from onnx import TensorProto

    m = onnx.load(str(path), load_external_data=False)

    def describe(values) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
            out.append({"name": v.name, "dtype": TensorProto.DataType.Name(t.elem_type).lower(), "shape": shape})
        return out

    return {"inputs": describe(m.graph.input), "outputs": describe(m.graph.output)}


def export_graphs(hf_model: Any, family: Family, shape: ModelShape, out: Path, opset: int,
                  attention: str = "contrib", fold_shapes: bool = False) -> dict[str, Any]:
    """Trace and write encoder.onnx and decoder.onnx; return their manifest entries. ``fold_shapes`` (the TensorRT
    target) folds the shape arithmetic over static dimensions into constants
    (:mod:`edgecap_export.tensorrt.fold`)."""
    import torch

    encoder, step = family.graph_modules(hf_model, attention)
    if getattr(family, "decoder_only", False):
        _export_decoder_only(encoder, step, shape, out, opset)
        return {"fp32": _graph_entries(out, fold_shapes)}
    names = io_names(shape.num_layers)
    heads, head_dim, seq = shape.num_heads, shape.head_dim, shape.encoder_seq_len
    enc_io, dec_io = names["encoder"], names["decoder"]

    enc_out = enc_io["cross_k"] + enc_io["cross_v"] + [enc_io["pooled"]]
    px = torch.randn(2, shape.num_channels, *shape.image_size)
    # an encoder that reads the prompt (Florence-2) takes its token ids [batch, prompt_len] as a second input
    prompt_ids = (torch.zeros(2, 5, dtype=torch.long),) if getattr(encoder, "takes_prompt_ids", False) else ()
    with torch.no_grad(), _quiet_torch_export():
        torch.onnx.export(encoder, (px, *prompt_ids), str(out / "encoder.onnx"),
                          input_names=[enc_io["pixel_values"]] + ["input_ids"] * len(prompt_ids),
                          output_names=enc_out, opset_version=opset, dynamo=False, do_constant_folding=True,
                          dynamic_axes={**{n: {0: "batch"} for n in [enc_io["pixel_values"]] + enc_out},
                                        **({"input_ids": {0: "batch", 1: "prompt_len"}} if prompt_ids else {})},
                          custom_opsets={"com.microsoft": 1})

    past_names, present_names = interleaved(dec_io, "past"), interleaved(dec_io, "present")
    cross_names = dec_io["cross_k"] + dec_io["cross_v"]
    ids = torch.zeros(2, 2, dtype=torch.long)
    past = [torch.randn(2, heads, 3, head_dim) for _ in past_names]
    cross = [torch.randn(2, heads, seq, head_dim) for _ in cross_names]
    dyn: dict[str, dict[int, str]] = {dec_io["input_ids"]: {0: "batch", 1: "new_tokens"}, dec_io["logits"]: {0: "batch"}}
    dyn.update({n: {0: "batch", 2: "past_len"} for n in past_names})
    dyn.update({n: {0: "batch", 2: "total_len"} for n in present_names})
    dyn.update({n: {0: "batch", **({2: "encoder_len"} if prompt_ids else {})} for n in cross_names})  # prompt-long
    with torch.no_grad(), _quiet_torch_export():
        torch.onnx.export(step, (ids, *past, *cross), str(out / "decoder.onnx"),
                          input_names=[dec_io["input_ids"]] + past_names + cross_names,
                          output_names=[dec_io["logits"]] + present_names, opset_version=opset, dynamo=False,
                          do_constant_folding=True, dynamic_axes=dyn, custom_opsets={"com.microsoft": 1})
    return {"fp32": _graph_entries(out, fold_shapes)}


def _graph_entries(out: Path, fold_shapes: bool) -> dict[str, Any]:
    """The manifest entries of out/encoder.onnx and out/decoder.onnx (shape arithmetic folded first for the
    TensorRT target), after checking the step has no control flow."""
    if fold_shapes:
        from .tensorrt.fold import fold_file

        for part in ("encoder", "decoder"):
            fold_file(out / f"{part}.onnx")
    _assert_no_if(out / "decoder.onnx")
    return {part: {"file": f"{part}.onnx", "sha256": sha256_file(out / f"{part}.onnx"), **graph_io(out / f"{part}.onnx")}
            for part in ("encoder", "decoder")}


def _export_decoder_only(prefill: Any, step: Any, shape: ModelShape, out: Path, opset: int) -> None:
    """Trace a decoder-only family's prefill graph (as encoder.onnx) and step graph (decoder.onnx); the examples
    are left-padded so that no mask or position path is traced as a constant."""
    import torch

    names = io_names(shape.num_layers, decoder_only=True)
    pre_io, dec_io = names["encoder"], names["decoder"]
    mask_pos = ["input_ids", "attention_mask", "position_ids"]
    past_names, present_names = interleaved(dec_io, "past"), interleaved(dec_io, "present")
    ids = torch.full((2, 4 + shape.encoder_seq_len), 1, dtype=torch.long)
    ids[:, 2:2 + shape.encoder_seq_len] = prefill.image_token_id
    mask = torch.ones_like(ids)
    mask[1, :1] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    px = torch.randn(2, shape.num_channels, *shape.image_size)
    dyn = {n: {0: "batch", 1: "prompt_len"} for n in mask_pos}
    dyn.update({n: {0: "batch", 2: "prompt_len"} for n in present_names})
    dyn.update({pre_io["pixel_values"]: {0: "batch"}, pre_io["logits"]: {0: "batch"}, pre_io["pooled"]: {0: "batch"}})
    with torch.no_grad(), _quiet_torch_export():
        torch.onnx.export(prefill, (px, ids, mask, pos), str(out / "encoder.onnx"),
                          input_names=[pre_io["pixel_values"]] + mask_pos,
                          output_names=[pre_io["logits"]] + present_names + [pre_io["pooled"]], opset_version=opset,
                          dynamo=False, do_constant_folding=True, dynamic_axes=dyn, custom_opsets={"com.microsoft": 1})
    kv = shape.num_kv_heads or shape.num_heads
    past = [torch.randn(2, kv, 3, shape.head_dim) for _ in past_names]
    new_ids = torch.zeros(2, 2, dtype=torch.long)
    step_mask = torch.ones(2, 5, dtype=torch.long)
    step_mask[1, 0] = 0
    step_pos = torch.tensor([[3, 4], [2, 3]])
    dyn = {"input_ids": {0: "batch", 1: "new_tokens"}, "attention_mask": {0: "batch", 1: "total_len"},
           "position_ids": {0: "batch", 1: "new_tokens"}, dec_io["logits"]: {0: "batch"}}
    dyn.update({n: {0: "batch", 2: "past_len"} for n in past_names})
    dyn.update({n: {0: "batch", 2: "total_len"} for n in present_names})
    with torch.no_grad(), _quiet_torch_export():
        torch.onnx.export(step, (new_ids, step_mask, step_pos, *past), str(out / "decoder.onnx"),
                          input_names=mask_pos + past_names, output_names=[dec_io["logits"]] + present_names,
                          opset_version=opset, dynamo=False, do_constant_folding=True, dynamic_axes=dyn,
                          custom_opsets={"com.microsoft": 1})


def _assert_no_if(path: Path) -> None:
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    if "If" in ops or "Loop" in ops:
        raise ExportError(f"{path.name} contains control flow ({sorted(ops & {'If', 'Loop'})}); TensorRT cannot "
                          "parse it -- this is a bug in the step module")


def export_model(model: str, out: str | os.PathLike, *, opset: int = DEFAULT_OPSET, validate: bool = True,
                 name: str | None = None, progress: bool = True, attention: str | None = None,
                 target: Target | str = Target.ONNXRUNTIME, trt_version: str | None = None, fp16: bool = False,
                 fp16_frames: int = FP16_FRAMES) -> Path:
    """Export a Hugging Face captioner (a family of :mod:`edgecap_export.families`) to an edgecap model directory.

    Args:
        model: a hub id or a directory written by ``save_pretrained`` (with tokenizer and image processor).
        out: the output directory (created; existing edgecap files in it are replaced).
        opset: ONNX opset.
        validate: compare the graphs with transformers (outputs within tolerance, identical tokens for greedy and
            beam search at batch 1 and 3); a failure raises ParityError after writing the report to the manifest.
        name: a display name for the model (default: the last path component of ``model``).
        progress: show a progress bar on stderr.
        attention: "contrib" (the ONNX Runtime default) writes each attention as one com.microsoft.MultiHeadAttention
            node, the fast form for ONNX Runtime; "standard" (the TensorRT default) uses only standard ONNX ops.
        target: "onnxruntime" (default) or "tensorrt": standard attention only, the opset within ``trt_version``'s
            range, and every graph must pass :func:`edgecap_export.tensorrt.lint_dir` (ExportError otherwise).
        trt_version: the TensorRT version a "tensorrt" target is checked against (default 10.0).
        fp16: (tensorrt target) also write encoder.fp16.onnx and decoder.fp16.onnx (LayerNorm and Softmax in FP32,
            see :mod:`edgecap_export.tensorrt.fp16`), lint them, and record in the manifest how often their
            generated ids equal FP32's on ``fp16_frames`` held-out synthetic scenes (ONNX Runtime CPU).

    Returns:
        The output directory.
    """
    from tqdm import tqdm

    from .wrappers import ATTENTION_KINDS

    target = _target(target)
    if attention is None:
        attention = "standard" if target is Target.TENSORRT else "contrib"
    if attention not in ATTENTION_KINDS:
        raise ExportError(f"attention must be one of {', '.join(ATTENTION_KINDS)}, got {attention!r}")
    target_info = _check_target(target, attention, opset, trt_version)
    if fp16 and target is not Target.TENSORRT:
        raise ExportError("--fp16 writes TensorRT graphs: pass --target tensorrt with it")
    out = Path(out)
    _check_out(out)
    config = load_config(model)
    family = family_for(config)
    shape = family.shape(config)
    stages = ["load checkpoint", "export graphs", "tokenizer + manifest"] + (["validate"] if validate else [])
    bar = tqdm(total=len(stages), desc="export", unit="stage", disable=not progress)

    def advance(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    try:
        bar.set_postfix_str(stages[0])
        hf_model = load_checkpoint(family, model)
        special, gen = generation_settings(family, hf_model)
        decoder_only = bool(getattr(family, "decoder_only", False))
        image = family.image_settings(model) if decoder_only else image_config(model, shape)
        tok = load_tokenizer(model)  # before an earlier export in OUT is retired: a checkpoint error loses nothing
        advance(stages[1])
        out.mkdir(parents=True, exist_ok=True)
        _retire_previous_export(out)
        graphs = export_graphs(hf_model, family, shape, out, opset, attention,
                               fold_shapes=target is Target.TENSORRT)
        if target is Target.TENSORRT:
            require_trt_lint(out, [out / "encoder.onnx", out / "decoder.onnx"], target_info["trt_version"])
        if fp16:
            graphs["fp16"] = _write_fp16(out, target_info["trt_version"])
        advance(stages[2])
        tokenizer = save_tokenizer(model, out, tok)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "edgecap_version": __version__,
            "name": name or (Path(model).resolve().name if os.path.isdir(model) else Path(model.rstrip("/")).name),
            "family": family.name,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": {**source_info(model, hf_model),
                       "architecture": f"{shape.encoder_type}+{shape.decoder_type}"},
            "architecture": {**shape.architecture(), "opset": opset, "attention": attention},
            "target": target_info,
            "image": image,
            "tokenizer": tokenizer,
            "special_tokens": special,
            "generation": gen,
            **({"prompt": prompt} if (prompt := family.prompt_spec(hf_model)) else {}),
            "graphs": graphs,
            "io": io_names(shape.num_layers, decoder_only=decoder_only, prompt_ids=not decoder_only and any(
                t["name"] == "input_ids" for t in graphs["fp32"]["encoder"]["inputs"])),
            # "running" until the report replaces it: an export that dies during validation does not read as one
            # that skipped it (the runtime warns about both a failed and an unfinished validation)
            "validation": {"status": "running" if validate else "not run"},
        }
        write_manifest(out, manifest)
        if validate:
            advance(stages[3])
            from .validate import validate_export

            report = validate_export(hf_model, model, out, progress=progress)
            manifest["validation"] = report
            write_manifest(out, manifest)
            if not report["passed"]:
                raise ParityError(f"export does not reproduce transformers: {len(report['mismatches'])} mismatch(es); "
                                  f"see {out / MANIFEST_FILE}", report["mismatches"])
        if fp16:
            _record_fp16_agreement(out, manifest, fp16_frames)
        bar.update(bar.total - bar.n)
    finally:
        bar.close()
    logger.info("exported %s to %s", model, out)
    return out


def _target(target: Target | str) -> Target:
    try:
        return Target(target)
    except ValueError:
        raise ExportError(f"target must be one of {', '.join(t.value for t in Target)}, got {target!r}") from None


def _check_target(target: Target, attention: str, opset: int, trt_version: str | None) -> dict[str, Any]:
    """The manifest's ``target`` entry, after checking the options fit the target (one line when they do not)."""
    if target is Target.ONNXRUNTIME:
        if trt_version is not None:
            raise ExportError("--trt-version applies to --target tensorrt only")
        return {"name": target.value}
    from .tensorrt import opset_range, support_table

    version = trt_version or support_table()["default_version"]
    low, high = opset_range(version)
    if attention != "standard":
        raise ExportError(f"--target tensorrt needs standard attention, got {attention!r}: TensorRT has no importer "
                          "for com.microsoft ops; drop --attention or pass --attention standard")
    if not low <= opset <= high:
        raise ExportError(f"opset {opset} is outside TensorRT {version}'s range {low}-{high}; pass --opset in it")
    return {"name": target.value, "trt_version": version, "check_trt": "passed"}


def _write_fp16(out: Path, trt_version: str) -> dict[str, Any]:
    from .tensorrt.fp16 import KEEP_FP32, convert_fp16

    entries: dict[str, Any] = {}
    rms_norms = 0
    for part in ("encoder", "decoder"):
        path = out / f"{part}.fp16.onnx"
        rms_norms += convert_fp16(out / f"{part}.onnx", path)
        entries[part] = {"file": path.name, "sha256": sha256_file(path), **graph_io(path)}
    require_trt_lint(out, [out / "encoder.fp16.onnx", out / "decoder.fp16.onnx"], trt_version)
    entries["recipe"] = {"kept_fp32": list(KEEP_FP32), "rms_norms_fp32": rms_norms,
                         "interface": "float32 inputs and outputs", "check_trt": "passed"}
    return entries


def _record_fp16_agreement(out: Path, manifest: dict[str, Any], frames: int) -> None:
    from edgecap import synth

    from .tensorrt.fp16 import fp16_agreement

    images = [synth.render_scene(synth.HELD_OUT_SEED_START + i)[0] for i in range(frames)]
    # the family's default prompt, named in the record: a decoder-only model (SmolVLM) answers its default
    # question, Florence-2 runs its default task, a model without prompts captions
    spec = manifest.get("prompt") or {}
    prompt = spec.get("default_prompt", spec.get("default_task"))
    report = fp16_agreement(out, images, prompt=prompt)
    manifest["graphs"]["fp16"]["agreement"] = {**report, "prompt": prompt, "source": "held-out synthetic scenes",
                                               "reference": "fp32", "runtime": "onnxruntime cpu"}
    write_manifest(out, manifest)
    logger.info("fp16 vs fp32: exact match %.1f%%, token agreement %.1f%%", 100 * report["exact_match"],
                100 * report["token_agreement"])


def require_trt_lint(out: Path, files: list[Path], trt_version: str) -> None:
    """Raise ExportError naming the first violations when a graph fails the TensorRT lint."""
    from .tensorrt import lint_dir

    violations = lint_dir(out, trt_version=trt_version, files=files)
    if violations:
        shown = "; ".join(str(v) for v in violations[:3])
        raise ExportError(f"{len(violations)} TensorRT {trt_version} violation(s) (first: {shown}); run "
                          f"`edgecap check-trt {out}` for all -- this is a bug in the TensorRT lowering")


def _check_out(out: Path) -> None:
    """One line, before the checkpoint loads, when OUT cannot be a directory (a file, or under one): it was a
    FileExistsError / NotADirectoryError traceback after the weights had loaded."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise ExportError(f"--out {out}: {'it' if p == out else p} is a file, not a directory")
            return


def _retire_previous_export(out: Path) -> None:
    """Remove an earlier export's manifest, and the INT8 and FP16 graphs made from its graphs, before new graphs
    are written: an export interrupted from here on leaves a directory that refuses to load, never the old manifest
    (its checksums, its validation verdict, its INT8 entry) describing the new model's graphs."""
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    for part in ("encoder", "decoder"):  # its graphs' names only: not another model's *.int8.onnx kept in OUT
        for precision in ("int8", "fp16"):
            (out / f"{part}.{precision}.onnx").unlink(missing_ok=True)


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write ``out/manifest.json`` atomically (a reader sees the old or the new file, never a part)."""
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST_FILE)
