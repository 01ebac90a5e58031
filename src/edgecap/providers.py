"""ONNX Runtime execution providers by short name, with the TensorRT and CUDA options edgecap's graphs need.

``Captioner(..., providers=["tensorrt"])`` (or ``["cuda"]``) resolves here to ONNX Runtime's provider list with
options: engine and timing caches next to the model, FP16/INT8 from the graph's precision, and optimization
profiles for every dynamic axis of the graph contract (batch 1..B, past length 0..max, new tokens 1..max prompt; a
decoder-only model's prefill prompt and step past hold its image tokens too, and its step's mask is past + new).
Names ONNX Runtime knows (``"CPUExecutionProvider"``, ...) pass through unchanged.

NOT VALIDATED: this machine has no GPU and no onnxruntime-gpu; only the option construction is tested here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError


class Provider(str, enum.Enum):
    """Short provider names and the ONNX Runtime providers they stand for (in priority order)."""

    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"


_ORT_NAMES = {Provider.CPU: "CPUExecutionProvider", Provider.CUDA: "CUDAExecutionProvider",
              Provider.TENSORRT: "TensorrtExecutionProvider"}


@dataclass(frozen=True)
class ProfileLimits:
    """The largest shapes a TensorRT optimization profile admits (engines are built for 1..max of each).

    Attributes:
        max_batch: images per call.
        max_past: cached positions (past length); the decoder's K/V profile runs 0..max_past.
        max_new_tokens: ids fed in one step (the prompt's prefill).
        max_prompt: prompt ids an encoder that reads the prompt takes (Florence-2's task instruction).
        image_tokens: the positions the image takes: before the prompt in Florence-2's encoder (its cross K/V hold
            image_tokens + prompt_len positions), inside a decoder-only model's prompt (SmolVLM). Set from the
            manifest by :func:`model_limits`.
        decoder_only: the prefill's ``prompt_len`` is image_tokens + the text's ids (1..max_prompt), and the step's
            ``past_len`` that whole prefix plus 0..max_past generated ids. Set from the manifest.
    """

    max_batch: int = 8
    max_past: int = 64
    max_new_tokens: int = 32
    max_prompt: int = 64
    image_tokens: int = 0
    decoder_only: bool = False


def model_limits(manifest: dict[str, Any], limits: ProfileLimits) -> ProfileLimits:
    """``limits`` with ``image_tokens`` (its encoder sequence length) and ``decoder_only`` from an export's
    manifest."""
    arch = manifest.get("architecture", {})
    return replace(limits, image_tokens=int(arch.get("encoder_seq_len", 0)),
                   decoder_only=bool(arch.get("decoder_only", False)))


def profile_dims(shape: Sequence[Any], limits: ProfileLimits) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) dims of one input whose axes are ints or the exporter's axis names ("batch", "past_len",
    "new_tokens", "total_len" = past + new, "prompt_len", "encoder_len"; another name gets 1). Opt sits at half
    the past and a quarter of the prompt maximum."""
    text = (1, max(1, limits.max_prompt // 4), limits.max_prompt)
    with_image = tuple(limits.image_tokens + n for n in text)
    new = (1, 1, limits.max_new_tokens)
    past = (0, limits.max_past // 2, limits.max_past)
    if limits.decoder_only:  # the step's past starts as the prefill's whole prompt, image tokens included
        past = tuple(p + n for p, n in zip(past, with_image))
    ranges = {"batch": (1, 1, limits.max_batch), "past_len": past, "new_tokens": new,
              "total_len": tuple(p + n for p, n in zip(past, new)),
              "prompt_len": with_image if limits.decoder_only else text, "encoder_len": with_image}
    return tuple(tuple(d if isinstance(d, int) else ranges.get(d, (1, 1, 1))[k] for d in shape) for k in range(3))


def profile_shapes(inputs: Sequence[dict[str, Any]], limits: ProfileLimits) -> dict[str, str]:
    """TensorRT EP profile strings (``trt_profile_min/opt/max_shapes``) for a graph's inputs.

    Args:
        inputs: the manifest's ``{name, dtype, shape}`` entries of one graph (axis names "batch", "past_len",
            "new_tokens" as the exporter writes them).
        limits: the largest shapes.

    Returns:
        ``{"trt_profile_min_shapes": ..., "trt_profile_opt_shapes": ..., "trt_profile_max_shapes": ...}``, empty
        when no input has a dynamic axis.
    """
    rows: list[list[str]] = [[], [], []]
    for entry in inputs:
        if all(isinstance(d, int) for d in entry["shape"]):
            continue
        for row, dims in zip(rows, profile_dims(entry["shape"], limits)):
            row.append(f"{entry['name']}:{'x'.join(map(str, dims))}")
    if not rows[0]:
        return {}
    return {f"trt_profile_{kind}_shapes": ",".join(row) for kind, row in zip(("min", "opt", "max"), rows)}


def tensorrt_options(graph: Path, inputs: Sequence[dict[str, Any]], *, limits: ProfileLimits = ProfileLimits(),
                     device_id: int = 0) -> dict[str, Any]:
    """ONNX Runtime TensorRT EP options for one graph file: caches under ``<model>/trt_cache``, FP16 for
    ``*.fp16.onnx``, INT8 (explicit QDQ, no calibration table) for ``*.int8.onnx``, profiles from ``inputs``."""
    cache = graph.parent / "trt_cache"
    return {"device_id": device_id, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": graph.name.endswith(".fp16.onnx") or graph.name.endswith(".int8.onnx"),
            "trt_int8_enable": graph.name.endswith(".int8.onnx"),
            **profile_shapes(inputs, limits)}


def cuda_options(*, device_id: int = 0) -> dict[str, Any]:
    """ONNX Runtime CUDA EP options: one device, cuDNN's exhaustive algorithm search (the graphs' shapes repeat
    every step, so the search pays once)."""
    return {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": True}


def session_providers(providers: Sequence[str] | None, graph: Path,
                      limits: ProfileLimits = ProfileLimits()) -> list[Any]:
    """The ``providers`` argument of ``onnxruntime.InferenceSession`` for ``graph``.

    Args:
        providers: short names ("tensorrt", "cuda", "cpu") and/or ONNX Runtime names, in priority order; None
            or empty: CPU.
        graph: the .onnx file the session loads (its manifest entry gives the profile shapes).
        limits: the TensorRT profile limits.

    Returns:
        A list of ONNX Runtime provider names and (name, options) pairs, with CPU last as the fallback.

    Raises:
        InputError: an unknown short name.
    """
    if not providers:
        return [_ORT_NAMES[Provider.CPU]]
    out: list[Any] = []
    for name in providers:
        if name.endswith("ExecutionProvider"):
            out.append(name)
            continue
        try:
            p = Provider(name.lower())
        except ValueError:
            raise InputError(f"unknown provider {name!r}: expected one of {', '.join(p.value for p in Provider)} "
                             "or an ONNX Runtime provider name") from None
        if p is Provider.TENSORRT:
            manifest = _manifest(graph)
            out.append((_ORT_NAMES[p], tensorrt_options(graph, _graph_inputs(manifest, graph),
                                                        limits=model_limits(manifest, limits))))
            out.append((_ORT_NAMES[Provider.CUDA], cuda_options()))  # TensorRT hands what it cannot run to CUDA
        elif p is Provider.CUDA:
            out.append((_ORT_NAMES[p], cuda_options()))
    cpu = _ORT_NAMES[Provider.CPU]
    if cpu not in out:
        out.append(cpu)
    return out


def _manifest(graph: Path) -> dict[str, Any]:
    from .manifest import load_manifest

    return load_manifest(graph.parent).data


def _graph_inputs(manifest: dict[str, Any], graph: Path) -> list[dict[str, Any]]:
    for parts in manifest["graphs"].values():
        for part in ("encoder", "decoder"):
            if isinstance(parts.get(part), dict) and parts[part].get("file") == graph.name:
                return list(parts[part]["inputs"])
    return []
