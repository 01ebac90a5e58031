"""Decoder-only generation (SmolVLM): one prefill graph over image + prompt, then the cached step graph.

The prefill plays the encoder's role: it runs once per batch and returns every layer's K/V [B, kv_heads, P, d]
for the prompt and the last position's logits, which pick the first token. Prompts of different lengths share one
batch the way transformers' generate batches them: left-padded with ``pad_token_id``, the attention mask 0 there
and position ids ``cumsum(mask) - 1`` (0 on the padding). The search (greedy or beam,
:mod:`edgecap.generation`) sees the padded prompt as its prefix, so its logits processors, length limits and
returned ids follow transformers' to the token; a row's answer is what follows the prefix, cut after the first EOS.
Beam search expands the prefill's cache per beam instead of prefilling every beam. On the CUDA/TensorRT providers
(or with ``EDGECAP_IO_BINDING=1`` on the CPU) the steps run with IO binding (:mod:`edgecap.device_loop`): the cache
stays on the device between steps and beams are reordered there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .device_loop import BoundStep, bound_device, interleaved
from .generation import GenerationOptions, beam_search, greedy_search

StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]], tuple[np.ndarray, list[np.ndarray]]]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids [B, P], attention_mask [B, P], position_ids [B, P]) of prompts left-padded to the longest."""
    length = max(len(p) for p in prompts)
    ids = np.full((len(prompts), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), length), dtype=np.int64)
    for row, p in enumerate(prompts):
        ids[row, length - len(p):] = p
        mask[row, length - len(p):] = 1
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)
    return ids, mask, positions


def answer_ids(row: np.ndarray, prompt_len: int, eos: tuple[int, ...]) -> list[int]:
    """The ids generated after a (padded) prompt of ``prompt_len`` ids, cut after the first EOS."""
    out: list[int] = []
    for t in row[prompt_len:].tolist():
        out.append(int(t))
        if t in eos:
            break
    return out


@dataclass(frozen=True)
class Prefill:
    """What the prefill graph returns for a batch, with the inputs it ran on.

    Attributes:
        input_ids, attention_mask, position_ids: the left-padded prompts [B, P].
        logits: the last position's logits [B, V] (the first token's).
        past: every layer's K then V [B, kv_heads, P, head_dim], interleaved.
        pooled: the mean vision-tower state per image [B, D] (None if the graph has none).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    position_ids: np.ndarray
    logits: np.ndarray
    past: list[np.ndarray]
    pooled: np.ndarray | None

    def select(self, rows: np.ndarray) -> "Prefill":
        """The prefill of a subset of the batch (its padding left as it is)."""
        return Prefill(self.input_ids[rows], self.attention_mask[rows], self.position_ids[rows], self.logits[rows],
                       [p[rows] for p in self.past], None if self.pooled is None else self.pooled[rows])

    def expanded(self, beams: int) -> "Prefill":
        """Every row repeated ``beams`` times, as beam search lays out its rows."""
        if beams == 1:
            return self
        rep = lambda x: np.repeat(x, beams, axis=0)  # noqa: E731
        return Prefill(rep(self.input_ids), rep(self.attention_mask), rep(self.position_ids), rep(self.logits),
                       [rep(p) for p in self.past], None if self.pooled is None else rep(self.pooled))


class CachedLMStep:
    """The search's step over a prefill: the first call (the whole prefix) returns the prefill's logits; each
    later call feeds one token per row with the attention mask grown by one and the next position.

    Args:
        step: the step graph call (new ids, mask, positions, past) -> (logits, present).
        prefill: the (beam-expanded) prefill.
        bound: the IO-bound step whose device holds the cache: the prefill's K/V are uploaded once, ``step``
            gets and returns device OrtValues, and beams are reordered on the device. None: numpy arrays.
    """

    def __init__(self, step: StepFn, prefill: Prefill, *, bound: BoundStep | None = None):
        self._step = step
        self._first: np.ndarray | None = prefill.logits
        self._bound = bound
        self.past = prefill.past if bound is None else [bound.upload(p) for p in prefill.past]
        self.mask = prefill.attention_mask
        self.next_pos = prefill.position_ids[:, -1] + 1

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        if self._first is not None:
            logits, self._first = self._first, None
            return logits
        self.mask = np.concatenate([self.mask, np.ones((len(self.mask), 1), dtype=np.int64)], axis=1)
        logits, self.past = self._step(input_ids, self.mask, self.next_pos[:, None], self.past)
        self.next_pos = self.next_pos + 1
        return logits

    def reorder(self, index: np.ndarray) -> None:
        if not np.array_equal(index, np.arange(len(index))):
            self.past = [p[index] for p in self.past] if self._bound is None else self._bound.gather(self.past, index)
            self.mask, self.next_pos = self.mask[index], self.next_pos[index]


class UncachedLMStep:
    """The no-cache reference: every call runs the prefill graph over the whole sequence so far."""

    def __init__(self, prefill_fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
                 pixel_values: np.ndarray, prompt_mask: np.ndarray):
        self._prefill, self._px, self._mask = prefill_fn, pixel_values, prompt_mask
        self._history: np.ndarray | None = None

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        self._history = input_ids if self._history is None else np.concatenate([self._history, input_ids], axis=1)
        grown = self._history.shape[1] - self._mask.shape[1]
        mask = np.concatenate([self._mask, np.ones((len(self._mask), grown), dtype=np.int64)], axis=1)
        positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)
        return self._prefill(self._px, self._history, mask, positions)

    def reorder(self, index: np.ndarray) -> None:
        self._history, self._px, self._mask = self._history[index], self._px[index], self._mask[index]


class DecoderOnlyLM:
    """Runs a decoder-only export's prefill (the manifest's ``encoder`` graph) and step (``decoder``) sessions.

    Args:
        manifest: the model's :class:`edgecap.manifest.Manifest` (decoder_only).
        prefill_session, step_session: ONNX Runtime sessions of the two graphs.
        pad_token_id: the id that left-pads shorter prompts.
    """

    def __init__(self, manifest: Any, prefill_session: Any, step_session: Any, pad_token_id: int):
        self.manifest = manifest
        self.prefill_session, self.step_session = prefill_session, step_session
        self.pad_token_id = int(pad_token_id)
        self._pre_io, self._step_io = manifest.io("encoder"), manifest.io("decoder")
        self._pre_out = [self._pre_io["logits"]] + interleaved(self._pre_io, "present") + (
            [self._pre_io["pooled"]] if self._pre_io.get("pooled") else [])
        self._step_out = [self._step_io["logits"]] + interleaved(self._step_io, "present")
        self._past_in = interleaved(self._step_io, "past")

    def run_prefill(self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
                    position_ids: np.ndarray) -> list[np.ndarray]:
        """One prefill graph call -> [logits, K/V interleaved per layer, pooled (if any)]."""
        io = self._pre_io
        return self.prefill_session.run(self._pre_out, {
            io["pixel_values"]: pixel_values, io["input_ids"]: input_ids, io["attention_mask"]: attention_mask,
            io["position_ids"]: position_ids})

    def prefill(self, pixel_values: np.ndarray, prompts: list[list[int]]) -> Prefill:
        """Left-pad ``prompts`` (token ids, one per image) and run the prefill over them and the images."""
        ids, mask, positions = left_pad(prompts, self.pad_token_id)
        outs = self.run_prefill(pixel_values, ids, mask, positions)
        n = 2 * self.manifest.num_layers
        return Prefill(ids, mask, positions, outs[0], list(outs[1:1 + n]), outs[1 + n] if len(outs) > 1 + n else None)

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
             past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One step graph call: new ids [N, T], the mask over past + new, their positions -> (logits, present)."""
        feeds = self._step_feeds(input_ids, attention_mask, position_ids)
        feeds.update(zip(self._past_in, past))
        outs = self.step_session.run(self._step_out, feeds)
        return outs[0], outs[1:]

    def _step_feeds(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                    position_ids: np.ndarray) -> dict[str, np.ndarray]:
        io = self._step_io
        return {io["input_ids"]: input_ids, io["attention_mask"]: attention_mask, io["position_ids"]: position_ids}

    def _bound_step(self, times: list[float]) -> BoundStep | None:
        """The IO-bound step when the step session's provider keeps the cache on a device (or
        ``EDGECAP_IO_BINDING=1`` asks for it on the CPU), else None."""
        device = bound_device(self.step_session)
        if device is None:
            return None
        return BoundStep(self.step_session, past_names=self._past_in, present_names=self._step_out[1:],
                         logits=self._step_out[0], device=device, times=times)

    def generate(self, pixel_values: np.ndarray, prompts: list[list[int]], opts: GenerationOptions, *,
                 use_cache: bool = True, timings: dict | None = None) -> list[tuple[list[int], float]]:
        """(answer ids, mean log-probability) per image: one padded batch, greedy or beam search.

        ``timings`` (if given) gets ms of the prefill ("encoder"), of the step graph calls ("decoder_rest") and
        their count ("decoder_steps"); the first token comes from the prefill, so there is no "decoder_first".
        """
        t0 = time.perf_counter()
        pre = self.prefill(pixel_values, prompts)
        if timings is not None:
            timings["encoder"] = timings.get("encoder", 0.0) + (time.perf_counter() - t0) * 1e3
        return self.decode(pre, opts, pixel_values=None if use_cache else pixel_values, timings=timings)

    def decode(self, pre: Prefill, opts: GenerationOptions, *, pixel_values: np.ndarray | None = None,
               timings: dict | None = None) -> list[tuple[list[int], float]]:
        """(answer ids, mean log-probability) per row of a prefill; with ``pixel_values``, the uncached reference
        path (the prefill graph over the whole sequence at every step) instead of the step graph."""
        step_ms: list[float] = []

        def timed_step(*args: Any) -> tuple[np.ndarray, list[np.ndarray]]:
            t = time.perf_counter()
            out = self.step(*args)
            step_ms.append((time.perf_counter() - t) * 1e3)
            return out

        if pixel_values is None and (bound := self._bound_step(step_ms)) is not None:
            stepper: Any = CachedLMStep(lambda ids, mask, pos, past: bound(self._step_feeds(ids, mask, pos), past),
                                        pre.expanded(opts.num_beams), bound=bound)
        elif pixel_values is None:
            stepper = CachedLMStep(timed_step, pre.expanded(opts.num_beams))
        else:
            rows = np.repeat(np.arange(len(pre.input_ids)), opts.num_beams)
            stepper = UncachedLMStep(lambda px, ids, m, pos: self.run_prefill(px, ids, m, pos)[0],
                                     pixel_values[rows], pre.attention_mask[rows])
        search = greedy_search if opts.num_beams == 1 else beam_search
        seqs, confidence = search(stepper, pre.input_ids, opts)
        if timings is not None:
            timings["decoder_rest"] = timings.get("decoder_rest", 0.0) + float(sum(step_ms))
            timings["decoder_steps"] = timings.get("decoder_steps", 0) + len(step_ms)
        prompt_len = pre.input_ids.shape[1]
        return [(answer_ids(row, prompt_len, opts.eos_token_id), float(c)) for row, c in zip(seqs, confidence)]
