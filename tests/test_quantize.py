"""INT8 export: where quantization lands in the graphs, the INT8 runtime path, and the quality gate."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from edgecap import Captioner  # noqa: E402
from edgecap.errors import ExportError  # noqa: E402


# The static-QDQ tests share a standard-attention export quantized with calibration (about half a minute here): slow.
# test_default_int8_is_dynamic_on_fused_graphs is the fast representative of a quantize run.
@pytest.fixture(scope="module")
def int8_dir(exported_factory, tmp_path_factory):
    from edgecap_export.quantize import quantize_dir

    d = tmp_path_factory.mktemp("int8") / "model"
    shutil.copytree(exported_factory("vit-gpt2", "standard"), d)
    # standard-op graphs with static QDQ in both: the TensorRT-compatible placement this test pins down
    quantize_dir(d, calib_frames=6, eval_frames=6, encoder_mode="static", decoder_mode="static",
                 accept_quality_drop=True, progress=False)
    return d


@pytest.mark.slow
@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_int8_quantizes_weight_matmuls_only(part, int8_dir):
    g = onnx.load(str(int8_dir / f"{part}.int8.onnx")).graph
    inits = {i.name for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    ops = [n.op_type for n in g.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    weight_mm = act_mm = quantized = 0
    for n in g.node:
        if n.op_type not in ("MatMul", "Gemm"):
            continue
        b = producers.get(n.input[1])
        b_is_weight = n.input[1] in inits or (b is not None and b.op_type == "DequantizeLinear"
                                              and b.input[0] in inits)
        a = producers.get(n.input[0])
        if b_is_weight:
            weight_mm += 1
            quantized += a is not None and a.op_type == "DequantizeLinear"
        else:
            act_mm += 1
            # attention products stay in float: no DequantizeLinear feeds them
            assert a is None or a.op_type != "DequantizeLinear"
    assert weight_mm and quantized == weight_mm
    if part == "decoder":
        assert act_mm >= 2  # Q.K^T and P.V of self- and cross-attention
    # LayerNorm / Softmax are never fed by quantized tensors
    for n in g.node:
        if n.op_type in ("LayerNormalization", "Softmax"):
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in n.input)


@pytest.mark.slow
def test_int8_manifest_and_runtime(int8_dir):
    m = json.loads((int8_dir / "manifest.json").read_text())
    assert {"encoder", "decoder", "recipe", "quality"} <= set(m["graphs"]["int8"])
    assert m["graphs"]["int8"]["recipe"]["format"] == "QDQ"
    cap = Captioner(int8_dir, precision="int8")
    assert cap.manifest.graph_path("int8", "decoder").name == "decoder.int8.onnx"
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    assert len(cap.caption(img, max_new_tokens=4, min_new_tokens=4).token_ids) == 4  # the QDQ graphs run


def test_quality_gate_failure_stops_unless_accepted(tiny_export, tmp_path, monkeypatch):
    from edgecap_export import quantize

    d = tmp_path / "model"
    shutil.copytree(tiny_export, d)
    monkeypatch.setattr(quantize, "quality_gate", lambda *a, **k: {"frames": 4, "exact_match": 0.5,
                                                                     "token_agreement": 0.8})
    with pytest.raises(ExportError, match="exact match 50.0% < 95%"):
        quantize.quantize_dir(d, calib_frames=4, eval_frames=4, progress=False)
    assert not json.loads((d / "manifest.json").read_text())["graphs"]["int8"]["quality"]["passed"]
    report = quantize.quantize_dir(d, calib_frames=4, eval_frames=4, progress=False, accept_quality_drop=True)
    assert report["accepted_quality_drop"]
    assert json.loads((d / "manifest.json").read_text())["graphs"]["int8"]["quality"]["accepted_quality_drop"]


def test_default_int8_is_dynamic_on_fused_graphs(tiny_export, tmp_path):
    from edgecap_export.quantize import quantize_dir

    d = tmp_path / "model"
    shutil.copytree(tiny_export, d)
    quantize_dir(d, calib_frames=4, eval_frames=4, accept_quality_drop=True, progress=False)
    dynamic = {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
    for part in ("encoder", "decoder"):
        g = onnx.load(str(d / f"{part}.int8.onnx")).graph
        fp32 = onnx.load(str(d / f"{part}.onnx")).graph
        ops = [n.op_type for n in g.node]
        assert dynamic & set(ops), part
        assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
        # every weight MatMul became an integer kernel; the fused attention nodes are untouched (float)
        inits = {i.name for i in fp32.initializer}
        weight_mm = sum(n.op_type == "MatMul" and n.input[1] in inits for n in fp32.node)
        assert weight_mm and not any(n.op_type == "MatMul" and n.input[1] in inits for n in g.node)
        assert ops.count("MultiHeadAttention") == [n.op_type for n in fp32.node].count("MultiHeadAttention") > 0
        # the weights' all-zero per-channel zero points are gone (ORT's faster integer GEMM path)
        assert all(len(n.input) < 4 for n in g.node if n.op_type == "MatMulInteger"), part
    m = json.loads((d / "manifest.json").read_text())["graphs"]["int8"]
    assert (m["recipe"]["encoder_mode"], m["recipe"]["decoder_mode"]) == ("dynamic", "dynamic")
    assert m["recipe"]["calibration"] is None  # nothing was calibrated
    cap = Captioner(d, precision="int8")
    img = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    assert len(cap.caption(img, max_new_tokens=4, min_new_tokens=4).token_ids) == 4  # the fused INT8 graphs run


def test_dropping_zero_weight_zero_points_is_exact(tiny_export, tmp_path):
    """The per-channel all-zero weight zero points are removed (a faster ORT kernel path) with bit-identical
    outputs; a zero point that is not all zero stays."""
    import onnxruntime as ort
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgecap_export.quantize import drop_zero_weight_zero_points

    kept, dropped = tmp_path / "kept.onnx", tmp_path / "dropped.onnx"
    quantize_dynamic(str(tiny_export / "encoder.onnx"), str(kept), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm"], extra_options={"MatMulConstBOnly": True})
    model = onnx.load(str(kept))
    integer_mms = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert integer_mms and all(len(n.input) == 4 for n in integer_mms)
    shutil.copy(kept, dropped)
    assert drop_zero_weight_zero_points(dropped) == len(integer_mms)
    g = onnx.load(str(dropped)).graph
    assert all(len(n.input) == 3 for n in g.node if n.op_type == "MatMulInteger")
    assert not {n.input[3] for n in integer_mms} & {i.name for i in g.initializer}  # orphans removed

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (kept, dropped)]
    inp = sessions[0].get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([2, *inp.shape[1:]]).astype(np.float32)
    for a, b in zip(*(s.run(None, {inp.name: x}) for s in sessions)):
        assert np.array_equal(a, b)

    # a zero point with a non-zero entry is left in place
    zp = next(i for i in model.graph.initializer if i.name == integer_mms[0].input[3])
    arr = numpy_helper.to_array(zp).copy()
    arr[0] = 1
    zp.CopyFrom(numpy_helper.from_array(arr, zp.name))
    onnx.save(model, str(kept))
    assert drop_zero_weight_zero_points(kept) == len(integer_mms) - 1
    assert len(next(n for n in onnx.load(str(kept)).graph.node if n.name == integer_mms[0].name).input) == 4


def test_quantizing_does_not_repeat_onnxruntimes_preprocessing_advice(tiny_export, tmp_path, caplog):
    """onnxruntime logs "Please consider to run pre-processing" on the root logger for every graph; edgecap's
    output stays free of it, and the filter does not outlive the call."""
    import logging

    from edgecap_export.quantize import quantize_dynamic_graph

    caplog.set_level(logging.INFO)
    quantize_dynamic_graph(tiny_export / "encoder.onnx", tmp_path / "encoder.int8.onnx")
    assert (tmp_path / "encoder.int8.onnx").is_file()
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
    assert not logging.getLogger().filters


def test_tanh_gelu_is_fused_into_fastgelu_with_the_same_values(tmp_path):
    # torch traces gelu(approximate="tanh") as nine elementwise nodes; the INT8 recipe fuses each into one
    # com.microsoft.FastGelu, whose values must equal the traced nodes' up to float rounding.
    import onnxruntime as ort
    import torch

    from edgecap_export.quantize import fuse_tanh_gelu

    class Mlp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16)

        def forward(self, x):
            return self.fc2(torch.nn.functional.gelu(self.fc1(x), approximate="tanh"))

    torch.manual_seed(0)
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(Mlp(), (torch.randn(2, 5, 16),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32) * 4
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("Tanh") == 1
    assert fuse_tanh_gelu(path) == 1
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "FastGelu" in ops and "Tanh" not in ops and "Mul" not in ops, ops
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert fuse_tanh_gelu(path) == 1  # idempotent: nothing left to fuse, the fused node stays
