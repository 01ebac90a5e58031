"""Greedy and beam search in numpy over a KV-cached decoder step, token-identical to transformers' ``generate``.

The loop mirrors transformers 4.5x/5.x: logits processors in the same order (repetition penalty, no-repeat n-gram,
min length, min new tokens, forced BOS, forced EOS), greedy on processed logits, and the vectorised beam search (top 2*num_beams candidates
on accumulated float32 log-probs, finished hypotheses merged by length-penalised score, the same early-stopping
heuristic). Arithmetic stays in float32 where transformers computes in float32, so scores round the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Protocol

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding settings; defaults come from the model's generation config recorded in the manifest.

    Attributes:
        max_new_tokens: tokens to generate at most (the prefix is not counted); None defers to ``max_length``.
        min_new_tokens: EOS is forbidden until this many tokens were generated.
        min_length: EOS is forbidden while the sequence (start token included) is shorter than this.
        num_beams: 1 for greedy search, more for beam search.
        length_penalty: exponent of the length normalisation of finished beam scores.
        early_stopping: True, False or "never", as in transformers.
        no_repeat_ngram_size: forbid repeating any n-gram of this size (0 disables).
        repetition_penalty: divide positive / multiply negative scores of seen tokens (1.0 disables).
        eos_token_id: ids that end a sequence.
        pad_token_id: id written after a sequence ended.
        decoder_start_token_id: the first decoder input id.
        max_length: the checkpoint's cap on the whole sequence, prefix included (transformers' ``max_length``);
            it applies only when ``max_new_tokens`` is None, as in transformers.
        forced_bos_token_id: the only token allowed as the first one after the start token (None: any).
        forced_eos_token_id: the only token allowed as the last one the length limit leaves room for.
        length_cap: where the model's default ``max_new_tokens`` stops, prefix included (transformers caps its
            default length at the generating model's ``max_position_embeddings``: BLIP); dropped when the caller
            sets max_new_tokens or max_length, as transformers does.
    """

    max_new_tokens: int | None
    decoder_start_token_id: int
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    min_new_tokens: int = 0
    min_length: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    max_length: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    length_cap: int | None = None

    def new_tokens(self, prefix_len: int) -> int:
        """The token budget after a decoder prefix of ``prefix_len`` ids (start token and prompt)."""
        if self.max_new_tokens is not None:
            if self.length_cap is not None:  # transformers: max_length = min(default + prefix, positions)
                if prefix_len >= self.length_cap:
                    raise InputError(f"the decoder prefix (start token and prompt) is {prefix_len} tokens and the "
                                     f"model's default length stops at {self.length_cap}: nothing left to generate; "
                                     "pass max_new_tokens or shorten the prompt")
                return min(self.max_new_tokens, self.length_cap - prefix_len)
            return self.max_new_tokens
        budget = int(self.max_length or 0) - prefix_len
        if budget < 1:
            raise InputError(f"the decoder prefix (start token and prompt) is {prefix_len} tokens, max_length is "
                             f"{self.max_length}: nothing left to generate; pass max_new_tokens or shorten the prompt")
        return budget

    def updated(self, **overrides: Any) -> "GenerationOptions":
        """Return a copy with the given non-None overrides applied and checked."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InputError(f"unknown generation option(s) {unknown}; expected some of {sorted(names)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        if given.get("decoder_start_token_id", self.decoder_start_token_id) != self.decoder_start_token_id:
            raise InputError(f"decoder_start_token_id cannot be changed per call: the decoder prefix starts with the "
                             f"model's start token {self.decoder_start_token_id}")
        if "max_length" in given and "max_new_tokens" not in given:
            given["max_new_tokens"] = None  # the caller asked for a total length, as transformers' max_length=
        if "max_length" in given or "max_new_tokens" in given:
            given.setdefault("length_cap", None)  # a length the caller sets is not capped, as in transformers
        opts = replace(self, **given)
        if isinstance(opts.eos_token_id, (int, np.integer)):
            opts = replace(opts, eos_token_id=(opts.eos_token_id,))
        opts.check()
        return opts

    def check(self) -> None:
        def whole(name: str, value: Any, low: int, optional: bool = False) -> None:
            if value is None and optional:
                return
            if not isinstance(value, (int, np.integer)) or value < low:
                raise InputError(f"{name} must be a whole number >= {low}, got {value!r}")

        for name, low in (("num_beams", 1), ("min_new_tokens", 0), ("min_length", 0), ("no_repeat_ngram_size", 0),
                          ("decoder_start_token_id", 0)):
            whole(name, getattr(self, name), low)
        for name, low in (("max_new_tokens", 1), ("max_length", 1), ("pad_token_id", 0), ("forced_bos_token_id", 0),
                          ("forced_eos_token_id", 0)):
            whole(name, getattr(self, name), low, optional=True)
        if not isinstance(self.eos_token_id, (tuple, list)):
            raise InputError(f"eos_token_id must be a token id or a list of them, got {self.eos_token_id!r}")
        for t in self.eos_token_id:
            whole("eos_token_id", t, 0)
        for name in ("length_penalty", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise InputError(f"{name} must be a number, got {value!r}")
        if self.max_new_tokens is None and self.max_length is None:
            raise InputError("set max_new_tokens (or max_length): the model records neither")
        if self.max_length is not None and self.max_length < 2:
            raise InputError(f"max_length must be >= 2 (the start token and one more), got {self.max_length}")
        if not self.repetition_penalty > 0:
            raise InputError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.early_stopping not in (True, False, "never"):
            raise InputError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")


class DecoderStep(Protocol):
    """One decoder call: new input ids [N, T] and the cache state -> last-position logits [N, V]."""

    def __call__(self, input_ids: np.ndarray) -> np.ndarray: ...


@dataclass
class Stepper:
    """Adapts a graph call ``fn(input_ids, past) -> (logits, present)`` into a stateful step with beam reordering."""

    fn: Callable[[np.ndarray, list[np.ndarray]], tuple[np.ndarray, list[np.ndarray]]]
    past: list[np.ndarray]

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        logits, self.past = self.fn(input_ids, self.past)
        return logits

    def reorder(self, index: np.ndarray) -> None:
        if not np.array_equal(index, np.arange(len(index))):
            self.past = [p[index] for p in self.past]


class PositionLimit:
    """A step that refuses, with one InputError line, to feed the decoder more tokens than its learned position table
    holds: where transformers' generate stops with an IndexError and the graph with an ONNX Runtime Gather error.
    It fails at the same length as transformers, not before decoding: most answers end well before a large
    max_new_tokens, and the last token generated is never fed."""

    def __init__(self, step: DecoderStep, positions: int):
        self._step = step
        self._positions = positions
        self._fed = 0

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        fed = self._fed + int(input_ids.shape[1])
        if fed > self._positions:
            raise InputError(f"the sequence reached {fed} tokens (start token and prompt included), more than "
                             f"the {self._positions} positions the model's decoder holds; lower max_new_tokens or "
                             "max_length")
        self._fed = fed
        return self._step(input_ids)

    def reorder(self, index: np.ndarray) -> None:
        self._step.reorder(index)


def _neg_inf_like_eos(scores: np.ndarray, eos: tuple[int, ...]) -> None:
    scores[:, list(eos)] = -np.inf


def _force(scores: np.ndarray, token: int) -> None:
    scores[:] = -np.inf
    scores[:, token] = 0.0


def process_scores(seqs: np.ndarray, scores: np.ndarray, opts: GenerationOptions, prompt_len: int = 1,
                   max_length: int | None = None) -> np.ndarray:
    """Apply transformers' logits processors, in its order, to scores [N, V] given sequences [N, L] (in place);
    the first ``prompt_len`` ids of each sequence are the decoder prefix (start token and prompt) and
    ``max_length`` the whole sequence's limit (where a forced EOS goes)."""
    cur_len = seqs.shape[1]
    if opts.repetition_penalty != 1.0:
        rows = np.repeat(np.arange(seqs.shape[0]), cur_len)
        cols = seqs.reshape(-1)
        seen = scores[rows, cols]
        pen = np.float32(opts.repetition_penalty)
        scores[rows, cols] = np.where(seen < 0, seen * pen, seen / pen)
    n = opts.no_repeat_ngram_size
    if n and cur_len >= n:
        windows = np.lib.stride_tricks.sliding_window_view(seqs, n, axis=1)  # [N, L-n+1, n]
        prefix = seqs[:, cur_len + 1 - n:]  # the last n-1 tokens
        match = np.all(windows[:, :, :-1] == prefix[:, None, :], axis=2)
        r, w = np.nonzero(match)
        scores[r, windows[r, w, -1]] = -np.inf
    if opts.eos_token_id:
        if opts.min_length > 0 and cur_len < opts.min_length:
            _neg_inf_like_eos(scores, opts.eos_token_id)
        if opts.min_new_tokens > 0 and cur_len - prompt_len < opts.min_new_tokens:
            _neg_inf_like_eos(scores, opts.eos_token_id)
    if opts.forced_bos_token_id is not None and cur_len == 1:
        _force(scores, opts.forced_bos_token_id)
    if opts.forced_eos_token_id is not None and max_length is not None and cur_len == max_length - 1:
        _force(scores, opts.forced_eos_token_id)
    return scores


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k along the last axis, sorted descending; ties keep the lower index first."""
    if k < x.shape[-1]:
        part = np.argpartition(-x, k - 1, axis=-1)[..., :k]
    else:
        part = np.broadcast_to(np.arange(x.shape[-1]), x.shape).copy()
    vals = np.take_along_axis(x, part, axis=-1)
    order = np.lexsort((part, -vals), axis=-1)
    idx = np.take_along_axis(part, order, axis=-1)
    return np.take_along_axis(x, idx, axis=-1), idx


def greedy_search(step: Stepper, prefix: np.ndarray, opts: GenerationOptions) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decoding.

    Args:
        step: the cached decoder step; its first call gets the whole prefix (a prefill), later calls one token.
        prefix: [batch, P] decoder prefix: the start token, then the prompt's ids if any.
        opts: decoding settings.

    Returns:
        (sequences [batch, L] starting with the prefix, mean log-probability per sequence of the tokens it
        generated, under the model's unprocessed distribution: a confidence in (-inf, 0]).
    """
    seqs = np.asarray(prefix, dtype=np.int64)
    batch, prompt_len = seqs.shape
    eos = np.asarray(opts.eos_token_id, dtype=np.int64)
    pad = opts.pad_token_id if opts.pad_token_id is not None else (int(eos[0]) if eos.size else 0)
    unfinished = np.ones(batch, dtype=bool)
    logp_sum = np.zeros(batch, dtype=np.float64)
    counted = np.zeros(batch, dtype=np.int64)
    rows = np.arange(batch)
    budget = opts.new_tokens(prompt_len)
    for t in range(budget):
        logits = step(seqs if t == 0 else seqs[:, -1:]).astype(np.float32, copy=True)
        raw_logp = _log_softmax(logits)
        scores = process_scores(seqs, logits, opts, prompt_len, prompt_len + budget)
        nxt = scores.argmax(axis=-1).astype(np.int64)
        logp_sum += np.where(unfinished, raw_logp[rows, nxt], 0.0)
        counted += unfinished
        if eos.size:
            nxt = np.where(unfinished, nxt, pad)
            unfinished &= ~np.isin(nxt, eos)
        seqs = np.concatenate([seqs, nxt[:, None]], axis=1)
        if not unfinished.any():
            break
    return seqs, logp_sum / np.maximum(counted, 1)


def beam_search(step: Stepper, prefix: np.ndarray, opts: GenerationOptions) -> tuple[np.ndarray, np.ndarray]:
    """Beam search over a cache already expanded to batch * num_beams rows.

    Args:
        step: the cached decoder step; its first call gets the whole prefix (a prefill), later calls one token.
        prefix: [batch, P] decoder prefix: the start token, then the prompt's ids if any.
        opts: decoding settings.

    Returns:
        (the best sequence per item [batch, L], its mean token log-probability, recovered from the
        length-penalised beam score).
    """
    k = opts.num_beams
    eos = np.asarray(opts.eos_token_id, dtype=np.int64)
    keep = max(2, 1 + eos.size) * k
    top_mask = np.arange(keep) < k
    prefix = np.asarray(prefix, dtype=np.int64)
    batch, prompt_len = prefix.shape
    max_length = prompt_len + opts.new_tokens(prompt_len)
    cur_len = prompt_len
    if eos.size:
        # transformers: `pad_token_id or eos_token_id[0]` -- a pad id of 0 falls through to EOS.
        fill = opts.pad_token_id if opts.pad_token_id else int(eos[0])
    else:
        fill = -1
    f32 = np.float32
    big = f32(-1.0e9)
    running = np.full((batch, k, max_length), fill, dtype=np.int64)
    running[:, :, :prompt_len] = prefix[:, None, :]
    sequences = running.copy()
    running_scores = np.zeros((batch, k), dtype=f32)
    running_scores[:, 1:] = big
    beam_scores = np.full((batch, k), big, dtype=f32)
    finished = np.zeros((batch, k), dtype=bool)
    improvable = np.ones((batch, 1), dtype=bool)
    running_idx = np.full((batch, k, max_length - cur_len), -1, dtype=np.int32)
    beam_idx = running_idx.copy()
    batch_offset = (np.arange(batch) * k)[:, None]
    while True:
        flat = running[:, :, :cur_len].reshape(batch * k, cur_len)
        logits = step(flat if cur_len == prompt_len else flat[:, -1:]).astype(f32, copy=False)
        log_probs = process_scores(flat, _log_softmax(logits), opts, prompt_len, max_length)
        vocab = log_probs.shape[-1]
        acc = (log_probs.reshape(batch, k, vocab) + running_scores[:, :, None]).reshape(batch, k * vocab)
        topk_lp, topk_ix = _topk(acc, keep)
        src_beam = topk_ix // vocab
        topk_ids = topk_ix % vocab
        topk_seqs = np.take_along_axis(running, src_beam[:, :, None], axis=1)
        topk_seqs[:, :, cur_len] = topk_ids
        topk_bidx = np.take_along_axis(running_idx, src_beam[:, :, None], axis=1)
        topk_bidx[:, :, cur_len - prompt_len] = src_beam + batch_offset
        hits = np.isin(topk_ids, eos) | (cur_len + 1 >= max_length)

        # e. the best num_beams unfinished continuations run on
        run_lp = topk_lp + hits.astype(f32) * big
        nxt = _topk(run_lp, k)[1]
        running = np.take_along_axis(topk_seqs, nxt[:, :, None], axis=1)
        running_scores = np.take_along_axis(run_lp, nxt, axis=1)
        running_idx = np.take_along_axis(topk_bidx, nxt[:, :, None], axis=1)

        # f. finished candidates among the top num_beams compete with the kept finished hypotheses
        just_done = hits & top_mask[None, :]
        fin_lp = topk_lp / f32((cur_len + 1 - prompt_len) ** opts.length_penalty)
        full = np.all(finished, axis=-1, keepdims=True) & (opts.early_stopping is True)
        fin_lp = fin_lp + full.astype(f32) * big
        fin_lp = fin_lp + (~improvable).astype(f32) * big
        fin_lp = fin_lp + (~just_done).astype(f32) * big
        merged_scores = np.concatenate([beam_scores, fin_lp], axis=1)
        best = _topk(merged_scores, k)[1]
        sequences = np.take_along_axis(np.concatenate([sequences, topk_seqs], axis=1), best[:, :, None], axis=1)
        beam_scores = np.take_along_axis(merged_scores, best, axis=1)
        beam_idx = np.take_along_axis(np.concatenate([beam_idx, topk_bidx], axis=1), best[:, :, None], axis=1)
        finished = np.take_along_axis(np.concatenate([finished, just_done], axis=1), best, axis=1)

        step.reorder(running_idx[:, :, cur_len - prompt_len].reshape(-1).astype(np.intp))
        cur_len += 1
        if opts.early_stopping == "never" and opts.length_penalty > 0.0:
            best_len = max_length - prompt_len
        else:
            best_len = cur_len - prompt_len
        best_possible = running_scores[:, :1] / f32(best_len ** opts.length_penalty)
        worst_done = np.where(finished, beam_scores.min(axis=1, keepdims=True), big)
        improvable = improvable & np.any(best_possible > worst_done, axis=-1, keepdims=True)
        go_on = improvable.any() and not (finished.all() and opts.early_stopping is True) and not hits.all()
        if not go_on:
            break
    best_idx = beam_idx[:, 0, :]
    generated = ((best_idx + 1) != 0).sum(axis=1)
    length = prompt_len + int(generated.max())
    mean_logp = beam_scores[:, 0].astype(np.float64) * generated ** opts.length_penalty / np.maximum(generated, 1)
    return sequences[:, 0, :length], mean_logp


def strip_sequence(row: np.ndarray, eos: tuple[int, ...], prompt_len: int = 1) -> list[int]:
    """Drop the decoder start token and everything after the first generated EOS (the padding transformers adds).

    Args:
        row: one sequence as generate returns it: the prefix of ``prompt_len`` ids (start token and prompt), then
            the generated ids and padding.
        eos: ids that end a sequence.
        prompt_len: the prefix length; the prompt's ids are kept as they are (an EOS among them ends nothing).
    """
    out = [int(t) for t in row[1:prompt_len]]
    for t in row[prompt_len:].tolist():
        out.append(int(t))
        if t in eos:
            break
    return out
