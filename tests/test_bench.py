"""The benchmark runs end to end on a tiny model (no timing asserts: timings belong in benchmarks/)."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("torch")


def test_bench_end_to_end_on_tiny_model(tiny_export, checkpoint_factory, tmp_path):
    from edgecap_export.bench import main
    from edgecap_export.quantize import quantize_dir

    d = tmp_path / "model"
    shutil.copytree(tiny_export, d)
    shutil.copytree(checkpoint_factory("vit-gpt2"), d / "hf")
    quantize_dir(d, calib_frames=4, eval_frames=4, accept_quality_drop=True, progress=False)
    out = tmp_path / "bench.json"
    assert main(["--model", str(d), "--runs", "2", "--tokens", "3", "--batch", "1", "2", "--out", str(out),
                 "--settle-ms", "0"]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {f"{s}/batch{b}" for s in ("transformers_eager", "edgecap_fp32", "edgecap_int8")
                                      for b in (1, 2)}
    fp32 = report["results"]["edgecap_fp32/batch2"]
    assert {"preprocess", "encoder", "decoder_first", "decode_per_token"} <= set(fp32["stages_ms"])
    assert {"p50", "p90", "p99"} <= set(fp32["per_batch_ms"]) and fp32["tokens_per_s"] > 0
    assert set(report["speedups"]) == {f"edgecap_{p}_vs_eager/batch{b}" for p in ("fp32", "int8") for b in (1, 2)}
    assert report["machine"]["cpu"] and report["versions"]["onnxruntime"]
    assert report["graphs"]["attention"] == "contrib" and report["graphs"]["int8_recipe"]["decoder_mode"] == "dynamic"
    pytest.importorskip("matplotlib")
    assert out.with_suffix(".png").stat().st_size > 1000
