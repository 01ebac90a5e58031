"""The Captioner: preprocess -> encoder (cross K/V once per image) -> cached decode loop -> text."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._log import logger
from .decoder_only import DecoderOnlyLM, Prefill
from .device_loop import DeviceStepper, bound_device, interleaved
from .errors import InputError, ManifestError, ModelError
from .generation import GenerationOptions, PositionLimit, Stepper, beam_search, greedy_search, strip_sequence
from .imaging import ImageConfig, load_image, preprocess, usable_cores
from .manifest import Manifest, load_manifest
from .models import resolve_model
from .prompting import PromptArg, PromptEncoder
from .tasks import DetectedObject, parse_objects, pure_text

PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class Caption:
    """One image's caption.

    Attributes:
        text: the decoded caption (it starts with the prompt's text when the prompt is the caption's start, as
            BLIP's processor decodes it).
        token_ids: the ids generate returns without the decoder start token (the prompt's ids included),
            cut after the first EOS; for a decoder-only model (SmolVLM), the answer's new ids only.
        timings: milliseconds per stage for the batch this caption was part of
            (preprocess, encoder, decoder_first, decoder_rest, total).
        confidence: mean log-probability of the generated tokens (0 is certain; lower is less sure).
        prompt: the prompt the caption was generated from (None: unconditional, or a task model's default task).
        objects: for detection-style tasks (Florence-2's ``<OD>``, ``<CAPTION_TO_PHRASE_GROUNDING>``), the
            labelled boxes in pixels of the original image, as ``post_process_generation`` returns them; the
            text is then their labels joined by ", ". None for text tasks.
    """

    text: str
    token_ids: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    confidence: float | None = None
    prompt: str | None = None
    objects: list[DetectedObject] | None = None


@dataclass(frozen=True)
class EncoderOutput:
    """Per-layer cross-attention K/V [B, heads, S, head_dim] and the pooled image embedding [B, D].

    ``prompt`` is the task prompt a prompt-reading encoder (Florence-2) ran with (None: the default task, or a model
    whose encoder reads no prompt); ``image_sizes`` the original images' (width, height) when encoded from images.
    A decoder-only model (SmolVLM) has no cross K/V (empty lists): its ``prefill`` of the images and ``prompt``.
    """

    cross_k: list[np.ndarray]
    cross_v: list[np.ndarray]
    pooled: np.ndarray | None
    prompt: str | None = None
    image_sizes: tuple[tuple[int, int], ...] | None = None
    prefill: Prefill | None = None

    @property
    def batch(self) -> int:
        return int(self.prefill.logits.shape[0] if self.prefill is not None else self.cross_k[0].shape[0])

    def select(self, rows: Sequence[int]) -> "EncoderOutput":
        """The encoder output of a subset of the batch."""
        idx = np.asarray(rows, dtype=np.intp)
        return EncoderOutput([k[idx] for k in self.cross_k], [v[idx] for v in self.cross_v],
                             None if self.pooled is None else self.pooled[idx], self.prompt,
                             None if self.image_sizes is None else tuple(self.image_sizes[i] for i in idx),
                             None if self.prefill is None else self.prefill.select(idx))


def _session(path: Path, providers: Sequence[str] | None, threads: int | None, *, spin: bool = True):
    """An ONNX Runtime session. ``spin=False`` lets the intra-op threads sleep as soon as a run ends: the encoder
    runs once per batch, and its threads spinning on after it would compete with the decoder's first steps
    (measured at ViT-GPT2 size on 2 cores: first decoder step 13 -> 8 ms, whole INT8 caption 267 -> 238 ms).
    The decoder keeps spinning: its steps follow each other within a fraction of a millisecond."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    from .providers import session_providers  # short names ("tensorrt", "cuda") -> ORT providers with options

    chosen = session_providers(providers, path)
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=chosen)
    except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types for unreadable graphs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load {path}: {first[:200]}; re-run `edgecap export`") from None


class _EncoderStreams:
    """Encode the images of a batch one by one, ``n`` at a time, each on one core (single-threaded runs of a
    second, lazily made session): what OpenVINO calls throughput streams. On 2 cores this beats one batched run
    whose operators split across both threads (measured, INT8 encoders at batch 8: Florence-2-base 25,972 ->
    21,857 ms, BLIP-base 5,431-5,482 -> 5,020-5,032 ms): an image's activations stay in its core's cache and
    no operator waits for the other thread. It also makes an image's encoder output independent of the rest of its
    batch (a dynamically quantized graph scales each activation over the whole tensor it sees). Images left over
    after the last full round of ``n`` run one by one on the multi-threaded session. The price is the second
    session's copy of the encoder's weights, made on the first batch of two or more images."""

    def __init__(self, n: int, make_session: Any):
        self.n = n
        self._make_session = make_session
        self._session: Any = None

    def run(self, main: Any, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = next(iter(feeds.values())).shape[0]
        if self.n < 2 or batch < 2:
            return main.run(names, feeds)
        if self._session is None:
            self._session = self._make_session()
        rows = [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(batch)]
        streamed = batch - batch % self.n
        parts = []
        if streamed:  # threads for this batch only: none outlive the call
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.n, thread_name_prefix="edgecap-encoder") as pool:
                parts = list(pool.map(lambda f: self._session.run(names, f), rows[:streamed]))
        parts += [main.run(names, f) for f in rows[streamed:]]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(names))]


# The warning for a manifest whose validation reads "running" (the export's own validation filters it out).
UNFINISHED_VALIDATION = ("%s: its export stopped during validation, so nothing checked it against transformers; "
                         "export it again")


def _warn_unless_validated(manifest: Manifest) -> None:
    """A model whose export failed its check against transformers, or died during it, still loads (to be looked
    at), but says so: its words may differ from transformers'."""
    v = manifest.data.get("validation") or {}
    if v.get("passed") is False:
        logger.warning("%s failed its export validation (%d mismatch(es) with transformers, listed in its "
                       "manifest.json): its captions may differ; export it again", manifest.directory,
                       len(v.get("mismatches") or []))
    elif v.get("status") == "running":
        logger.warning(UNFINISHED_VALIDATION, manifest.directory)


def _check_io(sess: Any, graph: dict, path: Path) -> None:
    """The manifest must describe the graph exactly: same input and output names."""
    for kind, actual in (("inputs", sess.get_inputs()), ("outputs", sess.get_outputs())):
        declared = [t["name"] for t in graph[kind]]
        found = [t.name for t in actual]
        if sorted(declared) != sorted(found):
            missing = sorted(set(declared) - set(found))[:4]
            extra = sorted(set(found) - set(declared))[:4]
            raise ManifestError(f"manifest and {path.name} disagree on {kind}: manifest-only {missing}, "
                                f"graph-only {extra}; re-export the model")


class Captioner:
    """Caption images with an exported model directory.

    Args:
        model_dir: a directory written by ``edgecap export`` (or "demo" for the bundled model).
        precision: "fp32" or "int8" (needs the int8 graphs in the directory).
        providers: ONNX Runtime execution providers, in priority order (default: CPU).
        threads: intra-op threads per session (default: ONNX Runtime's choice, the physical cores).
        streams: on the CPU, how many images of a batch the encoder runs at once, each single-threaded (default:
            ``threads``, else the usable cores; 1 encodes a batch as one multi-threaded run and saves the memory of
            a second encoder session).

    Example:
        >>> cap = Captioner("engines/vitgpt2")
        >>> cap.caption("frame.jpg").text
    """

    def __init__(self, model_dir: str | os.PathLike, *, precision: str = "fp32",
                 providers: Sequence[str] | None = None, threads: int | None = None,
                 streams: int | None = None):
        model_dir = resolve_model(model_dir)
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        self.manifest: Manifest = load_manifest(model_dir)
        _warn_unless_validated(self.manifest)
        self.precision = precision
        m = self.manifest.data
        try:
            self.image_config = ImageConfig.from_manifest(m["image"])
            self.defaults = self._default_options(m)
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{self.manifest.directory / 'manifest.json'} is incomplete or malformed "
                                f"({exc.__class__.__name__}: {exc}); re-run `edgecap export`") from None
        self._tokenizer = self._load_tokenizer(m)
        self.prompts = PromptEncoder.for_model(str(m.get("name") or self.manifest.directory.name),
                                               self.defaults.decoder_start_token_id, m.get("prompt"), self._tokenizer)
        self._enc_io = self.manifest.io("encoder")
        self._dec_io = self.manifest.io("decoder")
        enc_path = self.manifest.graph_path(precision, "encoder")
        dec_path = self.manifest.graph_path(precision, "decoder")
        self._encoder = _session(enc_path, providers, threads, spin=False)
        self._decoder = _session(dec_path, providers, threads)
        if streams is not None and (isinstance(streams, bool) or not isinstance(streams, int) or streams < 1):
            raise InputError(f"expected streams to be a whole number >= 1, got {streams!r}")
        on_cpu = self._encoder.get_providers() == ["CPUExecutionProvider"]
        self._streams = _EncoderStreams((streams or int(threads or 0) or usable_cores()) if on_cpu else 1,
                                        lambda: _session(enc_path, providers, 1, spin=False))
        _check_io(self._encoder, m["graphs"][precision]["encoder"], enc_path)
        _check_io(self._decoder, m["graphs"][precision]["decoder"], dec_path)
        self._dec_outputs = [self._dec_io["logits"]] + interleaved(self._dec_io, "present")
        # a decoder-only model (SmolVLM): the encoder graph is a prefill over image + prompt
        self.lm = DecoderOnlyLM(self.manifest, self._encoder, self._decoder, self.defaults.pad_token_id) \
            if self.manifest.decoder_only else None
        logger.debug("loaded %s (%s, providers=%s)", self.manifest.directory, precision,
                     self._decoder.get_providers())

    @staticmethod
    def _default_options(m: dict) -> GenerationOptions:
        g, s = m["generation"], m["special_tokens"]
        return GenerationOptions(
            max_new_tokens=None if g["max_new_tokens"] is None else int(g["max_new_tokens"]),
            max_length=None if g.get("max_length") is None else int(g["max_length"]),
            decoder_start_token_id=int(s["decoder_start_token_id"]),
            eos_token_id=tuple(int(t) for t in s.get("eos_token_id") or ()),
            pad_token_id=None if s.get("pad_token_id") is None else int(s["pad_token_id"]),
            min_new_tokens=int(g.get("min_new_tokens") or 0), min_length=int(g.get("min_length") or 0),
            num_beams=int(g.get("num_beams") or 1), length_penalty=float(g.get("length_penalty", 1.0)),
            early_stopping=g.get("early_stopping", False),
            no_repeat_ngram_size=int(g.get("no_repeat_ngram_size") or 0),
            repetition_penalty=float(g.get("repetition_penalty") or 1.0),
            forced_bos_token_id=None if g.get("forced_bos_token_id") is None else int(g["forced_bos_token_id"]),
            forced_eos_token_id=None if g.get("forced_eos_token_id") is None else int(g["forced_eos_token_id"]),
            length_cap=None if g.get("length_cap") is None else int(g["length_cap"]))

    def _load_tokenizer(self, m: dict):
        from tokenizers import Tokenizer

        path = self.manifest.directory / m["tokenizer"]["file"]
        if not path.is_file():
            raise ModelError(f"tokenizer missing: expected {path}; re-run `edgecap export`")
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception
            raise ModelError(f"cannot read {path}: {str(exc)[:160]}; re-run `edgecap export`") from None

    # -- stages -----------------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Any] | Any) -> np.ndarray:
        """Images (HxWx3 uint8 RGB arrays, PIL images or paths) -> float32 pixel values [B, 3, H, W]."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if self.manifest.data["image"].get("processor_type") == "Idefics3ImageProcessor":
            from .idefics3_image import preprocess_idefics3

            return preprocess_idefics3(images, self.manifest.data["image"])
        return preprocess(images, self.image_config)

    def _check_pixels(self, pixel_values: Any) -> np.ndarray:
        cfg = self.image_config
        expected = (3, cfg.height, cfg.width)
        if not isinstance(pixel_values, np.ndarray):
            raise InputError(f"expected pixel values as a float32 numpy array [B, {', '.join(map(str, expected))}], "
                             f"got {type(pixel_values).__name__}; use Captioner.preprocess(images)")
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != expected:
            raise InputError(f"expected pixel values of shape [B, {', '.join(map(str, expected))}], "
                             f"got {list(pixel_values.shape)}; use Captioner.preprocess(images)")
        if pixel_values.shape[0] == 0:
            raise InputError("expected at least one image, got an empty batch")
        return np.ascontiguousarray(pixel_values, dtype=np.float32)

    def encode(self, pixel_values: np.ndarray, prompt: str | None = None) -> EncoderOutput:
        """Run the encoder once: the cross-attention K/V of every decoder layer (and the pooled embedding).

        Args:
            pixel_values: float32 [B, 3, H, W] from `preprocess`.
            prompt: for a model whose encoder reads the prompt (Florence-2), the task prompt of the whole batch
                (None: the default task); for a decoder-only model (SmolVLM), the batch's prompt, run through the
                prefill with the images (None: the default prompt); other models ignore it (their prompt goes to
                the decoder).
        """
        px = self._check_pixels(pixel_values)
        if self.lm is not None:  # the prefill: images and the prompt together
            pre = self.lm.prefill(px, [self.prompts.prefix(prompt)] * px.shape[0])
            return EncoderOutput([], [], pre.pooled, prompt, prefill=pre)
        io = self._enc_io
        feeds = {io["pixel_values"]: px}
        if self.prompts.encodes_prompt:
            ids = self.prompts.encoder_ids(prompt)
            feeds[io["input_ids"]] = np.tile(np.asarray([ids], dtype=np.int64), (px.shape[0], 1))
        names = list(io["cross_k"]) + list(io["cross_v"]) + ([io["pooled"]] if io.get("pooled") else [])
        outs = self._streams.run(self._encoder, names, feeds)
        n = self.manifest.num_layers
        return EncoderOutput(outs[:n], outs[n:2 * n], outs[2 * n] if io.get("pooled") else None,
                             prompt if self.prompts.encodes_prompt else None)

    def _prompt_groups(self, prompts: list[str | None]) -> list[tuple[str | None, list[int]]]:
        """The rows each encoder run covers: all of them, or one run per prompt when the encoder reads it."""
        if not self.prompts.encodes_prompt:
            return [(None, list(range(len(prompts))))]
        groups: dict[str | None, list[int]] = {}
        for row, p in enumerate(prompts):
            groups.setdefault(p, []).append(row)
        return list(groups.items())

    @property
    def accepts_questions(self) -> bool:
        """True when the model answers free-text prompts about an image (``edgecap ask``), from the manifest."""
        return self.prompts.accepts_questions

    def check_prompt(self, prompt: str | None) -> None:
        """Raise InputError (one line) if this model cannot take ``prompt``; before any work is queued for it."""
        self._checked_prompts(prompt, 1)

    def _checked_prompts(self, prompt: PromptArg, batch: int) -> list[str | None]:
        """One prompt per image, each already turned into a prefix once so that a bad one fails before any work."""
        prompts = self.prompts.per_image(prompt, batch)
        for p in set(prompts):
            self.prompts.prefix(p)
        return prompts

    def options(self, **overrides: Any) -> GenerationOptions:
        """The model's generation defaults with ``overrides`` (None values ignored) applied."""
        opts = self.defaults.updated(**overrides)
        vocab = self.manifest.data["architecture"].get("vocab_size")
        for name in ("forced_bos_token_id", "forced_eos_token_id"):
            token = getattr(opts, name)
            if vocab is not None and token is not None and token >= int(vocab):
                raise InputError(f"{name} {token} is not a token of this model (vocabulary of {vocab})")
        return opts

    def generate(self, pixel_values: np.ndarray, prompt: PromptArg = None, *, use_cache: bool = True,
                 _timings: dict | None = None, **options: Any) -> list[list[int]]:
        """Generate token ids for a batch of pixel values.

        Args:
            pixel_values: float32 [B, 3, H, W] from `preprocess`.
            prompt: None (unconditional), one prompt for every image, or a list with one prompt (or None) per
                image; a model without a ``prompt`` section in its manifest takes none (InputError).
            use_cache: False recomputes the whole sequence every step (a reference path for tests).
            **options: any `GenerationOptions` field (max_new_tokens, num_beams, no_repeat_ngram_size, ...).

        Returns:
            One list of ids per image, as transformers returns them minus the leading decoder start token (so
            a prompt's ids come first), cut after the first EOS (the padding removed). A decoder-only model
            (SmolVLM) returns the new ids only (what follows the prompt in transformers' output).
        """
        opts = self.options(**options)
        px = self._check_pixels(pixel_values)
        prompts = self._checked_prompts(prompt, px.shape[0])
        if self.lm is not None:
            return [ids for ids, _ in self.lm.generate(px, [self.prompts.prefix(p) for p in prompts], opts,
                                                       use_cache=use_cache, timings=_timings)]
        out: list[list[int]] = [[] for _ in prompts]
        for group_prompt, rows in self._prompt_groups(prompts):
            t0 = time.perf_counter()
            enc = self.encode(px if len(rows) == len(prompts) else px[rows], group_prompt)
            if _timings is not None:
                _timings["encoder"] = _timings.get("encoder", 0.0) + (time.perf_counter() - t0) * 1e3
            decoded = self._generate_encoded(enc, opts, [prompts[r] for r in rows], use_cache=use_cache,
                                             timings=_timings)
            for row, (ids, _) in zip(rows, decoded):
                out[row] = ids
        return out

    def _generate_encoded(self, enc: EncoderOutput, opts: GenerationOptions, prompts: list[str | None], *,
                          use_cache: bool = True, timings: dict | None = None) -> list[tuple[list[int], float]]:
        """Decode each group of images that share a prefix as one batch (transformers batches prompts of one
        length; separate groups need no padding, so each row decodes as it would alone)."""
        if enc.prefill is not None:
            return self.lm.decode(enc.prefill, opts, timings=timings)
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, p in enumerate(prompts):
            groups.setdefault(tuple(self.prompts.prefix(p)), []).append(row)
        results: list[tuple[list[int], float]] = [([], 0.0)] * enc.batch
        for prefix, rows in groups.items():
            sub = enc if len(rows) == enc.batch else enc.select(rows)
            seqs, confidence = self._decode(sub, opts, np.asarray([prefix] * len(rows), dtype=np.int64),
                                            use_cache=use_cache, timings=timings)
            for row, seq, c in zip(rows, seqs, confidence):
                results[row] = (strip_sequence(seq, opts.eos_token_id, len(prefix)), float(c))
        return results

    def encode_images(self, images: Sequence[Any], prompt: str | None = None, *,
                      timings: dict[str, float] | None = None) -> EncoderOutput:
        """Preprocess and encode images (recording preprocess/encoder ms in ``timings``); see `caption_encoded`.
        ``prompt`` is the batch's task prompt for a model whose encoder reads it (see `encode`)."""
        t0 = time.perf_counter()
        arrays = [load_image(image, alpha_on_white=self.image_config.convert_rgb) for image in images]
        px = self.preprocess(arrays)
        t1 = time.perf_counter()
        enc = replace(self.encode(px, prompt), image_sizes=tuple((a.shape[1], a.shape[0]) for a in arrays))
        if timings is not None:
            timings["preprocess"] = (t1 - t0) * 1e3
            timings["encoder"] = (time.perf_counter() - t1) * 1e3
        return enc

    def caption_encoded(self, enc: EncoderOutput, prompt: PromptArg = None, *,
                        timings: dict[str, float] | None = None, **options: Any) -> list[Caption]:
        """Decode captions for an `encode_images` result (lets a caller look at the pooled embeddings first).

        Args:
            enc: the encoder output of a batch.
            prompt: see `generate`.
            timings: filled with milliseconds per stage.
            **options: generation options, see `generate`.
        """
        opts = self.options(**options)
        prompts = self._checked_prompts(prompt, enc.batch)
        if (self.prompts.encodes_prompt or self.lm is not None) and any(p != enc.prompt for p in prompts):
            raise InputError(f"these images were encoded for the prompt {enc.prompt!r}, not {prompt!r}: this model's "
                             "encoder reads the prompt; pass it to encode_images(images, prompt)")
        return self._captions(enc, opts, prompts, {} if timings is None else timings)

    def _captions(self, enc: EncoderOutput, opts: GenerationOptions, prompts: list[str | None],
                  timings: dict[str, float]) -> list[Caption]:
        t0 = time.perf_counter()
        results = self._generate_encoded(enc, opts, prompts, timings=timings)
        timings["total"] = timings.get("preprocess", 0.0) + timings.get("encoder", 0.0) + \
            (time.perf_counter() - t0) * 1e3
        sizes = enc.image_sizes or ((0, 0),) * enc.batch
        return [self._caption(ids, conf, p, size, timings) for (ids, conf), p, size in zip(results, prompts, sizes)]

    def _caption(self, ids: list[int], confidence: float, prompt: str | None, size: tuple[int, int],
                 timings: dict[str, float]) -> Caption:
        """A task model's answer is read as its processor's post_process_generation reads it."""
        if not self.prompts.encodes_prompt:
            return Caption(self.decode_text(ids), ids, dict(timings), confidence, prompt)
        token, _ = self.prompts.task(prompt)
        kind = self.prompts.spec["tasks"][token]["post_processing"]
        # unstripped, as post_process_generation reads it: a leading space belongs to the first label ('[^<]+')
        raw = self.decode_text(ids, skip_special_tokens=False, strip=False)
        if kind == "pure_text":
            return Caption(pure_text(raw), ids, dict(timings), confidence, prompt)
        objects = parse_objects(raw, kind, size, banned=self.prompts.spec["banned_grounding_tokens"],
                                quantize_bins=self.prompts.spec["quantize_bins"])
        return Caption(", ".join(o.label for o in objects), ids, dict(timings), confidence, prompt, objects)

    @property
    def decoder_session(self) -> Any:
        """The ONNX Runtime session of the decoder graph (calibration records its real inputs)."""
        return self._decoder

    def decoder_inputs(self, enc: EncoderOutput, beams: int) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """(the cross K/V feeds, repeated per beam, and an empty self-attention past) for one decode: the graph
        contract's first step, for tools that drive the decoder themselves (export validation)."""
        io = self._dec_io
        cross = [np.repeat(x, beams, axis=0) if beams > 1 else x for x in enc.cross_k + enc.cross_v]
        rows = enc.batch * beams
        empty = np.zeros((rows, self.manifest.num_heads, 0, self.manifest.head_dim), dtype=np.float32)
        return dict(zip(list(io["cross_k"]) + list(io["cross_v"]), cross)), [empty] * (2 * self.manifest.num_layers)

    def decoder_step(self, cross_feeds: dict[str, np.ndarray], ids: np.ndarray,
                      past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decoder graph call: new ids [N, T] and the interleaved past K/V -> (last logits, present K/V)."""
        io = self._dec_io
        feeds = dict(cross_feeds)
        feeds[io["input_ids"]] = ids
        for i in range(self.manifest.num_layers):
            feeds[io["past_k"][i]] = past[2 * i]
            feeds[io["past_v"][i]] = past[2 * i + 1]
        outs = self._decoder.run(self._dec_outputs, feeds)
        return outs[0], outs[1:]

    def _decode(self, enc: EncoderOutput, opts: GenerationOptions, prefix: np.ndarray, *, use_cache: bool,
                timings: dict | None) -> tuple[np.ndarray, np.ndarray]:
        cross_feeds, past0 = self.decoder_inputs(enc, opts.num_beams)
        step_times: list[float] = []

        def run(ids: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
            t = time.perf_counter()
            out = self.decoder_step(cross_feeds, ids, past)
            step_times.append((time.perf_counter() - t) * 1e3)
            return out

        stepper = Stepper(run, past0) if use_cache else _UncachedStepper(run, past0)
        if use_cache and (device := bound_device(self._decoder)) is not None:  # the KV cache stays on the device
            stepper = DeviceStepper(self._decoder, self._dec_io, cross_feeds, past0, device=device, times=step_times)
        positions = self.manifest.data["architecture"].get("decoder_positions")
        if positions is not None:
            stepper = PositionLimit(stepper, int(positions))
        search = greedy_search if opts.num_beams == 1 else beam_search
        seqs, confidence = search(stepper, prefix, opts)
        if timings is not None and step_times:  # several prefix groups add up
            timings["decoder_first"] = timings.get("decoder_first", 0.0) + step_times[0]
            timings["decoder_rest"] = timings.get("decoder_rest", 0.0) + float(sum(step_times[1:]))
            timings["decoder_steps"] = timings.get("decoder_steps", 0) + len(step_times)
        return seqs, confidence

    def decode_text(self, token_ids: Sequence[int], *, skip_special_tokens: bool | None = None,
                    strip: bool = True) -> str:
        """Token ids -> text, skipping special tokens as the checkpoint's tokenizer does (or as asked); ``strip``
        trims the surrounding whitespace (a caption), False keeps the tokenizer's text whole."""
        tok = self.manifest.data["tokenizer"]
        skip = bool(tok.get("skip_special_tokens", True)) if skip_special_tokens is None else skip_special_tokens
        text = self._tokenizer.decode(list(token_ids), skip_special_tokens=skip)
        if tok.get("clean_up_tokenization_spaces"):
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text.strip() if strip else text

    @property
    def provenance(self) -> dict[str, Any]:
        """What made a caption: model name, precision and the encoder graph's hash prefix (for event details)."""
        graph = self.manifest.data["graphs"][self.precision]["encoder"]
        return {"model": self.manifest.data.get("name"), "precision": self.precision,
                "model_sha256": str(graph.get("sha256", ""))[:16]}

    def caption_batch(self, images: Sequence[Any], prompt: PromptArg = None, **options: Any) -> list[Caption]:
        """Caption a list of images as one batch; one Caption per image, in order.

        Args:
            images: HxWx3 uint8 RGB arrays, PIL images or paths.
            prompt: see `generate`.
            **options: generation options, see `generate`.
        """
        images = list(images)
        opts = self.options(**options)  # bad options and prompts fail before any work
        prompts = self._checked_prompts(prompt, len(images))
        if self.lm is not None:
            return self._lm_captions(images, prompts, opts)
        out: list[Caption | None] = [None] * len(images)
        for group_prompt, rows in self._prompt_groups(prompts):
            timings: dict[str, float] = {}
            enc = self.encode_images([images[r] for r in rows], group_prompt, timings=timings)
            for row, cap in zip(rows, self._captions(enc, opts, [prompts[r] for r in rows], timings)):
                out[row] = cap
        return out

    def _lm_captions(self, images: list[Any], prompts: list[str | None], opts: GenerationOptions) -> list[Caption]:
        """A decoder-only model's captions: the answers to each image's prompt, in one left-padded batch."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        # several questions about one image (caption(img, prompt=[...]), edgecap ask) preprocess it once; Idefics3's
        # preprocessing loads the images itself (alpha onto white, as its processor)
        first: dict[int, int] = {}
        rows = [first.setdefault(id(im), len(first)) for im in images]
        px = self.preprocess(list({id(im): im for im in images}.values()))[rows]
        timings["preprocess"] = (time.perf_counter() - t0) * 1e3
        results = self.lm.generate(px, [self.prompts.prefix(p) for p in prompts], opts, timings=timings)
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return [Caption(self.decode_text(ids), ids, dict(timings), c, p) for (ids, c), p in zip(results, prompts)]

    def caption(self, images: Sequence[Any] | Any, prompt: PromptArg = None,
                **options: Any) -> Caption | list[Caption]:
        """Caption one image (returns a Caption) or a list of images (returns a list, one batch).

        Args:
            images: an image or a list of images (HxWx3 uint8 RGB arrays, PIL images or paths).
            prompt: see `generate`. With one image, a string, or a list of prompts (questions) about that image:
                then a list with one Caption per prompt, each what that prompt alone gives.
            **options: generation options, see `generate`.
        """
        if isinstance(images, (list, tuple)):
            return self.caption_batch(images, prompt, **options)
        if isinstance(prompt, (list, tuple)):
            if not prompt:
                raise InputError("expected at least one prompt for the image, got an empty list")
            return self.caption_batch([images] * len(prompt), prompt, **options)
        return self.caption_batch([images], prompt, **options)[0]


class _UncachedStepper(Stepper):
    """Feeds the whole history with an empty past at every step: the no-cache reference path."""

    def __init__(self, fn, empty_past):
        super().__init__(fn, empty_past)
        self._empty = empty_past
        self._history: np.ndarray | None = None

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        self._history = input_ids if self._history is None else np.concatenate([self._history, input_ids], axis=1)
        logits, _ = self.fn(self._history, self._empty)
        return logits

    def reorder(self, index: np.ndarray) -> None:
        self._history = self._history[index]
