"""INT8: static QDQ quantization calibrated on real frames, with a quality gate against FP32.

Format: QDQ (QuantizeLinear/DequantizeLinear pairs around the quantized ops), S8S8, per-channel symmetric weights,
symmetric activations -- the placement TensorRT's explicit quantization consumes, so the same graphs can feed
TensorRT later. Only MatMul/Gemm with a constant weight are quantized (MatMulConstBOnly): the attention
products Q.K^T and P.V, LayerNorm, Softmax and the patch-embedding Conv stay in float, where INT8 costs accuracy
and buys little. Either graph can instead be quantized dynamically (weights INT8, activations quantized per call
by ONNX Runtime's integer kernels), which needs no calibration; that recipe also turns one-group convolutions past
the image stem (DaViT's downsampling) into im2col MatMuls so they quantize like the rest (:func:`convs_as_matmuls`).

Measured on the 2-core AVX-512-VNNI CPU, ViT-B/16 + GPT-2 124M, batch 1, 2 threads (medians of 7-15 runs):

* standard-attention graphs: encoder FP32 155 ms, static QDQ 194 ms, dynamic 61 ms; decoder step (10 past tokens)
  FP32 21.4 ms, static QDQ 8.8 ms, dynamic 8.6 ms;
* fused-attention graphs (``attention="contrib"``, the export default): the static decoder keeps a
  QuantizeLinear/QLinearMatMul/DequantizeLinear/Add chain per projection (411 nodes per step) where dynamic
  quantization fuses each into one DynamicQuantizeMatMul with its bias (205 nodes); per caption, dynamic was
  4-7% faster than static in side-by-side runs.

So the CPU default is dynamic for both graphs (ONNX Runtime's CPU provider runs QDQ pairs as separate ops, which
costs 3x on the ViT). ``encoder_mode="static", decoder_mode="static"`` on a ``attention="standard"`` export gives
the all-QDQ model with the placement TensorRT's explicit quantization needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgecap._log import logger
from edgecap.errors import ExportError, InputError
from edgecap.manifest import load_manifest
from edgecap.sources import IMAGE_EXTENSIONS

from .checkpoint import sha256_file
from .exporter import graph_io, require_trt_lint, write_manifest
from .im2col import convs_as_matmuls

# Seeds for default calibration frames: below the held-out range, above what the demo recipe trains on.
CALIB_SEED_START = 900_000_000
GATE_EXACT_MATCH = 0.95
GATE_ATTRIBUTE_DROP = 0.01


def calibration_frames(source: str | None, count: int, *, progress: bool = True) -> list[np.ndarray]:
    """Frames spread across SOURCE: a video file, an image folder, a stream URL, or None for synthetic scenes."""
    from tqdm import tqdm

    if source is None:
        from edgecap import synth

        return [synth.render_scene(CALIB_SEED_START + i)[0]
                for i in tqdm(range(count), desc="calibration frames", unit="frame", disable=not progress)]
    from edgecap.imaging import load_image
    from edgecap.video import sample_frames

    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise InputError(f"calibration folder {path} holds no images")
        pick = np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int)
        return [load_image(files[i]) for i in pick]
    if path.is_file():
        import av

        with av.open(str(path)) as c:
            duration = float(c.duration / 1e6) if c.duration else None
        interval = max(duration / count, 0.04) if duration else 1.0
        frames = [f.image for f in sample_frames(path, interval)][:count]
        if not frames:
            raise InputError(f"no frames decoded from {path}")
        return frames
    if "://" in source:
        from edgecap.sources import Source, SourceConfig

        frames = []
        with Source(SourceConfig(name="calibration", url=source, interval_s=0.5)).start() as src:
            while len(frames) < count and not src.finished:
                s = src.read(timeout=10.0)
                if s is None:
                    break
                frames.append(s.image)
        if not frames:
            raise InputError("no frames read from the calibration stream")
        return frames
    raise InputError(f"calibration source not found: {source}; expected a video file, an image folder or a URL")


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _encoder_feeds(cap: Any, io: dict[str, Any], pixel_values: np.ndarray) -> list[dict[str, np.ndarray]]:
    """One feed per calibration frame; an encoder that reads the prompt (Florence-2) gets the tasks without
    input text in turn, so that the calibrated ranges cover every instruction it will read."""
    feeds = [{io["pixel_values"]: pixel_values[i:i + 1]} for i in range(len(pixel_values))]
    if cap.prompts.encodes_prompt:
        tasks = [t for t, spec in cap.prompts.spec["tasks"].items() if not spec["takes_input"]]
        for i, feed in enumerate(feeds):
            feed[io["input_ids"]] = np.asarray([cap.prompts.encoder_ids(tasks[i % len(tasks)])], dtype=np.int64)
    return feeds


def _recorded_feeds(cap: Any, pixel_values: np.ndarray, sessions: list[Any],
                    max_feeds: int) -> list[list[dict[str, np.ndarray]]]:
    """Record the real inputs of each session in ``sessions`` (up to ``max_feeds`` each) while the FP32 model
    captions the calibration frames, 4 per batch. A decoder-only model (SmolVLM) answers its default question: its
    prefill feeds are the images with that question rendered through the runtime's chat prompt (ids, mask,
    positions) and its step feeds the grown mask, the next positions and the cache, as the runtime runs them."""
    recorded: list[list[dict[str, np.ndarray]]] = [[] for _ in sessions]

    def recorder(original: Any, feeds: list[dict[str, np.ndarray]]) -> Any:
        def recording_run(outputs, feed, *a, **k):
            if len(feeds) < max_feeds:
                # no copies: the cross K/V arrays are shared by every step of a batch (100+ MB each at ViT-B
                # size) and the past arrays are fresh outputs of the previous step
                feeds.append(dict(feed))
            return original(outputs, feed, *a, **k)
        return recording_run

    for sess, feeds in zip(sessions, recorded):
        sess.run = recorder(sess.run, feeds)
    try:
        for i in range(0, len(pixel_values), 4):
            cap.generate(pixel_values[i:i + 4])
    finally:
        for sess in sessions:
            del sess.run  # the instance attribute set above: the class's run again
    return recorded


def _quantize_static(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], *, tensorrt: bool = False) -> None:
    """Static QDQ. ``tensorrt``: every quantized GEMM input gets its own Q/DQ pair, so a tensor that also feeds a
    non-GEMM (the ViT's final LayerNorm output feeds the pooled mean too) reaches that one in float, and Gemm
    biases stay float (ONNX Runtime would write them as INT32 + DequantizeLinear, which TensorRT does not parse;
    it fuses the float bias itself)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation; fall back to the raw graph
            logger.warning("quantization pre-processing skipped for %s: %s", src.name, type(exc).__name__)
            pre = src
        pre = _unshare_initializers(pre, Path(tmp) / "unshared.onnx")
        quantize_static(str(pre), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=["MatMul", "Gemm"], calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=activation_matmuls(pre),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "MatMulConstBOnly": True, "DedicatedQDQPair": tensorrt,
                                       "QuantizeBias": not tensorrt,
                                       "CalibMaxIntermediateOutputs": _chunk(len(feeds))})
    if tensorrt:
        _float_into_non_gemms(dst)
        _drop_unused_opset_imports(dst)


def _float_into_non_gemms(path: Path) -> None:
    """Feed the float tensor itself to every non-GEMM consumer of a quantized activation, and drop the Q/DQ pairs
    left unused. ONNX Runtime shares one pair between a GEMM and the tensor's other consumers (a Shape read of a
    LayerNorm output in Florence-2's DaViT) and may quantize a GEMM output that feeds a LayerNorm; TensorRT wants
    nothing quantized around LayerNorm or Softmax, and a Shape needs no quantized input."""
    import onnx

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    float_of = {}  # DQ output -> the float tensor its Q read
    for n in g.node:
        q = producer.get(n.input[0])
        if n.op_type == "DequantizeLinear" and q is not None and q.op_type == "QuantizeLinear" \
                and q.input[0] not in inits:
            float_of[n.output[0]] = q.input[0]
    for n in g.node:
        if n.op_type not in ("MatMul", "Gemm"):
            for k, name in enumerate(n.input):
                if name in float_of:
                    n.input[k] = float_of[name]
    used = {o.name for o in g.output} | {i for n in g.node for i in n.input}
    while True:
        keep = [n for n in g.node if any(o in used for o in n.output)]
        if len(keep) == len(g.node):
            break
        del g.node[:]
        g.node.extend(keep)
        used = {o.name for o in g.output} | {i for n in g.node for i in n.input}
    kept_inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    onnx.save(model, str(path))


def _drop_unused_opset_imports(path: Path) -> None:
    """Remove the opset imports no node uses: ONNX Runtime's pre-processing declares com.microsoft and other
    domains in every graph it touches, and a TensorRT graph should name the default domain alone."""
    import onnx

    model = onnx.load(str(path))
    used = {n.domain for n in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.save(model, str(path))


def _chunk(feeds: int) -> int:
    """Fold calibration ranges every few feeds: a 12-layer decoder's intermediate outputs for a hundred feeds
    would otherwise fill memory. onnxruntime raises "No data is collected" when the feed count is a multiple of
    the chunk (the last chunk is folded and nothing is left), so pick a chunk that does not divide it."""
    return next((c for c in range(8, 64) if feeds % c), feeds + 1)


def _unshare_initializers(src: Path, dst: Path) -> Path:
    """Give every consumer of a shared initializer its own copy.

    The exporter folds identical constants into one initializer (e.g. all-zero biases of a freshly initialised
    model); quantizing it for a Gemm would then also hand the quantized copy to a LayerNorm that shares it.
    """
    import onnx

    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    seen: set[str] = set()
    for node in g.node:
        for k, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{node.name or len(g.initializer)}_{k}"
                g.initializer.append(copy)
                node.input[k] = copy.name
            else:
                seen.add(name)
    onnx.save(model, str(dst))
    return dst


def activation_matmuls(path: Path) -> list[str]:
    """MatMul/Gemm nodes whose second input is not a weight (attention's Q.K^T and P.V): kept in float.

    MatMulConstBOnly alone does not stop static QDQ quantization from wrapping them, so they are excluded by name.
    """
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in g.node if n.op_type in ("MatMul", "Gemm") and n.input[1] not in consts]


def quantize_dynamic_graph(src: Path, dst: Path) -> dict[str, int]:
    """edgecap's CPU INT8 recipe for one graph: dynamic, S8 per-channel symmetric weights of every MatMul/Gemm
    with a constant weight, activations quantized per call; convolutions past the image stem quantized the same
    way as im2col MatMuls (:func:`convs_as_matmuls`); the traced tanh GELU fused (:func:`fuse_tanh_gelu`).
    Returns how many of each rewrite the graph got: ``{"convs_as_matmuls": n, "tanh_gelu_fused": m}``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".convs-") as tmp:
        convs = convs_as_matmuls(src, Path(tmp) / src.name)
        with _without_preprocessing_advice():
            quantize_dynamic(str(Path(tmp) / src.name if convs else src), str(dst), weight_type=QuantType.QInt8,
                             per_channel=True, op_types_to_quantize=["MatMul", "Gemm"],
                             extra_options={"MatMulConstBOnly": True})
    drop_zero_weight_zero_points(dst)
    return {"convs_as_matmuls": convs, "tanh_gelu_fused": fuse_tanh_gelu(dst)}


def fuse_tanh_gelu(path: Path) -> int:
    """Replace every traced tanh GELU by one com.microsoft.FastGelu node; returns how many.

    torch exports ``gelu(x, approximate="tanh")`` (SmolVLM's SigLIP tower) as nine elementwise nodes that ONNX
    Runtime does not fuse at load: in SmolVLM-256M's INT8 prefill they took 147 ms, the fused node 33 ms. Only the
    INT8 graphs get it. The FP32 graphs keep the traced nodes, which the export validates against transformers;
    FastGelu's result differs from them by float rounding (at most 1e-6 absolute, the same distance both have from
    torch), far below the INT8 graph's own quantization error, which the quality gate measures against FP32.
    GPT-2's form (``pow(x, 3)``) is one ONNX Runtime already fuses at load; fusing it here is the same node."""
    import onnx
    from onnxruntime.transformers.fusion_fastgelu import FusionFastGelu
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(path)))
    FusionFastGelu(model).apply()
    fused = sum(1 for n in model.model.graph.node if n.op_type == "FastGelu")
    if fused:
        model.prune_graph()
        if not any(o.domain == "com.microsoft" for o in model.model.opset_import):
            model.model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
        onnx.save(model.model, str(path))
    return fused


class _PreprocessingAdvice(logging.Filter):
    """onnxruntime's quantizer logs "Please consider to run pre-processing before quantization" on the root logger
    for every graph; the graphs it quantizes here come straight from the exporter, which already folds them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing before quantization")


@contextlib.contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    advice = _PreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


def drop_zero_weight_zero_points(path: Path) -> int:
    """Remove the all-zero weight zero points that per-channel symmetric quantization writes; returns how many.

    A per-channel zero-point vector sends ONNX Runtime's integer GEMM down its per-column zero-point path even
    when every entry is 0; without the input it takes the plain path, and the product is the same bit for bit
    (the zero point defaults to 0). Measured on the ViT-GPT2 decoder's 73 per-step GEMVs, 2 threads: 4.0-4.4 ms
    -> 3.8-3.9 ms per step.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    orphans: set[str] = set()
    dropped = 0
    for node in g.node:
        if node.op_type == "MatMulInteger" and len(node.input) == 4 and node.input[3] in inits \
                and not numpy_helper.to_array(inits[node.input[3]]).any():
            orphans.add(node.input[3])
            del node.input[3]
            dropped += 1
    if orphans:
        orphans -= {name for node in g.node for name in node.input}  # still used elsewhere: keep
        kept = [i for i in g.initializer if i.name not in orphans]
        del g.initializer[:]
        g.initializer.extend(kept)
        onnx.save(model, str(path))
    return dropped


def caption_agreement(reference: Any, candidate: Any, frames: list[np.ndarray], *,
                      prompt: str | None = None) -> dict[str, Any]:
    """How often two captioners generate the same ids on ``frames`` (each asked ``prompt``: None is the model's
    default, its default question for a decoder-only model).

    Returns:
        ``{"frames", "exact_match": share of frames with identical ids, "token_agreement": share of positions
        with the same id (over the longer caption of each pair)}``.
    """
    same_tokens = total_tokens = exact = 0
    for i in range(0, len(frames), 8):
        a, b = reference.caption(frames[i:i + 8], prompt), candidate.caption(frames[i:i + 8], prompt)
        for x, y in zip(a, b):
            exact += x.token_ids == y.token_ids
            total_tokens += max(len(x.token_ids), len(y.token_ids))
            same_tokens += sum(p == q for p, q in zip(x.token_ids, y.token_ids))
    return {"frames": len(frames), "exact_match": exact / max(1, len(frames)),
            "token_agreement": same_tokens / max(1, total_tokens)}


def quality_gate(model_dir: Path, frames: list[np.ndarray], *, synth_eval: int = 0,
                 progress: bool = True) -> dict[str, Any]:
    """INT8 vs FP32 on held-out frames: token agreement and exact caption match (and attribute accuracy on
    held-out synthetic scenes when ``synth_eval`` > 0)."""
    from edgecap import Captioner

    fp32, int8 = Captioner(model_dir), Captioner(model_dir, precision="int8")
    report = caption_agreement(fp32, int8, frames)
    if synth_eval:
        from edgecap.evaluation import evaluate_synth

        acc32 = evaluate_synth(fp32, scenes=synth_eval, progress=progress)["accuracy"]
        acc8 = evaluate_synth(int8, scenes=synth_eval, progress=progress)["accuracy"]
        report["attribute_accuracy"] = {"fp32": acc32, "int8": acc8,
                                        "max_drop": max(acc32[k] - acc8[k] for k in acc32)}
    return report


MODES = ("static", "dynamic")


def _resolve_target(target: str, manifest: dict[str, Any], encoder_mode: str | None,
                    decoder_mode: str | None) -> tuple[str, str, str | None]:
    """(encoder_mode, decoder_mode, TensorRT version to lint against or None) for a target, or one line saying
    which option does not fit it."""
    if target == "onnxruntime":
        return encoder_mode or "dynamic", decoder_mode or "dynamic", None
    if target != "tensorrt":
        raise InputError(f"target must be 'onnxruntime' or 'tensorrt', got {target!r}")
    for label, mode in (("encoder_mode", encoder_mode), ("decoder_mode", decoder_mode)):
        if mode not in (None, "static"):
            raise InputError(f"--target tensorrt quantizes statically (TensorRT has no dynamic quantization), "
                             f"got {label}={mode!r}; drop the option")
    exported = manifest.get("target", {})
    if exported.get("name") != "tensorrt":
        raise InputError("--target tensorrt quantizes a --target tensorrt export, found one for "
                         f"{exported.get('name', 'onnxruntime')}; export again with `edgecap export SRC --out DIR "
                         "--target tensorrt`")
    return "static", "static", str(exported["trt_version"])


def quantize_dir(model_dir: str | os.PathLike, *, calib: str | None = None, calib_frames: int = 64,
                 eval_frames: int = 64, encoder_mode: str | None = None, decoder_mode: str | None = None,
                 accept_quality_drop: bool = False, synth_eval: int | None = None,
                 progress: bool = True, target: str = "onnxruntime") -> dict[str, Any]:
    """Write encoder.int8.onnx and decoder.int8.onnx next to the FP32 graphs if they pass the quality gate.

    Args:
        model_dir: an exported directory.
        calib: calibration source (video file, image folder, stream URL) or None for synthetic scenes.
        calib_frames: frames used to calibrate.
        eval_frames: held-out frames for the INT8 vs FP32 comparison (other frames of the same source).
        encoder_mode: "dynamic" (fastest on CPU, the onnxruntime default) or "static" (calibrated QDQ, the only
            tensorrt mode).
        decoder_mode: as encoder_mode, for the decoder.
        accept_quality_drop: record and accept a failing gate (random-weight benchmark models).
        synth_eval: held-out synthetic scenes for the attribute-accuracy gate (default: 500 for the bundled
            demo model, 0 otherwise).
        progress: progress bars.
        target: "onnxruntime" (default) or "tensorrt": static QDQ for both graphs (S8S8, per-channel weights,
            symmetric activations) of a ``--target tensorrt`` export, and both INT8 graphs must pass the TensorRT
            lint of the export's TensorRT version.

    Returns:
        The quality report (also written to the manifest).

    Raises:
        ExportError: the quality gate failed and accept_quality_drop is False (the directory keeps the INT8 graphs
            it had before, if any; the manifest records the rejected report under ``int8_rejected``), or a
            tensorrt graph fails the lint.
        InputError: another quantize is running on the directory, or an option does not fit the target.
    """
    d = Path(model_dir)
    manifest = load_manifest(d)
    with _one_quantize_at_a_time(d):
        return _quantize_locked(d, manifest, calib, calib_frames, eval_frames, encoder_mode, decoder_mode,
                                accept_quality_drop, synth_eval, progress, target)


# what a quantize killed outright (SIGKILL, power loss) leaves in the directory: never listed in the manifest
_LEFTOVERS = ("*.int8.candidate.onnx", ".int8-gate-*", ".convs-*")


@contextlib.contextmanager
def _one_quantize_at_a_time(d: Path) -> Iterator[None]:
    """Hold an exclusive lock on the directory (two quantizes would overwrite each other's candidates) and remove
    what an earlier quantize killed outright left behind (the im2col copy of an encoder is as large as the graph)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        fcntl = None
    fd = os.open(d, os.O_RDONLY)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError(f"another edgecap quantize is running on {d}; wait for it to finish, "
                                 "then run this one again") from None
        for stale in (p for pattern in _LEFTOVERS for p in sorted(d.glob(pattern))):
            logger.info("removing %s, left by a quantize that was killed before it finished", stale.name)
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        yield
    finally:
        os.close(fd)  # releases the lock


def _quantize_locked(d: Path, manifest: Any, calib: str | None, calib_frames: int, eval_frames: int,
                     encoder_mode: str | None, decoder_mode: str | None, accept_quality_drop: bool,
                     synth_eval: int | None, progress: bool, target: str) -> dict[str, Any]:
    from edgecap import Captioner

    encoder_mode, decoder_mode, trt_version = _resolve_target(target, manifest.data, encoder_mode, decoder_mode)
    for label, mode in (("encoder_mode", encoder_mode), ("decoder_mode", decoder_mode)):
        if mode not in MODES:
            raise InputError(f"{label} must be 'static' or 'dynamic', got {mode!r}")
    static = "static" in (encoder_mode, decoder_mode)
    calib_frames = calib_frames if static else 0  # dynamic quantization needs no calibration
    frames = calibration_frames(calib, calib_frames + eval_frames, progress=progress)
    image = manifest.data.get("image", {})
    if image.get("do_resize") is False:  # a processor that does not resize takes images of the model's size only
        from edgecap.imaging import BILINEAR, resize

        frames = [resize(f, int(image["height"]), int(image["width"]), BILINEAR) for f in frames]
    calib_set, eval_set = frames[:calib_frames], frames[calib_frames:] or frames
    cap = Captioner(d)
    px = cap.preprocess(calib_set) if static else None
    if cap.lm is not None and static:  # a decoder-only model's "encoder" is the prefill over image + prompt
        enc_feeds, dec_feeds = _recorded_feeds(cap, px, [cap.lm.prefill_session, cap.decoder_session], 128)
    elif static:
        enc_feeds = _encoder_feeds(cap, manifest.io("encoder"), px)
        dec_feeds = _recorded_feeds(cap, px, [cap.decoder_session], 128)[0] if decoder_mode == "static" else []
    data = manifest.data
    # written under candidate names and gated in a side directory: the manifest changes only with the verdict, so
    # the INT8 graphs a directory already holds stay until new ones pass, and a failed gate, an error or an
    # interrupt (even SIGKILL) leaves the manifest as it was
    staged = {part: f"{part}.int8.candidate.onnx" for part in ("encoder", "decoder")}
    try:
        rewrites = {}  # per dynamically quantized part: how many of each graph rewrite it got
        for part, mode in (("encoder", encoder_mode), ("decoder", decoder_mode)):
            if mode == "static":
                feeds = enc_feeds if part == "encoder" else dec_feeds
                _quantize_static(d / f"{part}.onnx", d / staged[part], feeds, tensorrt=trt_version is not None)
            else:
                rewrites[part] = quantize_dynamic_graph(d / f"{part}.onnx", d / staged[part])
        recorded = {key: {part: counts[key] for part, counts in rewrites.items()}
                    for key in ("tanh_gelu_fused", "convs_as_matmuls")}
        if trt_version is not None:
            require_trt_lint(d, [d / staged["encoder"], d / staged["decoder"]], trt_version)
        entry = {part: {"file": staged[part], "sha256": sha256_file(d / staged[part]), **graph_io(d / staged[part])}
                 for part in ("encoder", "decoder")}
        formats = {"static": "QDQ", "dynamic": "dynamic"}
        fmt = formats[encoder_mode] if encoder_mode == decoder_mode else \
            f"encoder {formats[encoder_mode]}, decoder {formats[decoder_mode]}"
        activations = {"static": "int8 symmetric, calibrated", "dynamic": "uint8, quantized per call"}
        entry["recipe"] = {"format": fmt, "weights": "int8 per-channel symmetric",
                           "activations": {"encoder": activations[encoder_mode], "decoder": activations[decoder_mode]},
                           "ops": ["MatMul", "Gemm"],
                           **{key: per_part for key, per_part in recorded.items() if any(per_part.values())},
                           "encoder_mode": encoder_mode, "decoder_mode": decoder_mode,
                           "calibration": (calib or "synthetic") if static else None,
                           "calibration_frames": len(calib_set), "target": target,
                           **({"check_trt": "passed"} if trt_version else {})}
        if synth_eval is None:
            synth_eval = 500 if data.get("name") == "demo" else 0
        with _gate_directory(d, {**data, "graphs": {**data["graphs"], "int8": entry}}) as gate_dir:
            report = quality_gate(gate_dir, eval_set, synth_eval=synth_eval, progress=progress)
        failures = []
        if report["exact_match"] < GATE_EXACT_MATCH:
            failures.append(f"caption exact match {report['exact_match']:.1%} < {GATE_EXACT_MATCH:.0%}")
        if synth_eval and report["attribute_accuracy"]["max_drop"] > GATE_ATTRIBUTE_DROP:
            failures.append(f"attribute accuracy drops {report['attribute_accuracy']['max_drop']:.1%} > 1 point")
        report.update(passed=not failures, failures=failures,
                      accepted_quality_drop=bool(failures and accept_quality_drop))
    except BaseException:  # an error or an interrupt: no candidate stays
        _drop(d, staged)
        raise
    if failures and not accept_quality_drop:
        _drop(d, staged)
        data["int8_rejected"] = {"recipe": entry["recipe"], "quality": report}
        write_manifest(d, data)
        raise ExportError("INT8 quality gate failed: " + "; ".join(failures) +
                          f" (report under int8_rejected in {d / 'manifest.json'}; these INT8 graphs were not kept); "
                          "pass --accept-quality-drop to keep them anyway")
    for part, name in staged.items():
        os.replace(d / name, d / f"{part}.int8.onnx")
        entry[part]["file"] = f"{part}.int8.onnx"
    entry["quality"] = report
    data["graphs"]["int8"] = entry
    data.pop("int8_rejected", None)
    write_manifest(d, data)
    return report


@contextlib.contextmanager
def _gate_directory(d: Path, manifest: dict[str, Any]) -> Iterator[Path]:
    """A hidden side directory of ``d`` holding hard links to its files and ``manifest``: the quality gate loads the
    candidate graphs through a manifest, as a user would, while ``d``'s own manifest stays untouched."""
    with tempfile.TemporaryDirectory(dir=d, prefix=".int8-gate-") as tmp:
        side = Path(tmp)
        for f in d.iterdir():
            if f.is_file() and f.name != "manifest.json":
                try:
                    os.link(f, side / f.name)
                except OSError:  # a file system without hard links
                    shutil.copy2(f, side / f.name)
        write_manifest(side, manifest)
        yield side


def _drop(d: Path, staged: dict[str, str]) -> None:
    """Delete the candidate graphs."""
    for name in staged.values():
        (d / name).unlink(missing_ok=True)
