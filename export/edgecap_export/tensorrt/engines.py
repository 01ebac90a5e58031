"""`edgecap engines build DIR`: TensorRT engines from a ``--target tensorrt`` export, with the TensorRT Python API.

One engine per graph and precision, cached under ``DIR/engines/`` by a key of the graph's SHA-256, the precision,
the TensorRT version and the GPU's SM, so a rebuild happens only when one of them changes; one timing cache per
TensorRT version and SM speeds up rebuilds. Optimization profiles cover every dynamic axis (batch 1..B, past length
0..max, new tokens 1..max prompt), from the same limits ONNX Runtime's TensorRT provider uses.

NOT VALIDATED: this machine has no GPU and no TensorRT; the code is written against TensorRT 10's Python API and
runs nowhere here. The cache key and the profiles are tested without TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecap._log import logger
from edgecap.errors import DependencyError, InputError
from edgecap.manifest import load_manifest
from edgecap.providers import ProfileLimits, model_limits, profile_dims

@dataclass(frozen=True)
class EngineKey:
    """What an engine depends on: the graph bytes, the precision, TensorRT and the GPU architecture."""

    graph_sha256: str
    precision: str
    trt_version: str
    sm: str

    def file_name(self, part: str) -> str:
        digest = hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:16]
        return f"{part}.{self.precision}.trt{self.trt_version}.sm{self.sm}.{digest}.plan"


def gpu_sm() -> str:
    """The first GPU's compute capability as "89" (for 8.9), read with nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        raise DependencyError("nvidia-smi did not report a GPU: `edgecap engines build` needs an NVIDIA GPU") from None
    return out[0].replace(".", "")


def _tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise DependencyError("`tensorrt` is not installed: `edgecap engines build` needs TensorRT's Python package "
                              "(pip install tensorrt, on a machine with an NVIDIA GPU)") from None
    return tensorrt


def build_engines(model_dir: str | Path, *, precisions: tuple[str, ...] | None = None,
                  limits: ProfileLimits = ProfileLimits(), workspace_gb: float = 4.0) -> list[Path]:
    """Build (or find in the cache) an engine per graph of every precision of a ``--target tensorrt`` export.

    Args:
        model_dir: the export.
        precisions: which of the manifest's precisions (default: all of fp32, fp16, int8 that exist).
        limits: optimization-profile limits.
        workspace_gb: the builder's workspace memory limit.

    Returns:
        The engine files, built or reused.

    Raises:
        InputError: not a tensorrt export, or a precision it does not hold.
        DependencyError: TensorRT or a GPU is missing.
    """
    d = Path(model_dir)
    manifest = load_manifest(d).data
    if manifest.get("target", {}).get("name") != "tensorrt":
        raise InputError(f"{d} is not a --target tensorrt export; run `edgecap export SRC --out DIR --target tensorrt`")
    graphs = manifest["graphs"]
    chosen = precisions or tuple(p for p in ("fp32", "fp16", "int8") if p in graphs)
    missing = [p for p in chosen if p not in graphs]
    if missing:
        raise InputError(f"{d} holds no {', '.join(missing)} graphs; it has {', '.join(graphs)}")
    limits = model_limits(manifest, limits)
    trt = _tensorrt()
    sm = gpu_sm()
    cache = d / "engines"
    cache.mkdir(exist_ok=True)
    timing_path = cache / f"timing.trt{trt.__version__}.sm{sm}.cache"
    built = []
    for precision in chosen:
        for part in ("encoder", "decoder"):
            entry = graphs[precision][part]
            key = EngineKey(entry["sha256"], precision, trt.__version__, sm)
            path = cache / key.file_name(part)
            if not path.exists():
                _build_one(trt, d / entry["file"], entry["inputs"], path, precision, limits, timing_path,
                           workspace_gb)
            else:
                logger.info("engine cache hit: %s", path.name)
            built.append(path)
    return built


def _build_one(trt: Any, onnx_path: Path, inputs: list[dict[str, Any]], out: Path, precision: str,
               limits: ProfileLimits, timing_path: Path, workspace_gb: float) -> None:
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"TensorRT cannot parse {onnx_path.name}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the graph's Q/DQ
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.exists() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for entry in inputs:
        if not all(isinstance(x, int) for x in entry["shape"]):
            profile.set_shape(entry["name"], *profile_dims(entry["shape"], limits))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InputError(f"TensorRT failed to build {onnx_path.name} ({precision}); see its log above")
    out.write_bytes(bytes(serialized))
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    logger.info("built %s", out.name)
