"""Parity of a decoder-only export (SmolVLM) with transformers: pixels, prompt ids, prefill, cached steps, tokens.

What is checked (the tolerances are :mod:`edgecap_export.validate`'s):

* pixel values: the runtime's numpy preprocessing vs the checkpoint's image processor, within 1e-4;
* prompt ids: the runtime's chat rendering (no jinja) + ``tokenizers`` vs the processor's input_ids, for the
  family's prompts and texts with leading/trailing spaces, newlines and non-ASCII letters;
* the prefill over a left-padded batch of prompts of different lengths: every layer's K/V and the last logits;
* the step graph along forced tokens (cached, one token per call) and the prefill over the whole sequence
  (uncached) vs transformers' logits at each position;
* generated ids identical to transformers' ``generate`` (the new ids after the prompt, cut after the first EOS),
  greedy and beam search, batch 1 and a batch of 3 prompts of different lengths (a padded batch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .families import family_for
from .families.smolvlm import chat_text, processor_for
from .validate import ATOL, RTOL, compare, reference_pixels, test_images

PIXEL_ATOL = 1e-4
# Texts whose tokenization the rendering must reproduce besides the family's validation prompts.
EDGE_TEXTS = (" Is the gate open? ", "two\nlines", "\tTab and  double  space", "Ünïcödé café, 日本の門?", "")


def validate_decoder_only(hf_model: Any, model: str, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Run the decoder-only parity grid; returns the report the manifest records (``passed``, ``mismatches``)."""
    import torch
    from tqdm import tqdm

    from edgecap.decoder_only import CachedLMStep, answer_ids

    from .validate import validating_captioner

    cap = validating_captioner(out)
    family = family_for(hf_model.config)
    results: dict[str, Any] = {}
    mismatches: list[str] = []
    images = test_images(3)
    px_ours = cap.preprocess(images)
    px_ref = reference_pixels(model, images, one_tile=True)
    if px_ref is not None:
        compare("preprocess.pixel_values", px_ours, px_ref, results, mismatches, atol=PIXEL_ATOL, rtol=0.0)
    px = px_ref if px_ref is not None else px_ours

    proc = processor_for(model)
    bad_prompts = []
    for text in family.validation_prompts + EDGE_TEXTS:
        ref = proc(text=[chat_text(proc, text)], images=[[np.zeros((8, 8, 3), np.uint8)]])["input_ids"][0]
        if cap.prompts.prefix(text) != [int(t) for t in ref]:
            bad_prompts.append(text)
    results["prompt.ids"] = {"texts": len(family.validation_prompts + EDGE_TEXTS), "ok": not bad_prompts}
    mismatches += [f"prompt {t!r}: edgecap's rendered ids differ from the processor's" for t in bad_prompts]

    prompts = list(family.validation_prompts)
    inputs = family.reference_inputs(hf_model, torch.from_numpy(px), prompts)
    mask = inputs["attention_mask"]
    pre = cap.lm.prefill(px, [cap.prompts.prefix(p) for p in prompts])
    if not np.array_equal(pre.input_ids, inputs["input_ids"].numpy()):
        mismatches.append("prefill input_ids: edgecap's left-padded batch differs from the processor's")
    with torch.no_grad():
        ref = hf_model(**inputs, position_ids=_positions(mask), use_cache=True)
    compare("prefill.logits", pre.logits, ref.logits[:, -1].numpy(), results, mismatches)
    for i, layer in enumerate(ref.cache.layers):
        compare(f"prefill.present_k.{i}", pre.past[2 * i], layer.keys.numpy(), results, mismatches)
        compare(f"prefill.present_v.{i}", pre.past[2 * i + 1], layer.values.numpy(), results, mismatches)

    # Forced tokens after the prompts: cached steps and one uncached prefill vs transformers' logits
    vocab = int(cap.manifest.data["architecture"]["vocab_size"])
    forced = np.random.default_rng(0).integers(0, vocab, (len(prompts), 4))
    ids = torch.cat([inputs["input_ids"], torch.from_numpy(forced)], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(torch.from_numpy(forced))], dim=1)
    with torch.no_grad():
        ref_logits = hf_model(input_ids=ids, attention_mask=full_mask, pixel_values=inputs["pixel_values"],
                              position_ids=_positions(full_mask)).logits.numpy()
    stepper = CachedLMStep(cap.lm.step, pre)
    stepper(pre.input_ids)
    prompt_len = pre.input_ids.shape[1]
    for t in range(forced.shape[1]):
        logits = stepper(forced[:, t:t + 1])
        compare(f"step.logits.cached.pos{t}", logits, ref_logits[:, prompt_len + t], results, mismatches)
    full = full_mask.numpy()
    uncached = cap.lm.run_prefill(px, ids.numpy(), full, _positions(full_mask).numpy())[0]
    compare("prefill.logits.uncached.last", uncached, ref_logits[:, -1], results, mismatches)

    defaults = cap.defaults
    beam_n = defaults.num_beams if defaults.num_beams > 1 else 3
    grid = [(b, mode) for b in (1, 3) for mode in ("greedy", "beam")]
    tokens: dict[str, Any] = {}
    for b, mode in tqdm(grid, desc="parity", unit="case", disable=not progress, leave=False):
        kw = {"num_beams": 1 if mode == "greedy" else beam_n}
        batch = family.reference_inputs(hf_model, torch.from_numpy(px[:b]), prompts[:b])
        with torch.no_grad():
            # deterministic, one sequence per image, whatever sampling settings the checkpoint holds
            gen = hf_model.generate(**batch, **kw, do_sample=False, num_return_sequences=1).numpy()
        ref_ids = [answer_ids(row, batch["input_ids"].shape[1], defaults.eos_token_id) for row in gen]
        ours = cap.generate(px[:b], prompts[:b], **kw)
        same = ours == ref_ids
        case = f"{mode}.batch{b}"
        tokens[case] = {"identical": same, "num_beams": kw["num_beams"], "tokens": sum(len(r) for r in ours)}
        if not same:
            bad = next(i for i, (a, r) in enumerate(zip(ours, ref_ids)) if a != r)
            mismatches.append(f"generate {case}: image {bad} edgecap {ours[bad][:12]} vs transformers "
                              f"{ref_ids[bad][:12]}")
    return {"passed": not mismatches, "mismatches": mismatches, "atol": ATOL, "rtol": RTOL, "outputs": results,
            "generate": tokens, "images": len(images), "reference_preprocess": px_ref is not None}


def _positions(mask: Any) -> Any:
    """transformers' position ids for an attention mask: cumsum - 1, 0 on the padding."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
