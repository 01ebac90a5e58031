"""The benchmark runs end to end on a tiny model (no timing asserts: timings belong in benchmarks/)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")


@pytest.mark.slow  # quantizes and times three systems; test_floor_runs_on_tiny_checkpoint is the fast representative
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
    assert report["machine"]["cpu"] and report["versions"]["onnxruntime"] and "cpu_flags" in report["machine"]
    assert report["graphs"]["attention"] == "contrib" and report["graphs"]["int8_recipe"]["decoder_mode"] == "dynamic"
    pytest.importorskip("matplotlib")
    assert out.with_suffix(".png").stat().st_size > 1000


def test_bench_refuses_what_it_cannot_run_before_timing(tiny_export, checkpoint_factory, tmp_path, monkeypatch):
    # a system the directory lacks, a length past the decoder's positions or a report path that cannot be written:
    # one line before any timing (it was an empty report with exit 0, or a traceback after the whole run)
    from edgecap.errors import InputError
    from edgecap_export import bench

    monkeypatch.setattr(bench, "_edgecap_runner", lambda *a, **k: pytest.fail("timed before refusing"))
    out = str(tmp_path / "bench.json")
    positions = json.loads((tiny_export / "manifest.json").read_text())["architecture"]["decoder_positions"]
    for extra, message in ((["--systems", "int8"], "no int8 graphs"), (["--systems", "eager"], "no checkpoint in hf"),
                           (["--tokens", str(positions + 1)], f"holds {positions} positions"),
                           (["--out", str(tmp_path)], "is a directory"),
                           (["--out", "/proc/edgecap/bench.json"], "cannot create its directory")):
        with pytest.raises(InputError, match=message):
            bench.main(["--model", str(tiny_export), "--runs", "1", "--batch", "1", "--settle-ms", "0",
                        "--out", out, *extra])
    assert not (tmp_path / "bench.json").exists()
    # eager on a checkpoint in hf/ other than the one the graphs came from: two models' times set side by side as a
    # speed-up (found by a stress round); the manifest's weights checksum tells them apart
    d = tmp_path / "foreign"
    shutil.copytree(tiny_export, d)
    shutil.copytree(checkpoint_factory("blip"), d / "hf")
    for extra in ([], ["--systems", "eager", "fp32"]):
        with pytest.raises(InputError, match="hf is not the checkpoint .*foreign was exported from"):
            bench.main(["--model", str(d), "--runs", "1", "--batch", "1", "--settle-ms", "0", "--out", out, *extra])
    assert not (tmp_path / "bench.json").exists()


def test_bench_times_eager_on_the_exported_checkpoint_beside_files_transformers_does_not_load(
        tiny_export, checkpoint_factory, tmp_path):
    """DIR/hf holding the exported weights next to a Trainer's training_args.bin (or the pytorch_model.bin that
    `huggingface-cli download` fetches beside model.safetensors) was refused as "not the checkpoint DIR was
    exported from": the checksum took every .bin in. Found by a stress round."""
    from edgecap_export import bench
    from edgecap_export.checkpoint import weights_sha256

    d = tmp_path / "d"
    shutil.copytree(tiny_export, d)
    shutil.copytree(checkpoint_factory("vit-gpt2"), d / "hf")
    (d / "hf" / "training_args.bin").write_bytes(b"not weights")
    (d / "hf" / "pytorch_model.bin").write_bytes(b"the same weights, pickled")
    exported = json.loads((d / "manifest.json").read_text())["source"]["weights_sha256"]
    assert weights_sha256(d / "hf") == exported
    out = tmp_path / "bench.json"
    assert bench.main(["--model", str(d), "--runs", "1", "--batch", "1", "--tokens", "2", "--settle-ms", "0",
                       "--systems", "eager", "fp32", "--out", str(out)]) == 0
    assert "transformers_eager/batch1" in json.loads(out.read_text())["results"]


def test_a_random_checkpoint_build_stopped_midway_is_built_again(tmp_path):
    """`edgecap bench --arch` builds hundreds of MB of random weights: Ctrl-C during save_pretrained left a
    config.json beside part of the weights, which every later run took as built and failed on."""
    from edgecap.errors import InputError
    from edgecap_export.random_checkpoints import _built_whole

    calls = []

    @_built_whole
    def build(out: Path, seed: int = 0) -> Path:
        calls.append(seed)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        if len(calls) == 1:
            raise KeyboardInterrupt  # before the weights
        (out / "model.safetensors").write_bytes(b"weights")
        return out

    hf = tmp_path / "work" / "hf"
    with pytest.raises(KeyboardInterrupt):
        build(hf)
    assert not hf.exists()
    assert build(hf, seed=1) == hf and (hf / "model.safetensors").is_file() and calls == [0, 1]
    assert build(hf) == hf and calls == [0, 1]  # whole: taken as built
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds no checkpoint"):
        build(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_floor_runs_on_tiny_checkpoint(checkpoint_factory, floor, tmp_path):
    """benchmarks/floor.py end to end on a tiny checkpoint: its shapes, edgecap's INT8 recipe, eager in the same
    run, and the arithmetic of the report (no timing asserts)."""
    hf = checkpoint_factory("vit-gpt2")
    out = tmp_path / "floor.json"
    assert floor.main(["--hf", str(hf), "--runs", "2", "--rounds", "1", "--eager-runs", "1", "--tokens", "3",
                       "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    cfg = json.loads((hf / "config.json").read_text())
    enc, dec = floor.gemm_shapes(cfg)[:2]
    d, layers = cfg["decoder"]["n_embd"], cfg["decoder"]["n_layer"]
    assert len(dec) == 6 * layers + 1 and dec[-1] == (d, cfg["decoder"]["vocab_size"])
    assert report["parameters"]["decoder_step"] == sum(k * n for k, n in dec)
    assert set(report["floors"]) == {"fp32", "int8", "int8_per_tensor"}
    assert report["eager"]["runs"] == 1
    # the host's ISA is recorded with the CPU (hosts of one machine kind differ: AVX2 alone, AVX-512 VNNI)
    from edgecap_export.bench import SIMD_FLAGS

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    flags = set(next((ln.split(":", 1)[1].split() for ln in cpuinfo if ln.startswith("flags")), []))
    assert report["machine"]["cpu_flags"] == sorted(SIMD_FLAGS & flags)
    for r in report["floors"].values():
        assert r["floor_per_caption_ms"] == pytest.approx(r["encoder_gemms_ms"] + 3 * r["decoder_step_gemvs_ms"])
        assert r["max_speedup_vs_eager"] == pytest.approx(report["eager"]["median_ms"] / r["floor_per_caption_ms"])
    with pytest.raises(SystemExit):  # not a checkpoint: a usage error, not a traceback
        floor.main(["--hf", str(tmp_path), "--no-eager", "--out", str(out)])


def test_bench_arch_exports_again_when_its_checkpoint_was_built_again(tmp_path, monkeypatch):
    """WORKDIR/hf built again with other weights (deleted, then rebuilt by another torch's random init) beside a
    passed export of the old ones: prepare_random kept the export and every `bench --arch` run refused hf/ as "not
    the checkpoint exported", which --arch cannot fix. Found by a stress round. Now it exports again."""
    from tiny_models import build_blip

    from edgecap_export import bench, random_checkpoints

    seed = {"value": 0}
    monkeypatch.setitem(random_checkpoints.RANDOM_ARCHS, "blip-base",
                        random_checkpoints._built_whole(lambda out: build_blip(out, seed=seed["value"])))
    work = tmp_path / "work"
    argv = ["--arch", "blip-base", "--workdir", str(work), "--systems", "eager", "fp32", "--runs", "1", "--batch",
            "1", "--tokens", "2", "--settle-ms", "0", "--out", str(tmp_path / "bench.json")]
    assert bench.main(argv) == 0
    first = json.loads((work / "manifest.json").read_text())["source"]["weights_sha256"]
    shutil.rmtree(work / "hf")
    seed["value"] = 1
    assert bench.main(argv) == 0
    assert json.loads((work / "manifest.json").read_text())["source"]["weights_sha256"] != first
