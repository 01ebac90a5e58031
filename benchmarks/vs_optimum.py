"""edgecap vs optimum-onnx, side by side in one run (issue 4's peer comparison).

Captions one image at batch 1 with exactly --new-tokens greedy tokens, alternating the systems round by round
(the order flips every round), and reports the median, p90 and the ratio optimum / edgecap per system pair.

edgecap runs in this process (main venv): ``edgecap.Captioner(MODEL_DIR, precision=..., threads=T)``.
optimum-onnx runs in benchmarks/peers/optimum_worker.py under the separate peers venv (optimum-onnx 0.1.0 needs
transformers < 4.58), which exports the checkpoint with ``ORTModelForVision2Seq.from_pretrained(export=True)``
(with past), quantizes it with ``AutoQuantizationConfig.avx512_vnni`` dynamic, and caches both under
engines/optimum-vitgpt2/. Only the timed calls run while the other side waits, and both are timed the same way:
wall time of one caption from a decoded PIL image (preprocessing + encoder + 20-step decode).

Setup once:    bash benchmarks/peers/setup.sh
Run:           .venv/bin/python benchmarks/vs_optimum.py --rounds 10
All systems:   .venv/bin/python benchmarks/vs_optimum.py \
                   --systems edgecap_int8,optimum_int8,optimum_int8pc,edgecap_fp32,optimum_fp32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "benchmarks" / "peers" / "optimum_worker.py"
SYSTEMS = ("edgecap_int8", "optimum_int8", "optimum_int8pc", "edgecap_fp32", "optimum_fp32")
# (numerator, denominator) pairs reported as "how many times faster edgecap is".
PAIRS = (("optimum_int8", "edgecap_int8"), ("optimum_int8pc", "edgecap_int8"), ("optimum_fp32", "edgecap_fp32"),
         ("optimum_fp32", "edgecap_int8"))


class BenchError(RuntimeError):
    """A problem that ends the benchmark with a one-line message."""


# -- the optimum side: a worker process in the peers venv ------------------------------------------------------
class OptimumWorker:
    """Drives optimum_worker.py over its stdin/stdout line protocol; its stderr goes to a log file."""

    def __init__(self, python: Path, args: list[str], log_path: Path):
        self.log_path = log_path
        self._log: IO[str] = open(log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([str(python), str(WORKER), *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1)

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise BenchError(f"optimum worker exited (code {self.proc.returncode}); last log lines:\n"
                             + self.log_tail())
        msg = json.loads(line)
        if "error" in msg:
            raise BenchError(f"optimum worker: {msg['error']}")
        return msg

    def wait_ready(self) -> dict[str, Any]:
        """Block until the worker has exported/loaded its models; returns its ready message."""
        return self._read()

    def run(self, system: str) -> dict[str, Any]:
        """One timed caption by ``system`` ("int8" or "fp32")."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"run {system}\n")
        self.proc.stdin.flush()
        return self._read()

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# -- the edgecap side ------------------------------------------------------------------------------------------
class EdgecapSystem:
    """An edgecap Captioner timed the same way as the worker times optimum (wall ms of one caption)."""

    def __init__(self, model_dir: Path, precision: str, threads: int):
        import edgecap

        self.precision = precision
        self.captioner = edgecap.Captioner(model_dir, precision=precision, threads=threads)

    def run(self, image: Any, new_tokens: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        cap = self.captioner.caption(image, max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=1)
        total = (time.perf_counter() - t0) * 1e3
        if len(cap.token_ids) != new_tokens:
            raise BenchError(f"edgecap {self.precision} generated {len(cap.token_ids)} tokens, expected {new_tokens}")
        t = cap.timings
        return {"system": f"edgecap_{self.precision}", "total_ms": total,
                "preprocess_ms": t.get("preprocess", 0.0), "generate_ms": total - t.get("preprocess", 0.0),
                "encoder_ms": t.get("encoder"), "decoder_first_ms": t.get("decoder_first"),
                "decoder_rest_ms": t.get("decoder_rest"), "new_tokens": len(cap.token_ids),
                "token_ids": list(cap.token_ids)}


# -- statistics and environment -------------------------------------------------------------------------------
def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Median/p90/min/mean of each timing (total, generate-only, stages) present in one system's samples."""
    out: dict[str, Any] = {"n": len(samples)}
    for key in ("total_ms", "generate_ms", "encoder_ms", "preprocess_ms", "decoder_first_ms", "decoder_rest_ms",
                "decoder_with_past_ms"):
        xs = [s[key] for s in samples if s.get(key) is not None]
        if xs:
            out[key] = {"median": statistics.median(xs), "p90": float(np.percentile(xs, 90)), "min": min(xs),
                        "mean": statistics.fmean(xs)}
    return out


def ratios(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """optimum / edgecap per pair: ratio of medians, and the median of per-round paired ratios (noise-robust)."""
    out: dict[str, Any] = {}
    for num, den in PAIRS:
        if num not in samples or den not in samples:
            continue
        entry: dict[str, float] = {}
        for key in ("total_ms", "generate_ms", "encoder_ms"):
            a = [s[key] for s in samples[num]]
            b = [s[key] for s in samples[den]]
            if any(x is None for x in a + b):
                continue
            entry[f"{key[:-3]}_ratio_of_medians"] = statistics.median(a) / statistics.median(b)
            if key == "total_ms":
                entry["total_paired_median"] = statistics.median(x / y for x, y in zip(a, b))
        out[f"{num}/{den}"] = entry
    return out


def make_image(path: Path, seed: int = 0) -> Path:
    """A deterministic 640x480 RGB test image (smooth gradients plus noise), saved as PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    base = np.stack([xx / 640 * 255, yy / 480 * 255, (xx + yy) / 1120 * 255], axis=-1)
    img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


# -- the benchmark ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=REPO / "engines" / "vitgpt2-random",
                   help="edgecap export directory (default: engines/vitgpt2-random)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="HF checkpoint optimum exports (default: MODEL_DIR/hf)")
    p.add_argument("--peers-venv", type=Path, default=Path(os.environ.get("EDGECAP_PEERS_VENV",
                                                                          REPO / ".venv-peers")),
                   help="venv made by benchmarks/peers/setup.sh (default: .venv-peers or $EDGECAP_PEERS_VENV)")
    p.add_argument("--optimum-cache", type=Path, default=REPO / "engines" / "optimum-vitgpt2",
                   help="where optimum's fp32/ and int8/ exports are cached (default: engines/optimum-vitgpt2)")
    p.add_argument("--systems", default="edgecap_int8,optimum_int8",
                   help=f"comma-separated subset of {','.join(SYSTEMS)} (default: edgecap_int8,optimum_int8)")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds; each runs every system once (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per system first (default 2)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for both sides (default 2)")
    p.add_argument("--new-tokens", type=int, default=20, help="exact tokens per caption (default 20)")
    p.add_argument("--image", type=Path, default=None, help="image to caption (default: a generated 640x480 PNG)")
    p.add_argument("--gap-ms", type=float, default=100.0,
                   help="pause between runs so the other side's spinning threads park (default 100)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "vs_optimum.json",
                   help="JSON results (default: benchmarks/results/vs_optimum.json)")
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = sorted(set(args.systems) - set(SYSTEMS))
    if bad or not args.systems:
        p.error(f"--systems: unknown {bad}; choose from {','.join(SYSTEMS)}")
    if args.rounds < 1 or args.warmup < 0 or args.new_tokens < 1 or args.threads < 1:
        p.error("--rounds, --new-tokens and --threads must be >= 1, --warmup >= 0")
    args.checkpoint = args.checkpoint or args.model_dir / "hf"
    return args


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['machine']['cpu']}, {result['config']['threads']} threads, batch 1, "
          f"{result['config']['new_tokens']} tokens, {result['config']['rounds']} rounds")
    print(f"{'system':<14} {'median ms':>10} {'p90 ms':>9} {'min ms':>9} {'encoder ms':>11}")
    for name, s in result["summary"].items():
        enc = s.get("encoder_ms", {}).get("median")
        print(f"{name:<14} {s['total_ms']['median']:>10.1f} {s['total_ms']['p90']:>9.1f} "
              f"{s['total_ms']['min']:>9.1f} {enc if enc is None else f'{enc:.1f}':>11}")
    for pair, r in result["ratios"].items():
        print(f"{pair}: {r['total_ratio_of_medians']:.2f}x (paired per round {r['total_paired_median']:.2f}x, "
              f"generate-only {r['generate_ratio_of_medians']:.2f}x)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from PIL import Image
    from tqdm import tqdm

    from edgecap_export.bench import cpu_flags, cpu_model, package_versions

    peers_python = args.peers_venv / "bin" / "python"
    optimum_systems = [s.split("_", 1)[1] for s in args.systems if s.startswith("optimum_")]
    if optimum_systems and not peers_python.is_file():
        raise BenchError(f"peers venv not found at {args.peers_venv}: run benchmarks/peers/setup.sh")
    if not (args.model_dir / "manifest.json").is_file():
        raise BenchError(f"no edgecap export at {args.model_dir} (manifest.json missing)")

    with tempfile.TemporaryDirectory(prefix="vs_optimum-") as tmp:
        image_path = args.image or make_image(Path(tmp) / "image.png")
        image = Image.open(image_path).convert("RGB")
        load_start = os.getloadavg()[0]
        worker = None
        try:
            ready: dict[str, Any] = {}
            if optimum_systems:
                wargs = ["--checkpoint", str(args.checkpoint), "--cache", str(args.optimum_cache),
                         "--image", str(image_path), "--systems", ",".join(optimum_systems),
                         "--threads", str(args.threads), "--new-tokens", str(args.new_tokens)]
                log_path = Path(tmp) / "optimum_worker.log"
                print(f"starting optimum worker (the first run exports and quantizes, ~2 min; log {log_path})",
                      file=sys.stderr)
                worker = OptimumWorker(peers_python, wargs, log_path)
                ready = worker.wait_ready()
            edgecap = {s: EdgecapSystem(args.model_dir, s.split("_", 1)[1], args.threads)
                       for s in args.systems if s.startswith("edgecap_")}

            def once(system: str) -> dict[str, Any]:
                time.sleep(args.gap_ms / 1e3)
                if system in edgecap:
                    return edgecap[system].run(image, args.new_tokens)
                assert worker is not None
                return worker.run(system.split("_", 1)[1])

            samples: dict[str, list[dict[str, Any]]] = {s: [] for s in args.systems}
            total = len(args.systems) * (args.warmup + args.rounds)
            with tqdm(total=total, desc="vs_optimum", unit="caption", file=sys.stderr) as bar:
                for _ in range(args.warmup):
                    for system in args.systems:
                        once(system)
                        bar.update()
                for r in range(args.rounds):
                    order = args.systems if r % 2 == 0 else args.systems[::-1]
                    for system in order:
                        samples[system].append({**once(system), "round": r})
                        bar.update()
                    bar.set_postfix({s.replace("_", ""): f"{samples[s][-1]['total_ms']:.0f}ms" for s in order})
        finally:
            if worker is not None:
                worker.close()

    fp32_match = None
    if "edgecap_fp32" in samples and "optimum_fp32" in samples:
        fp32_match = samples["edgecap_fp32"][0]["token_ids"] == samples["optimum_fp32"][0]["token_ids"]
    return {
        "benchmark": "vs_optimum",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {"model_dir": str(args.model_dir), "checkpoint": str(args.checkpoint), "systems": args.systems,
                   "rounds": args.rounds, "warmup": args.warmup, "threads": args.threads, "batch": 1,
                   "new_tokens": args.new_tokens, "greedy": True, "order": "alternating, reversed every round",
                   "image": str(args.image) if args.image else "generated 640x480 PNG (seed 0)",
                   "timed": "wall ms per caption from a decoded PIL image: preprocess + encoder + decode",
                   "optimum_preprocessor": ready.get("preprocessor"),
                   "optimum_quantization": {"config": "AutoQuantizationConfig.avx512_vnni(is_static=False, "
                                                      "per_channel=...)",
                                            "optimum_int8": "per_channel=False (optimum's docs examples)",
                                            "optimum_int8pc": "per_channel=True (the API default; edgecap's "
                                                              "INT8 weights are per-channel too)"},
                   "optimum_use_io_binding": ready.get("use_io_binding")},
        "machine": {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
                    "loadavg_1m_start": load_start, "loadavg_1m_end": os.getloadavg()[0]},
        "versions": {"main": package_versions("edgecap", "onnxruntime", "onnx", "numpy", "tokenizers", "torch",
                                              "transformers"),
                     "peers": ready.get("versions")},
        "optimum_exports": ready.get("exports"),
        "edgecap_manifest": _manifest_summary(args.model_dir),
        "summary": {s: summarize(v) for s, v in samples.items()},
        "ratios": ratios(samples),
        "fp32_tokens_identical": fp32_match,
        "samples": {s: [{k: v for k, v in x.items() if k != "token_ids"} for x in v] for s, v in samples.items()},
        "first_token_ids": {s: v[0]["token_ids"] for s, v in samples.items()},
    }


def _manifest_summary(model_dir: Path) -> dict[str, Any]:
    """What identifies the edgecap export that was timed (it gets re-exported as edgecap improves)."""
    try:
        m = json.loads((model_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    int8 = (m.get("graphs") or {}).get("int8") or {}
    return {"edgecap_version": m.get("edgecap_version"), "created_utc": m.get("created_utc"),
            "weights_sha256": (m.get("source") or {}).get("weights_sha256"),
            "int8_recipe": int8.get("recipe"),
            "graph_sha256": {f"{p}/{g}": (v.get(g) or {}).get("sha256")
                             for p, v in (m.get("graphs") or {}).items() for g in ("encoder", "decoder")}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except BenchError as exc:
        print(f"vs_optimum: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
