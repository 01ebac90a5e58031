"""Attribute accuracy of a captioner on held-out synthetic scenes (seeds never used in training)."""

from __future__ import annotations

from typing import Any

from . import synth
from .captioner import Captioner
from .errors import InputError


def evaluate_synth(cap: Captioner, *, scenes: int = 500, start_seed: int = synth.HELD_OUT_SEED_START,
                   batch_size: int = 16, progress: bool = False, **options: Any) -> dict[str, Any]:
    """Caption ``scenes`` held-out scenes and grade each attribute with the caption parser.

    Args:
        cap: the captioner.
        scenes: how many scenes (seeds start_seed .. start_seed + scenes - 1).
        start_seed: first seed; must be in the held-out range.
        batch_size: images per captioner batch.
        progress: progress bar on stderr.
        **options: generation options.

    Returns:
        {"scenes", "start_seed", "accuracy": {attribute: share}, "exact_reference": share of captions equal to
        the canonical reference, "captions": [...]}.

    Raises:
        InputError: ``scenes`` or ``batch_size`` below 1, or a start seed outside the held-out range.
    """
    from tqdm import tqdm

    if not synth.is_held_out_seed(start_seed):
        raise InputError(f"evaluation seeds must be >= {synth.HELD_OUT_SEED_START} (held out, never trained on), "
                         f"got {start_seed}; omit the start seed to use the default")
    for name, value in (("scenes", scenes), ("batch_size", batch_size)):
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    pairs, texts = [], []
    seeds = list(range(start_seed, start_seed + scenes))
    with tqdm(total=scenes, desc="evaluate", unit="scene", disable=not progress) as bar:
        for i in range(0, scenes, batch_size):
            rendered = [synth.render_scene(s) for s in seeds[i:i + batch_size]]
            outs = cap.caption([img for img, _ in rendered], **options)
            for (_, spec), out in zip(rendered, outs):
                pairs.append((spec, out.text))
                texts.append(out.text)
            bar.update(len(rendered))
    return {
        "scenes": scenes,
        "start_seed": start_seed,
        "accuracy": synth.attribute_accuracy(pairs),
        "exact_reference": sum(t == s.caption() for s, t in pairs) / max(1, len(pairs)),
        "captions": texts,
    }
