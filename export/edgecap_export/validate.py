"""Parity of an exported directory with transformers: preprocessing, encoder and decoder outputs, and tokens.

Tolerances (fp32): |ort - torch| <= ATOL + RTOL * |torch| for the cross K/V, pooled embedding and logits. Tokens
must be identical for greedy search and for beam search at batch 1 and 3 on distinct images, for every prompt form
the family supports (unconditional, and a caption prefix for BLIP; the tasks for Florence-2, whose encoder outputs
and logits are compared under its default task); that is the check that matters: an export that
says different words is a bug. A prompt's prefix ids must equal the ones transformers' generate starts from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecap.generation import strip_sequence

from .families import family_for

ATOL = 1e-4
RTOL = 1e-3
PIXEL_ATOL = 1e-6
# Logits: float32 rounding in the layers before the head scales with the row's largest logit, not with each logit's
# own size, so a logit near zero in a row of logits near 20 can differ by 5e-4 (2.5e-5 of the row's largest) where
# the graphs are right; transformers' own sdpa and eager attentions differ by as much. Each logit may also differ by
# this fraction of its row's largest |logit|.
ROW_RTOL = 1e-4


def test_images(count: int = 3, height: int = 240, width: int = 320) -> list[np.ndarray]:
    """Distinct deterministic RGB images (gradients, blocks and noise) that need no external data."""
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:height, 0:width]
    images = []
    for i in range(count):
        img = np.zeros((height, width, 3), dtype=np.float64)
        img[..., 0] = (xx / width) * 255 * ((i + 1) % 2)
        img[..., 1] = (yy / height) * 255
        img[..., 2] = ((xx // (16 + 8 * i) + yy // (16 + 8 * i)) % 2) * 200
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        img[y0:y0 + height // 3, x0:x0 + width // 3] = rng.integers(0, 256, 3)
        img += rng.normal(0, 12, img.shape)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return images


def compare(name: str, got: np.ndarray, ref: np.ndarray, results: dict, mismatches: list[str],
             atol: float = ATOL, rtol: float = RTOL, row_rtol: float = 0.0) -> None:
    """``got`` equals ``ref`` within atol + max(rtol * |ref|, row_rtol * the largest |ref| of its row)."""
    if got.shape != ref.shape:
        results[name] = {"ok": False, "shape": list(got.shape), "expected_shape": list(ref.shape)}
        mismatches.append(f"{name}: shape {list(got.shape)}, expected {list(ref.shape)}")
        return
    diff = float(np.max(np.abs(got.astype(np.float64) - ref))) if got.size else 0.0
    bound = rtol * np.abs(ref)
    if row_rtol and ref.size:
        bound = np.maximum(bound, row_rtol * np.max(np.abs(ref), axis=-1, keepdims=True))
    ok = bool(np.all(np.abs(got - ref) <= atol + bound))
    results[name] = {"max_abs_diff": diff, "atol": atol, "rtol": rtol, **({"row_rtol": row_rtol} if row_rtol else {}),
                     "ok": ok}
    if not ok:
        row = f", row_rtol {row_rtol:g}*max|ref| of the row" if row_rtol else ""
        mismatches.append(f"{name}: max abs diff {diff:.3g} > atol {atol:g} + rtol {rtol:g}*|ref|{row}")


def reference_pixels(model: str, images: list[np.ndarray], *, one_tile: bool = False) -> np.ndarray | None:
    """The checkpoint's own image processor output (Pillow backend), or None if it cannot be built here.
    ``one_tile``: an Idefics3 processor, given one image per sample, whose [B, 1, 3, H, W] is returned as
    [B, 3, H, W]."""
    from .checkpoint import pil_image_processor

    proc = pil_image_processor(model)
    if proc is None:
        return None
    if one_tile:  # the published SmolVLM processors split images into tiles; edgecap exports the one-tile path
        return np.asarray(proc(images=[[i] for i in images], do_image_splitting=False,
                               return_tensors="np")["pixel_values"][:, 0], dtype=np.float32)
    return np.asarray(proc(images=images, return_tensors="np")["pixel_values"], dtype=np.float32)


def validating_captioner(out: Path) -> Any:
    """The Captioner the parity grid runs. Its manifest reads validation "running" because this is the validation,
    so the runtime's warning about an export that stopped during validation is held back here (and only here)."""
    import logging

    from edgecap import Captioner
    from edgecap._log import logger
    from edgecap.captioner import UNFINISHED_VALIDATION

    class _Underway(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.msg is not UNFINISHED_VALIDATION

    underway = _Underway()
    logger.addFilter(underway)
    try:
        return Captioner(out)
    finally:
        logger.removeFilter(underway)


def validate_export(hf_model: Any, model: str, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Run the parity grid; returns the report recorded in the manifest (``passed``, ``mismatches``, details)."""
    import torch
    import transformers
    from tqdm import tqdm

    transformers.logging.set_verbosity_error()  # generate() warns about max_length vs max_new_tokens on every call
    if getattr(family_for(hf_model.config), "decoder_only", False):
        from .validate_decoder_only import validate_decoder_only

        return validate_decoder_only(hf_model, model, out, progress=progress)
    cap = validating_captioner(out)
    cfg = cap.image_config  # a processor that does not resize takes images of the model's size only
    images = test_images(3) if cfg.do_resize else test_images(3, cfg.height, cfg.width)
    results: dict[str, Any] = {}
    mismatches: list[str] = []

    px_ours = cap.preprocess(images)
    px_ref = reference_pixels(model, images)
    if px_ref is not None:
        compare("preprocess.pixel_values", px_ours, px_ref, results, mismatches, atol=PIXEL_ATOL, rtol=0.0)
    if cap.image_config.convert_rgb:  # transparency composited onto white, as the processor's convert_to_rgb
        rgba = [np.dstack([img, np.linspace(0, 255, img.shape[1]).astype(np.uint8)[None].repeat(img.shape[0], 0)])
                for img in images[:1]]
        ref_rgba = reference_pixels(model, rgba)
        if ref_rgba is not None:
            compare("preprocess.pixel_values.rgba", cap.preprocess(rgba), ref_rgba, results, mismatches,
                    atol=PIXEL_ATOL, rtol=0.0)
    px = px_ref if px_ref is not None else px_ours

    enc = cap.encode(px)
    family = family_for(hf_model.config)
    with torch.no_grad():
        ref_k, ref_v, ref_pooled = family.reference_cross_kv(
            hf_model, torch.from_numpy(px), cap.manifest.num_heads)
        for i, (k, v) in enumerate(zip(ref_k, ref_v)):
            compare(f"encoder.cross_k.{i}", enc.cross_k[i], k.numpy(), results, mismatches)
            compare(f"encoder.cross_v.{i}", enc.cross_v[i], v.numpy(), results, mismatches)
        if enc.pooled is not None:
            compare("encoder.pooled", enc.pooled, ref_pooled.numpy(), results, mismatches)

        # Decoder logits along a forced sequence, cached (one token per step) and uncached (all at once).
        start = cap.defaults.decoder_start_token_id
        vocab = cap.manifest.data["architecture"]["vocab_size"]
        forced = np.concatenate([np.full((3, 1), start), np.random.default_rng(0).integers(0, vocab, (3, 5))], 1)
        ref_logits = family.reference_logits(hf_model, torch.from_numpy(px), torch.from_numpy(forced))
    ref_logits = ref_logits.numpy()
    cached, uncached = _ort_logits(cap, enc, forced)
    for t in range(forced.shape[1]):
        compare(f"decoder.logits.cached.pos{t}", cached[t], ref_logits[:, t], results, mismatches, row_rtol=ROW_RTOL)
    compare("decoder.logits.uncached.last", uncached, ref_logits[:, -1], results, mismatches, row_rtol=ROW_RTOL)

    defaults = cap.defaults
    beam_n = defaults.num_beams if defaults.num_beams > 1 else 3
    grid = [(prompt, b, mode) for prompt in family.validation_prompts for b in (1, 3) for mode in ("greedy", "beam")]
    tokens: dict[str, Any] = {}
    for prompt, b, mode in tqdm(grid, desc="parity", unit="case", disable=not progress, leave=False):
        # the budget the defaults give this prompt's prefix (a default capped at the model's positions is shorter
        # after a prompt); the reference decodes deterministically, one sequence per image, whatever sampling
        # settings the checkpoint's generation config holds (the runtime does not sample)
        kw = {"num_beams": 1 if mode == "greedy" else beam_n,
              "max_new_tokens": defaults.new_tokens(len(cap.prompts.prefix(prompt)))}
        with torch.no_grad():
            ref, prompt_len = family.reference_generate(hf_model, model, torch.from_numpy(px[:b]), prompt, **kw,
                                                        do_sample=False, num_return_sequences=1)
        ref = ref.numpy()
        ref_ids = [strip_sequence(row, defaults.eos_token_id, prompt_len) for row in ref]
        ours = cap.generate(px[:b], prompt, **kw)
        same = ours == ref_ids
        case = f"{mode}.batch{b}" + _prompt_suffix(prompt, family.validation_prompts)
        tokens[case] = {"identical": same, "num_beams": kw["num_beams"], "tokens": sum(len(r) for r in ours)}
        if not same:
            bad = next(i for i, (a, r) in enumerate(zip(ours, ref_ids)) if a != r)
            mismatches.append(f"generate {case}: image {bad} edgecap {ours[bad][:12]} vs transformers "
                              f"{ref_ids[bad][:12]}")
        if prompt is not None and b == 1 and mode == "greedy":
            prefix, ref_prefix = cap.prompts.prefix(prompt), [int(t) for t in ref[0, :prompt_len]]
            results["prompt.prefix_ids"] = {"prompt": prompt, "ok": prefix == ref_prefix, "ids": prefix}
            if prefix != ref_prefix:
                mismatches.append(f"prompt {prompt!r}: edgecap prefix {prefix} vs transformers {ref_prefix}")
    return {"passed": not mismatches, "mismatches": mismatches, "atol": ATOL, "rtol": RTOL,
            "outputs": results, "generate": tokens, "images": len(images),
            "reference_preprocess": px_ref is not None}


def _prompt_suffix(prompt: str | None, prompts: tuple[str | None, ...]) -> str:
    """A grid case's prompt part: none when unconditional, ".prompt" for a family's one prompt form, else the
    prompt itself (Florence-2's tasks)."""
    if prompt is None:
        return ""
    return ".prompt" if sum(p is not None for p in prompts) == 1 else f".{prompt}"


def _ort_logits(cap: Any, enc: Any, forced: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Run the decoder graph step by step (cached) and once over the whole sequence (uncached)."""
    cross_feeds, empty = cap.decoder_inputs(enc, beams=1)
    past, cached = empty, []
    for t in range(forced.shape[1]):
        logits, past = cap.decoder_step(cross_feeds, forced[:, t:t + 1], past)
        cached.append(logits)
    uncached, _ = cap.decoder_step(cross_feeds, forced, empty)
    return cached, uncached
