"""optimum-onnx timing worker for benchmarks/vs_optimum.py (runs in the peers venv, see setup.sh).

It exports a VisionEncoderDecoder checkpoint the way optimum users do (``ORTModelForVision2Seq.from_pretrained(
ckpt, export=True)``: encoder + decoder + decoder_with_past, KV cache on), quantizes each graph with
``ORTQuantizer`` + ``AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=...)``, caches the
results (fp32/, int8/ with per-tensor weights, int8-per-channel/), then answers timing requests over a line
protocol:

    stdin   ``run fp32`` | ``run int8`` | ``run int8pc`` | ``quit``
    stdout  one JSON object per line; the first one (``{"ready": true, ...}``) says the models are loaded.

Every ``run`` does one batch-1 caption of the ``--image`` file: preprocessing with the checkpoint's
``ViTImageProcessor`` (the slow PIL/numpy one: the fast one needs torchvision, which is not installed), then
``generate(pixel_values, max_new_tokens=N, min_new_tokens=N, num_beams=1, do_sample=False)``. The reply holds
wall milliseconds for preprocessing, generate and the encoder call inside generate, and the number of new tokens
(which must equal N). Human-readable logs go to stderr; stdout carries only the protocol.

Two INT8 systems: ``int8`` with ``per_channel=False``, as optimum's quantization guide and quickstart examples
quantize dynamically, and ``int8pc`` with ``per_channel=True``, the API default and the granularity edgecap's own
INT8 weights use.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

GRAPHS = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")
SYSTEMS = ("fp32", "int8", "int8pc")
EXPORT_DIRS = {"fp32": "fp32", "int8": "int8", "int8pc": "int8-per-channel"}
AUX_FILES = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
             "special_tokens_map.json")
META = "edgecap-meta.json"


def export_dir(cache: Path, system: str) -> Path:
    """Where a system's graphs are cached: fp32/, int8/ (per-tensor weights) or int8-per-channel/."""
    return cache / EXPORT_DIRS[system]

log = logging.getLogger("optimum_worker")


# -- preparing the exported directories ------------------------------------------------------------------------
def fingerprint(checkpoint: Path) -> str:
    """A cheap identity of a checkpoint directory: names, sizes and mtimes of its files."""
    h = hashlib.sha256()
    for p in sorted(checkpoint.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _read_meta(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / META).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(directory: Path, expected: dict[str, Any]) -> bool:
    """A cached export counts only if its metadata (written last) matches and every graph is there."""
    meta = _read_meta(directory)
    if meta is None or any(meta.get(k) != v for k, v in expected.items()):
        return False
    return all((directory / g).is_file() for g in GRAPHS)


def _copy_aux(src: Path, dst: Path) -> None:
    for name in AUX_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def loadable_checkpoint(checkpoint: Path, scratch: Path) -> tuple[Path, str]:
    """The checkpoint if this transformers loads it completely, else a same-config random rebuild.

    Returns (path to export from, how it was obtained). The benchmark needs a model of the right shape, not any
    particular weights, so a rebuild with identical config is timing-equivalent.
    """
    import torch
    from transformers import VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    try:
        _, info = VisionEncoderDecoderModel.from_pretrained(checkpoint, output_loading_info=True)
        problems = {k: v for k, v in info.items() if v}
        if not problems:
            return checkpoint, "loaded as saved"
        reason = "; ".join(f"{k}: {len(v)}" for k, v in problems.items())
    except Exception as exc:  # noqa: BLE001 - any load failure leads to the same fallback
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
    log.warning("checkpoint %s does not load cleanly (%s); rebuilding a random model from its config",
                checkpoint, reason)
    rebuilt = scratch / "hf-rebuilt"
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(VisionEncoderDecoderConfig.from_pretrained(checkpoint))
    model.save_pretrained(rebuilt)
    _copy_aux(checkpoint, rebuilt)
    return rebuilt, f"rebuilt from config ({reason})"


def export_fp32(checkpoint: Path, out: Path, expected_meta: dict[str, Any]) -> dict[str, Any]:
    """ORTModelForVision2Seq.from_pretrained(export=True) into ``out``; returns the metadata written."""
    from optimum.onnxruntime import ORTModelForVision2Seq

    if out.exists():
        shutil.rmtree(out)
    source, how = loadable_checkpoint(checkpoint, out.parent)
    log.info("exporting %s with optimum (with past) -> %s", source, out)
    t0 = time.perf_counter()
    model = ORTModelForVision2Seq.from_pretrained(source, export=True, use_cache=True)
    model.save_pretrained(out)
    _copy_aux(source, out)
    meta = {**expected_meta, "checkpoint_load": how, "export_s": round(time.perf_counter() - t0, 1)}
    (out / META).write_text(json.dumps(meta, indent=2))
    return meta


def quantize_int8(fp32_dir: Path, out: Path, per_channel: bool, expected_meta: dict[str, Any]) -> dict[str, Any]:
    """Dynamic INT8 (AutoQuantizationConfig.avx512_vnni) of each graph of ``fp32_dir``, same file names."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    qconfig = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=per_channel)
    t0 = time.perf_counter()
    for graph in GRAPHS:
        log.info("quantizing %s (avx512_vnni dynamic, per_channel=%s)", graph, per_channel)
        ORTQuantizer.from_pretrained(fp32_dir, file_name=graph).quantize(
            quantization_config=qconfig, save_dir=out, file_suffix=None)
    for name in ("config.json", "generation_config.json"):
        shutil.copy2(fp32_dir / name, out / name)
    _copy_aux(fp32_dir, out)
    meta = {**expected_meta, "checkpoint_load": (_read_meta(fp32_dir) or {}).get("checkpoint_load"),
            "quantize_s": round(time.perf_counter() - t0, 1)}
    (out / META).write_text(json.dumps(meta, indent=2))
    return meta


def prepare(checkpoint: Path, cache: Path, systems: list[str], rebuild: bool) -> dict[str, dict]:
    """Make sure ``cache/fp32`` (and the INT8 directories asked for) hold up-to-date exports; returns metadata."""
    base = {"checkpoint": str(checkpoint), "checkpoint_fingerprint": fingerprint(checkpoint),
            "optimum_onnx": metadata.version("optimum-onnx")}
    metas: dict[str, dict] = {}
    fp32_fresh = False
    if rebuild or not _is_complete(cache / "fp32", base):
        metas["fp32"] = export_fp32(checkpoint, cache / "fp32", base)
        fp32_fresh = True
    else:
        metas["fp32"] = _read_meta(cache / "fp32") or {}
    for system in ("int8", "int8pc"):
        if system not in systems:
            continue
        per_channel = system == "int8pc"
        wanted = {**base, "quantization": "avx512_vnni dynamic", "per_channel": per_channel}
        out = export_dir(cache, system)
        if rebuild or fp32_fresh or not _is_complete(out, wanted):
            metas[system] = quantize_int8(cache / "fp32", out, per_channel, wanted)
        else:
            metas[system] = _read_meta(out) or {}
    return {s: metas[s] for s in systems}


# -- timing -----------------------------------------------------------------------------------------------------
class _Timed:
    """Wraps a callable attribute, accumulating call count and wall milliseconds."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn, self.calls, self.ms = fn, 0, 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.ms += (time.perf_counter() - t0) * 1e3
            self.calls += 1

    def reset(self) -> None:
        self.calls, self.ms = 0, 0.0


class System:
    """One loaded optimum model (fp32 or int8) with instrumentation on its encoder and decoders."""

    def __init__(self, name: str, directory: Path, threads: int):
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForVision2Seq

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.name = name
        self.model = ORTModelForVision2Seq.from_pretrained(directory, session_options=opts, use_cache=True,
                                                           use_merged=False)
        # ORTSessionMixin.__call__ looks up self.forward, so an instance attribute intercepts every call.
        self.encoder = _Timed(self.model.encoder.forward)
        self.model.encoder.forward = self.encoder
        self.decoder = _Timed(self.model.decoder.forward)
        self.model.decoder.forward = self.decoder
        self.decoder_with_past: _Timed | None = None
        if self.model.decoder_with_past is not None:
            self.decoder_with_past = _Timed(self.model.decoder_with_past.forward)
            self.model.decoder_with_past.forward = self.decoder_with_past
        self.use_io_binding = bool(getattr(self.model, "use_io_binding", False))

    def run(self, processor: Any, image: Any, new_tokens: int) -> dict[str, Any]:
        """One timed caption; raises if generate did not produce exactly ``new_tokens`` tokens."""
        import torch

        for t in (self.encoder, self.decoder, self.decoder_with_past):
            if t is not None:
                t.reset()
        t0 = time.perf_counter()
        pixel_values = processor(images=image, return_tensors="pt").pixel_values
        t1 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(pixel_values, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      num_beams=1, do_sample=False)
        t2 = time.perf_counter()
        # generate returns the decoder start token followed by the new tokens.
        generated = int(out.shape[1]) - 1
        if generated != new_tokens:
            raise RuntimeError(f"optimum {self.name} generated {generated} new tokens, expected {new_tokens}")
        dwp = self.decoder_with_past
        return {
            "system": f"optimum_{self.name}", "preprocess_ms": (t1 - t0) * 1e3, "generate_ms": (t2 - t1) * 1e3,
            "total_ms": (t2 - t0) * 1e3, "encoder_ms": self.encoder.ms, "new_tokens": generated,
            "decoder_calls": self.decoder.calls, "decoder_first_ms": self.decoder.ms,
            "decoder_with_past_calls": dwp.calls if dwp else 0,
            "decoder_with_past_ms": dwp.ms if dwp else 0.0, "token_ids": out[0, 1:].tolist(),
        }


def versions() -> dict[str, str]:
    """Versions of the packages that matter in this venv."""
    out = {"python": sys.version.split()[0]}
    for pkg in ("optimum-onnx", "optimum", "transformers", "torch", "onnxruntime", "onnx", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def serve(systems: dict[str, System], processor: Any, image: Any, new_tokens: int, proto: TextIO) -> None:
    """Answer ``run SYSTEM`` lines from stdin until EOF or ``quit``."""

    def reply(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] != "run" or len(words) != 2 or words[1] not in systems:
            reply({"error": f"bad request {line.strip()!r}: expected 'run {'|'.join(systems)}' or 'quit'"})
            continue
        try:
            reply(systems[words[1]].run(processor, image, new_tokens))
        except Exception as exc:  # noqa: BLE001 - reported to the client, which decides to stop
            reply({"error": f"{type(exc).__name__}: {exc}"})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="HF VisionEncoderDecoder checkpoint directory")
    p.add_argument("--cache", type=Path, required=True, help="where the fp32/ and int8/ exports are cached")
    p.add_argument("--image", type=Path, required=True, help="image file captioned by every run")
    p.add_argument("--systems", default="int8",
                   help="comma-separated subset of fp32,int8,int8pc to load (default int8)")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--new-tokens", type=int, default=20, help="exact number of tokens to generate (default 20)")
    p.add_argument("--rebuild", action="store_true", help="re-export and re-quantize even if cached")
    p.add_argument("--prepare-only", action="store_true", help="export/quantize, print metadata and exit")
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = sorted(set(args.systems) - set(SYSTEMS))
    if bad or not args.systems:
        p.error(f"--systems: unknown {bad}, expected a subset of {','.join(SYSTEMS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Keep stdout for the protocol: libraries that print go to stderr instead.
    proto, sys.stdout = sys.stdout, sys.stderr
    # WARNING for the libraries (ORT's quantizer logs one INFO line per tensor), INFO for this worker.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="[optimum_worker] %(message)s")
    log.setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    from PIL import Image
    from transformers import ViTImageProcessor

    torch.set_num_threads(args.threads)
    metas = prepare(args.checkpoint.resolve(), args.cache.resolve(), args.systems, args.rebuild)
    ready: dict[str, Any] = {"ready": True, "versions": versions(), "exports": metas, "threads": args.threads,
                             "torch_threads": torch.get_num_threads()}
    if args.prepare_only:
        proto.write(json.dumps(ready) + "\n")
        return 0
    systems = {s: System(s, export_dir(args.cache.resolve(), s), args.threads)
               for s in args.systems}
    ready["use_io_binding"] = {s: m.use_io_binding for s, m in systems.items()}
    ready["preprocessor"] = "ViTImageProcessor (slow, PIL/numpy)"
    processor = ViTImageProcessor.from_pretrained(args.checkpoint)
    image = Image.open(args.image).convert("RGB")
    image.load()
    proto.write(json.dumps(ready) + "\n")
    proto.flush()
    serve(systems, processor, image, args.new_tokens, proto)
    return 0


if __name__ == "__main__":
    sys.exit(main())
