"""Latency benchmark, systems alternated in one run: transformers eager generate, edgecap FP32, edgecap INT8.

    edgecap bench --vitgpt2-random                # ViT-B/16 224 + GPT-2 124M, random weights
    edgecap bench --model runs/demo --runs 20     # any exported directory (eager if DIR/hf exists)
    edgecap bench --arch blip-base                # ViT-B/16 384 + BERT-base decoder (blip-image-captioning-base),
                                                  # built, exported and quantized in engines/blip-random first
    edgecap bench --arch smolvlm-256m --batch 1 4  # SmolVLM-256M: a question per image, prefill + decode steps
    python benchmarks/bench.py ...                # the same, from a checkout

Exactly --tokens new tokens (min = max), greedy, batch sizes --batch (default 1 and 8). For each system and batch:
per-stage p50/p90/p99 (preprocess, encoder or SmolVLM's prefill, first decode step, per-token decode),
per-caption latency, captions/s, tokens/s and RSS; a JSON with CPU model, thread count and library versions, and a
PNG of the latency distributions when matplotlib is installed. Machines are shared and noisy: quote medians and
ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecap.errors import InputError

from .random_checkpoints import prepare_random

ROOT = Path.cwd()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


SIMD_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16"})


def cpu_flags() -> list[str]:
    """The host's :data:`SIMD_FLAGS` that decide INT8 and FP32 GEMM speed (AVX2 alone, AVX-512, VNNI, AMX),
    recorded in every result: hosts of one machine kind differ, and so do their INT8 / FP32 ratios."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return sorted(SIMD_FLAGS.intersection(flags))


def load_average() -> float | None:
    """The host's 1-minute load average (None where the OS does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def peak_rss_mb() -> float:
    """This process's peak resident memory (POSIX; NaN where the `resource` module does not exist)."""
    try:
        import resource
    except ImportError:
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def package_versions(*packages: str) -> dict[str, str]:
    """The Python version and each installed package's version ("missing" when it is not installed)."""
    import importlib.metadata as metadata

    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def percentiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "n": len(xs)}


SMOLVLM_QUESTION = "Describe what happens in this frame."  # the runtime's default prompt (issue 13)
SMOLVLM_FAMILIES = ("smolvlm", "idefics3")  # manifest families that take a question and have a prefill graph


def _edgecap_runner(cap: Any, images: list[np.ndarray], kw: dict, *,
                    prefill: bool = False) -> Callable[[], dict[str, float]]:
    """``prefill``: the model's first graph is a prefill graph (SmolVLM): its stage is reported as "prefill"."""
    def run() -> dict[str, float]:
        timings: dict[str, float] = {}
        t = time.perf_counter()
        px = cap.preprocess(images)
        timings["preprocess"] = (time.perf_counter() - t) * 1e3
        cap.generate(px, _timings=timings, **kw)
        timings["total"] = (time.perf_counter() - t) * 1e3
        # a prefill graph gives the first token, so every step-graph call is a later token; an encoder-decoder's
        # first step is timed apart ("decoder_first") and counted in decoder_steps
        steps = max(1, int(timings.pop("decoder_steps", 1)) - (0 if prefill else 1))
        timings["decode_per_token"] = timings.pop("decoder_rest", 0.0) / steps
        if prefill:
            timings["prefill"] = timings.pop("encoder", 0.0)
        return timings
    return run


def _eager_runner(model: Any, processor: Any, images: list[np.ndarray], kw: dict) -> Callable[[], dict[str, float]]:
    import torch

    def run() -> dict[str, float]:
        t = time.perf_counter()
        px = torch.from_numpy(np.asarray(processor(images=images, return_tensors="np")["pixel_values"]))
        pre = (time.perf_counter() - t) * 1e3
        with torch.no_grad():
            t1 = time.perf_counter()
            model.generate(pixel_values=px, **kw)
        return {"preprocess": pre, "total": pre + (time.perf_counter() - t1) * 1e3}
    return run


def _florence2_eager_runner(model: Any, processor: Any, images: list[np.ndarray],
                            kw: dict) -> Callable[[], dict[str, float]]:
    """transformers' Florence-2 path: the processor builds pixel values and the <CAPTION> task's ids."""
    import torch

    def run() -> dict[str, float]:
        t = time.perf_counter()
        inputs = processor(text=["<CAPTION>"] * len(images), images=images, return_tensors="pt")
        pre = (time.perf_counter() - t) * 1e3
        with torch.no_grad():
            t1 = time.perf_counter()
            model.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], **kw)
        return {"preprocess": pre, "total": pre + (time.perf_counter() - t1) * 1e3}
    return run



def smolvlm_eager_runner(model: Any, processor: Any, images: list[np.ndarray], kw: dict,
                         question: str = SMOLVLM_QUESTION) -> Callable[[], dict[str, float]]:
    """transformers' SmolVLM path: the chat template with the image and ``question``, the processor's ids and pixel
    values (left padding), generate; the prefill (vision tower, connector and the prompt through every layer, up
    to the first logits) and each later step timed by a logits processor that notes when it is called."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class _Clock(LogitsProcessor):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            self.stamps.append(time.perf_counter())
            return scores

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)

    def run() -> dict[str, float]:
        t = time.perf_counter()
        inputs = processor(text=[text] * len(images), images=[[im] for im in images], return_tensors="pt",
                           padding=True)
        pre = (time.perf_counter() - t) * 1e3
        clock = _Clock()
        with torch.no_grad():
            t1 = time.perf_counter()
            model.generate(**inputs, logits_processor=LogitsProcessorList([clock]), do_sample=False, **kw)
            t2 = time.perf_counter()
        steps = np.diff(clock.stamps) * 1e3
        return {"preprocess": pre, "prefill": (clock.stamps[0] - t1) * 1e3,
                "decode_per_token": float(np.mean(steps)) if len(steps) else 0.0,
                "total": pre + (t2 - t1) * 1e3}
    return run


def main(argv: list[str] | None = None) -> int:
    from edgecap.cli.args import OneLineParser
    from edgecap.cli.model import add_bench_arguments

    p = OneLineParser(prog="edgecap bench", description=__doc__.split("\n\n")[0])
    add_bench_arguments(p)
    return run(p.parse_args(argv))


SYSTEMS = ("eager", "fp32", "int8")


def _checked_request(args: argparse.Namespace, manifest: Any, model_dir: Path) -> tuple[list[str], Path]:
    """(the systems to time, the report path): what cannot run or be written is one line before any timing, not a
    traceback or an empty report at the end. Without --systems, the systems the directory holds."""
    holds = {"eager": (model_dir / "hf").is_dir(), **{p: p in manifest.precisions for p in ("fp32", "int8")}}
    missing = [s for s in args.systems or () if not holds[s]]
    if missing:
        raise InputError(f"--systems {' '.join(missing)}: {model_dir} has no "
                         + ", ".join("checkpoint in hf/ (eager)" if s == "eager" else f"{s} graphs" for s in missing)
                         + "; drop them, or run `edgecap quantize` for int8")
    if holds["eager"] and "eager" in (args.systems or SYSTEMS):
        _check_eager_checkpoint(model_dir / "hf", manifest)
    positions = manifest.data["architecture"].get("decoder_positions")
    if positions is not None and args.tokens > positions:
        raise InputError(f"--tokens {args.tokens}: the model's decoder holds {positions} positions, so at most "
                         f"{positions} new tokens")
    out = Path(args.out or ROOT / "benchmarks" / "results" / "bench.json")
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; expected a .json file path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot create its directory ({exc.strerror})") from None
    if not os.access(out.parent, os.W_OK):
        raise InputError(f"--out {out}: its directory is not writable")
    return [s for s in args.systems or SYSTEMS if holds[s]], out


def _check_eager_checkpoint(hf_dir: Path, manifest: Any) -> None:
    """Eager is timed on DIR/hf against DIR's graphs: it must be the checkpoint they were exported from (the
    manifest's weights checksum), or the ratios compare two different models."""
    from .checkpoint import weights_sha256

    exported = manifest.data.get("source", {}).get("weights_sha256")
    if exported is not None and weights_sha256(hf_dir) != exported:
        raise InputError(f"{hf_dir} is not the checkpoint {hf_dir.parent} was exported from (its weights' sha256 "
                         "differs from the manifest's): export it again, or leave eager out with --systems fp32 int8")


def run(args: argparse.Namespace) -> int:
    import onnxruntime
    from tqdm import tqdm

    from edgecap import Captioner
    from edgecap.manifest import load_manifest

    arch = args.arch or ("vitgpt2-base" if args.vitgpt2_random else None)
    if arch:
        workdir = args.workdir or ROOT / "engines" / f"{arch.removesuffix('-base')}-random"
        model_dir = prepare_random(arch, workdir, int8="int8" in (args.systems or SYSTEMS))
    else:
        model_dir = Path(args.model)
    manifest = load_manifest(model_dir)  # the manifest alone: a Captioner would load both graphs to read it
    hf_dir = model_dir / "hf"
    systems, out = _checked_request(args, manifest, model_dir)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(max(args.batch))]
    kw = dict(min_new_tokens=args.tokens, max_new_tokens=args.tokens, num_beams=1)
    smolvlm = manifest.data.get("family") in SMOLVLM_FAMILIES  # a question per image: both sides get the same one

    runners: dict[str, Callable[[list[np.ndarray]], Callable[[], dict[str, float]]]] = {}
    rss: dict[str, float] = {"start": rss_mb()}
    versions = {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    for system in systems:
        if system in ("fp32", "int8"):
            cap = Captioner(model_dir, precision=system, threads=args.threads)
            edge_kw = {**kw, "prompt": SMOLVLM_QUESTION} if smolvlm else kw
            runners[f"edgecap_{system}"] = lambda imgs, cap=cap, ekw=edge_kw: _edgecap_runner(cap, imgs, ekw,
                                                                                              prefill=smolvlm)
        elif system == "eager":
            import torch
            import transformers
            from transformers import AutoImageProcessor

            from .checkpoint import load_config
            from .families import family_for

            transformers.logging.set_verbosity_error()
            if args.threads:
                torch.set_num_threads(args.threads)
            model = family_for(load_config(str(hf_dir))).load(str(hf_dir))  # eager attention, eval mode
            try:
                proc = AutoImageProcessor.from_pretrained(hf_dir, backend="pil")
            except TypeError:
                proc = AutoImageProcessor.from_pretrained(hf_dir)
            runners["transformers_eager"] = lambda imgs, m=model, pr=proc: _eager_runner(m, pr, imgs, kw)
            if manifest.data.get("family") == "florence2":  # its processor also writes the task prompt's ids
                from transformers import AutoProcessor

                runners["transformers_eager"] = lambda imgs, m=model, pr=AutoProcessor.from_pretrained(hf_dir): \
                    _florence2_eager_runner(m, pr, imgs, kw)
            elif smolvlm:  # the processor writes the chat template's ids around the image tokens
                from transformers import AutoProcessor

                runners["transformers_eager"] = lambda imgs, m=model, pr=AutoProcessor.from_pretrained(hf_dir): \
                    smolvlm_eager_runner(m, pr, imgs, kw)
            versions.update(torch=torch.__version__, transformers=transformers.__version__)
        rss[f"after_loading_{system}"] = rss_mb()

    results: dict[str, Any] = {}
    load = {"start": load_average()}  # other tenants of a shared host show up here, not in the ratios
    for b in args.batch:
        load[f"batch{b}_start"] = load_average()
        calls = {name: make(images[:b]) for name, make in runners.items()}
        for call in calls.values():
            call()  # warm-up
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in calls}
        for i in tqdm(range(args.runs), desc=f"batch {b}", unit="round"):
            # alternate systems within each round, the order reversed every other round; pause between systems so
            # the previous one's idle worker threads (torch's OpenMP pool, ONNX Runtime's spinning threads) are
            # asleep before the next is timed
            for name in (list(calls) if i % 2 == 0 else list(reversed(calls))):
                time.sleep(args.settle_ms / 1e3)
                samples[name].append(calls[name]())
        for name, rows in samples.items():
            totals = [r["total"] for r in rows]
            stages = {k: percentiles([r[k] for r in rows]) for k in rows[0] if k != "total"}
            med = statistics.median(totals)
            results[f"{name}/batch{b}"] = {
                "per_batch_ms": percentiles(totals), "per_caption_ms_p50": med / b, "stages_ms": stages,
                "captions_per_s": 1000 * b / med, "tokens_per_s": 1000 * b * args.tokens / med, "runs_ms": totals}
        load[f"batch{b}_end"] = load_average()
    load["end"] = load_average()
    ratios = {}
    for b in args.batch:
        base = results.get(f"transformers_eager/batch{b}")
        for name in ("edgecap_fp32", "edgecap_int8"):
            r = results.get(f"{name}/batch{b}")
            if base and r:
                ratios[f"{name}_vs_eager/batch{b}"] = base["per_batch_ms"]["p50"] / r["per_batch_ms"]["p50"]
    m = manifest.data
    int8 = m["graphs"].get("int8", {})
    report = {
        "model": str(model_dir), "tokens": args.tokens, "runs": args.runs, "settle_ms": args.settle_ms,
        "results": results, "speedups": ratios,
        "graphs": {"attention": m["architecture"].get("attention", "standard"), "int8_recipe": int8.get("recipe"),
                   "sha256": {f"{p}.{part}": g[part]["sha256"] for p, g in m["graphs"].items()
                              for part in ("encoder", "decoder") if part in g}},
        "rss_mb": {**rss, "peak": peak_rss_mb()},
        "machine": {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "threads": args.threads or "default",
                    "python": platform.python_version(), "logical_cpus": os.cpu_count(), "loadavg_1m": load},
        "versions": versions,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    for name, r in results.items():
        print(f"{name:28s} per caption p50 {r['per_caption_ms_p50']:9.1f} ms  {r['captions_per_s']:7.2f} captions/s")
    for name, v in ratios.items():
        print(f"{name:28s} {v:.2f}x")
    print(f"wrote {out}")
    return 0


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = sorted(results)
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.5))
    per_caption = [[t / int(n.split("batch")[1]) for t in results[n]["runs_ms"]] for n in names]
    ax.boxplot(per_caption, orientation="horizontal")
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.set_xscale("log")
    ax.set_xlabel("ms per caption (log scale)")
    ax.set_title("edgecap benchmark: latency per caption, one run, systems alternated")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
