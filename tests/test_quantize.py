"""INT8 export: where quantization lands in the graphs, the INT8 runtime path, and the quality gate."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from edgecap import Captioner  # noqa: E402
from edgecap.errors import ExportError, InputError  # noqa: E402


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
    from edgecap.errors import ModelError
    from edgecap_export.checkpoint import sha256_file

    def manifest():
        return json.loads((d / "manifest.json").read_text())

    monkeypatch.setattr(quantize, "quality_gate", lambda *a, **k: {"frames": 4, "exact_match": 0.5,
                                                                     "token_agreement": 0.8})
    with pytest.raises(ExportError, match="exact match 50.0% < 95%.*these INT8 graphs were not kept"):
        quantize.quantize_dir(d, calib_frames=4, eval_frames=4, progress=False)
    # a rejected INT8 is not kept, so nothing can caption with it; its report stays for the user to read
    assert "int8" not in manifest()["graphs"] and not manifest()["int8_rejected"]["quality"]["passed"]
    assert not list(d.glob("*int8*.onnx"))
    with pytest.raises(ModelError, match="run `edgecap quantize`"):
        Captioner(d, precision="int8")
    report = quantize.quantize_dir(d, calib_frames=4, eval_frames=4, progress=False, accept_quality_drop=True)
    assert report["accepted_quality_drop"]
    kept = manifest()["graphs"]["int8"]
    assert kept["quality"]["accepted_quality_drop"] and "int8_rejected" not in manifest()
    assert kept["encoder"]["file"] == "encoder.int8.onnx" and (d / "encoder.int8.onnx").is_file()
    # a failing or interrupted re-run leaves the INT8 graphs that were kept before, files and manifest entry
    with pytest.raises(ExportError, match="quality gate failed"):
        quantize.quantize_dir(d, calib_frames=4, eval_frames=4, progress=False, encoder_mode="static")
    assert manifest()["graphs"]["int8"] == kept

    def interrupted(gate_dir, *a, **k):
        # during the gate the directory's own manifest is untouched (so even a SIGKILL here leaves it as it was):
        # the gate reads the candidates through the manifest of a side directory
        assert manifest()["graphs"]["int8"] == kept
        gated = json.loads((gate_dir / "manifest.json").read_text())["graphs"]["int8"]
        assert gated["encoder"]["file"] == "encoder.int8.candidate.onnx"
        assert (gate_dir / gated["encoder"]["file"]).is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize, "quality_gate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quantize.quantize_dir(d, calib_frames=4, eval_frames=4, progress=False, encoder_mode="static")
    assert manifest()["graphs"]["int8"] == kept
    assert sorted(p.name for p in d.glob("*int8*.onnx")) == ["decoder.int8.onnx", "encoder.int8.onnx"]
    assert not list(d.glob(".int8-gate-*"))
    assert all(sha256_file(d / kept[part]["file"]) == kept[part]["sha256"] for part in ("encoder", "decoder"))
    Captioner(d, precision="int8")


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


def _conv_stack(path, *, stem_out=16):
    """An ONNX graph of the convolutions the INT8 recipe meets: a 3-channel stem, a stride-2 3x3 with bias (DaViT's
    downsampling), a 2x2 stride-2 without pads, a 3x3 with asymmetric pads and a depthwise 3x3. Spatial size and
    batch are dynamic."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    specs = [  # name, c_in, c_out, kernel, stride, pads, group, bias
        ("stem", 3, stem_out, 3, 1, [1, 1, 1, 1], 1, True),
        ("down", stem_out, 12, 3, 2, [1, 1, 1, 1], 1, True),
        ("patch", 12, 10, 2, 2, [0, 0, 0, 0], 1, False),
        ("skew", 10, 9, 3, 1, [0, 1, 1, 0], 1, True),
        ("depthwise", 9, 9, 3, 1, [1, 1, 1, 1], 9, True),
    ]
    nodes, inits, x = [], [], "x"
    for name, c_in, c_out, k, s, pads, group, bias in specs:
        inits.append(numpy_helper.from_array(rng.standard_normal((c_out, c_in // group, k, k)).astype(np.float32)
                                             * 0.3, name + ".w"))
        inputs = [x, name + ".w"]
        if bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), name + ".b"))
            inputs.append(name + ".b")
        nodes.append(helper.make_node("Conv", inputs, [name], name=name, kernel_shape=[k, k], strides=[s, s],
                                      pads=pads, group=group))
        x = name
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             ["b", 3, "h", "w"])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _run(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_convs_become_im2col_matmuls_with_the_same_values(tmp_path):
    # The INT8 recipe turns every one-group Conv past the image stem into Pad + strided Slices + Concat + MatMul
    # so it quantizes like the other GEMMs. In float it must be the same convolution: every tap lined up, for odd
    # and even sizes (the Slice ends are relative to the padded end), strides 1 and 2, with and without bias and
    # pads; the stem and the depthwise Conv stay as they were.
    from edgecap_export.im2col import convs_as_matmuls

    src = _conv_stack(tmp_path / "convs.onnx")
    assert convs_as_matmuls(src, tmp_path / "im2col.onnx") == 3
    ops = [n.op_type for n in onnx.load(str(tmp_path / "im2col.onnx")).graph.node]
    assert ops.count("Conv") == 2 and ops.count("MatMul") == 3, ops
    rng = np.random.default_rng(1)
    for shape in [(1, 3, 11, 14), (2, 3, 16, 16), (1, 3, 9, 7), (3, 3, 20, 13)]:
        x = rng.standard_normal(shape).astype(np.float32)
        before, after = _run(src, x), _run(tmp_path / "im2col.onnx", x)
        assert after.shape == before.shape, shape
        np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * float(np.abs(before).max()))


def test_a_graph_without_eligible_convs_is_not_rewritten(tmp_path):
    from edgecap_export.im2col import convs_as_matmuls

    # dilated convolutions are left alone, like the stem and the depthwise one: nothing to do, nothing written
    model = onnx.load(str(_conv_stack(tmp_path / "convs.onnx")))
    for n in model.graph.node:
        if n.name in ("down", "patch", "skew"):
            n.attribute.append(onnx.helper.make_attribute("dilations", [2, 2]))
    onnx.save(model, str(tmp_path / "dilated.onnx"))
    assert convs_as_matmuls(tmp_path / "dilated.onnx", tmp_path / "out.onnx") == 0
    assert not (tmp_path / "out.onnx").exists()


def test_int8_recipe_quantizes_the_rewritten_convs(tmp_path):
    from edgecap_export.quantize import quantize_dynamic_graph

    src = _conv_stack(tmp_path / "convs.onnx")
    dst = tmp_path / "convs.int8.onnx"
    assert quantize_dynamic_graph(src, dst) == {"convs_as_matmuls": 3, "tanh_gelu_fused": 0}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".convs-")]  # the float rewrite is gone
    g = onnx.load(str(dst)).graph
    inits = {i.name for i in g.initializer}
    ops = [n.op_type for n in g.node]
    assert ops.count("Conv") == 2 and ops.count("MatMulInteger") == 3, ops
    assert not [n for n in g.node if n.op_type == "MatMul" and n.input[1] in inits]
    x = np.random.default_rng(2).standard_normal((2, 3, 15, 12)).astype(np.float32)
    ref, q = _run(src, x), _run(dst, x)
    assert np.linalg.norm(q - ref) / np.linalg.norm(ref) < 0.05


def test_one_quantize_per_directory_and_leftovers_of_a_killed_one_are_removed(tiny_export, tmp_path, monkeypatch):
    """A quantize killed outright leaves its candidates, the gate's side directory and the im2col copy of the
    encoder; the next quantize removes them. A second quantize on a directory already being quantized is refused
    with one line instead of overwriting the first one's candidates."""
    import fcntl
    import os

    from edgecap_export import quantize

    d = tmp_path / "model"
    shutil.copytree(tiny_export, d)
    (d / ".int8-gate-x1").mkdir()
    os.link(d / "encoder.onnx", d / ".int8-gate-x1" / "encoder.onnx")
    (d / ".convs-x2").mkdir()
    (d / ".convs-x2" / "encoder.onnx").write_bytes(b"half-written")
    (d / "decoder.int8.candidate.onnx").write_bytes(b"half-written")
    before = sorted(p.name for p in d.iterdir())
    fd = os.open(d, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running quantize holds it
        with pytest.raises(InputError, match="another edgecap quantize is running on .*wait for it to finish"):
            quantize.quantize_dir(d, calib_frames=4, eval_frames=4, progress=False)
        assert sorted(p.name for p in d.iterdir()) == before  # a refused run touches nothing
    finally:
        os.close(fd)
    monkeypatch.setattr(quantize, "quality_gate", lambda *a, **k: {"frames": 4, "exact_match": 1.0,
                                                                     "token_agreement": 1.0})
    quantize.quantize_dir(d, calib_frames=4, eval_frames=4, progress=False)
    left = {p.name for p in d.iterdir()}
    assert not {n for n in left if n.startswith((".int8-gate-", ".convs-")) or "candidate" in n}
    assert {"encoder.int8.onnx", "decoder.int8.onnx", "encoder.onnx"} <= left
    Captioner(d, precision="int8")
