"""The TensorRT target, checked without TensorRT: the lint against the support table, `--target tensorrt` exports
(standard ops, opset in range, Q scaled before Q.K^T, parity) and their static QDQ quantization."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgecap.errors import ExportError, InputError  # noqa: E402
from edgecap.models import demo_model_dir  # noqa: E402
from edgecap_export.tensorrt import lint_dir, lint_model, opset_range, support_table  # noqa: E402

from cli_helpers import run_cli  # noqa: E402 - tests/ is on sys.path (conftest)


def _qdq_matmul(*, zero_point: int = 0, scale: float = 0.1, w_axis: int = 1, act_scales: int = 1,
                opset: int = 17) -> onnx.ModelProto:
    """x [2, 4] -> Q/DQ (per tensor) -> MatMul with a per-channel QDQ weight [4, 3] -> y."""
    w = np.arange(12, dtype=np.int8).reshape(4, 3)
    w_scale = np.full(w.shape[w_axis], 0.05, dtype=np.float32)
    inits = [numpy_helper.from_array(np.full(act_scales, scale, np.float32).reshape(() if act_scales == 1 else -1),
                                     "x_scale"),
             numpy_helper.from_array(np.full(act_scales, zero_point, np.int8).reshape(() if act_scales == 1 else -1),
                                     "x_zp"),
             numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(w_scale, "w_scale"),
             numpy_helper.from_array(np.zeros_like(w_scale, dtype=np.int8), "w_zp")]
    act_axis = {"axis": 1} if act_scales > 1 else {}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="q_x", **act_axis),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dq_x", **act_axis),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=w_axis),
             helper.make_node("MatMul", ["x_dq", "w"], ["y"], name="gemm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _rules(model: onnx.ModelProto, version: str = "10.0") -> list[tuple[str, str, str]]:
    return [(v.node, v.op, v.rule) for v in lint_model(model, graph="g.onnx", trt_version=version)]


def test_table_records_its_source_and_versions():
    table = support_table()
    assert "operators.md" in table["source"]["document"] and table["source"]["tensorrt_version"]
    assert opset_range("10.0") == (9, 20) and opset_range("10.15") == (9, 24)
    with pytest.raises(InputError, match="10.0, 10.15"):
        opset_range("9.9")


def test_a_well_formed_qdq_graph_passes():
    assert _rules(_qdq_matmul()) == []


@pytest.mark.parametrize("kwargs, node, rule", [
    (dict(zero_point=3), "q_x", "zero point x_zp must be all zero"),
    (dict(scale=-0.1), "q_x", "scale x_scale must be positive"),
    (dict(w_axis=0), "dq_w", "output channel of this MatMul weight is axis 1"),
    (dict(act_scales=4), "q_x", "activations are quantized per tensor"),
    (dict(opset=21), "-", "opset 21 outside TensorRT 10.0's range 9-20"),
])
def test_qdq_and_opset_rules_name_node_and_rule(kwargs, node, rule):
    found = _rules(_qdq_matmul(**kwargs))
    assert any(n == node and rule in r for n, _op, r in found), found


def test_opset_21_is_in_range_for_a_later_tensorrt():
    assert _rules(_qdq_matmul(opset=21), "10.15") == []


def test_structural_rules():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    nodes = [helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean"], name="ln"),
             helper.make_node("Unsqueeze", ["y", "axes"], ["z"], name="unsq"),
             helper.make_node("Cast", ["z"], ["zi"], name="cast", to=TensorProto.INT32),
             helper.make_node("MatMul", ["zi", "zi"], ["m"], name="int_mm")]
    inits = [numpy_helper.from_array(np.ones(4, np.float32), "s"), numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    graph = helper.make_graph(nodes, "g", [x, axes], [helper.make_tensor_value_info("m", TensorProto.INT32, None)],
                              inits)
    found = _rules(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert ("ln", "LayerNormalization", "only the first 1 output(s) are supported") in found
    assert ("unsq", "Unsqueeze", "input 1 (axes) must be a constant") in found
    assert any(n == "int_mm" and "MatMul takes FLOAT" in r for n, _op, r in found), found


def test_check_trt_fails_on_the_default_cpu_graphs(capsys):
    """The bundled demo model: contrib attention in every graph, MatMulInteger/DynamicQuantizeLinear in the INT8
    ones -- each reported with node, op and rule, and the command exits 1."""
    code, out, err = run_cli(["check-trt", str(demo_model_dir())], capsys)
    assert code == 1, out
    lines = err.splitlines()
    assert any("decoder.onnx: node" in s and "(com.microsoft::MultiHeadAttention): domain com.microsoft has no "
               "TensorRT importer" in s for s in lines)
    assert any("(MatMulInteger): op MatMulInteger is not supported" in s for s in lines)
    assert any("(DynamicQuantizeLinear): op DynamicQuantizeLinear is not supported" in s for s in lines)
    assert "violation(s) in 4 of 4 graph(s)" in lines[-1]


def test_check_trt_fails_on_a_non_zero_zero_point(tmp_path, capsys):
    onnx.save(_qdq_matmul(zero_point=5), str(tmp_path / "bad.onnx"))
    code, _out, err = run_cli(["check-trt", str(tmp_path)], capsys)
    assert code == 1
    assert "bad.onnx: node q_x (QuantizeLinear): zero point x_zp must be all zero (found 1 non-zero)" in err
    onnx.save(_qdq_matmul(), str(tmp_path / "bad.onnx"))
    code, out, err = run_cli(["check-trt", str(tmp_path), "--trt-version", "10.15"], capsys)
    assert code == 0 and "1 graph(s) pass the TensorRT 10.15 lint: bad.onnx" in out, err


def _traced_shape_arithmetic() -> onnx.ModelProto:
    """What torch.onnx traces for ``x.view(x.shape[0], -1)`` and ``(6 - x.shape[2] % 4) % 4`` on x [batch, 4, 6]:
    Shape/Gather chains over a dynamic and a static dimension."""
    c = {n: numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
         (("i0", 0), ("i2", 2), ("four", 4), ("six", 6), ("ax0", [0]), ("minus1", [-1]))}
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "i2"], ["w"], name="gather_w"),
             helper.make_node("Mod", ["w", "four"], ["wm"], name="mod"),
             helper.make_node("Sub", ["six", "wm"], ["pad"], name="sub"),
             helper.make_node("Cast", ["pad"], ["padf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "padf"], ["y"], name="add"),
             helper.make_node("Gather", ["s", "i0"], ["b"], name="gather_b"),
             helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"], name="unsq"),
             helper.make_node("Concat", ["b1", "minus1"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["y", "target"], ["z"], name="reshape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], list(c.values()))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fold_turns_static_shape_arithmetic_into_constants_and_keeps_dynamic_axes():
    ort = pytest.importorskip("onnxruntime")
    from edgecap_export.tensorrt.fold import fold_static_shapes

    model = _traced_shape_arithmetic()
    folded = fold_static_shapes(model)
    ops = [n.op_type for n in folded.graph.node]
    assert "Shape" not in ops and "Mod" not in ops and ops.count("Reshape") == 1, ops
    reshape = next(n for n in folded.graph.node if n.op_type == "Reshape")
    target = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}[reshape.input[1]]
    assert target.tolist() == [0, -1]  # the batch is kept (0), not frozen
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 4, 6)).astype(np.float32)
        want, got = (ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0] for m in (model, folded))
        assert got.shape == (batch, 24) and np.array_equal(got, want)


# -- `--target tensorrt` exports -----------------------------------------------------------------------------------

FAMILIES = ("vit-gpt2", "blip", "florence2", "smol")
# the slow grid: Florence-2 with three DaViT stages and three BART layers at 64 px, and SmolVLM's own head with
# 6 heads over 3 KV heads on a 96 px tile, as well
ALL_FAMILIES = [*FAMILIES, pytest.param("florence2-deep", marks=pytest.mark.slow),
                pytest.param("smolvlm-wide", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def trt_export(checkpoint_factory, tmp_path_factory):
    """A validated `--target tensorrt --fp16` export per family (parity with transformers is part of the export:
    greedy and beam tokens, and for SmolVLM padded batches of prompts of different lengths)."""
    from edgecap_export import export_model

    cache = {}

    def make(name: str):
        if name not in cache:
            cache[name] = export_model(str(checkpoint_factory(name)), tmp_path_factory.mktemp(f"trt-{name}"),
                                       progress=False, target="tensorrt", fp16=True, fp16_frames=4)
        return cache[name]

    return make


@pytest.fixture(scope="module")
def trt_int8(trt_export, tmp_path_factory):
    """`quantize --target tensorrt` of each family's export (a copy), with its quality report."""
    from edgecap_export.quantize import quantize_dir

    cache = {}

    def make(name: str):
        if name not in cache:
            d = tmp_path_factory.mktemp(f"trt-int8-{name}") / "m"
            shutil.copytree(trt_export(name), d)
            report = quantize_dir(d, calib_frames=8, eval_frames=8, progress=False, target="tensorrt",
                                  accept_quality_drop=True, synth_eval=0)
            cache[name] = (d, report)
        return cache[name]

    return make


def _assert_tensorrt_graph(path, low: int, high: int) -> None:
    model = onnx.load(str(path))
    versions = {o.domain: o.version for o in model.opset_import}
    assert set(versions) <= {"", "ai.onnx"} and low <= versions[""] <= high, versions
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    assert all(d in ("", "ai.onnx") for d, _ in ops), ops
    banned = {o for _, o in ops if o in ("MatMulInteger", "DynamicQuantizeLinear") or o.startswith("QLinear")}
    assert not banned, banned
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            assert not inits[n.input[2]].any(), n.name


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_tensorrt_export_passes_check_parity_and_records_the_target(family, trt_export):
    d = trt_export(family)
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["validation"]["passed"] is True  # tokens identical to transformers in ONNX Runtime CPU
    assert manifest["target"] == {"name": "tensorrt", "trt_version": "10.0", "check_trt": "passed"}
    assert manifest["architecture"]["attention"] == "standard"
    assert lint_dir(d) == []
    for part in ("encoder", "decoder"):
        _assert_tensorrt_graph(d / f"{part}.onnx", *opset_range("10.0"))
        _assert_tensorrt_graph(d / f"{part}.fp16.onnx", *opset_range("10.0"))


@pytest.mark.parametrize("family", FAMILIES)
def test_fp16_graphs_keep_layernorm_and_softmax_in_fp32_and_record_agreement(family, trt_export):
    d = trt_export(family)
    fp16 = json.loads((d / "manifest.json").read_text())["graphs"]["fp16"]
    assert fp16["recipe"]["kept_fp32"] == ["LayerNormalization", "Softmax"]
    agreement = fp16["agreement"]
    assert agreement["frames"] == 4 and 0.0 <= agreement["exact_match"] <= 1.0
    assert agreement["reference"] == "fp32"
    # each family's default prompt: SmolVLM answers its default question, Florence-2 runs its default task
    assert agreement["prompt"] == {"smol": "Describe what happens in this frame.", "florence2": "<CAPTION>"}.get(family)
    # SmolVLM's Llama RMSNorms (2 layers x 2 + the final one, in the prefill and in the step graph) run in FP32
    assert fp16["recipe"]["rms_norms_fp32"] == (10 if family == "smol" else 0)
    for part in ("encoder", "decoder"):
        model = onnx.shape_inference.infer_shapes(onnx.load(str(d / f"{part}.fp16.onnx")))
        g = model.graph
        types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
        types.update({i.name: i.data_type for i in g.initializer})
        weights = [i for i in g.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
        assert sum(i.data_type == TensorProto.FLOAT16 for i in weights) > len(weights) // 2
        gemms = [n for n in g.node if n.op_type == "MatMul"]
        assert gemms and all(types[n.output[0]] == TensorProto.FLOAT16 for n in gemms)
        norms = [n for n in g.node if n.op_type in ("LayerNormalization", "Softmax")]
        assert norms and all(types[i] == TensorProto.FLOAT for n in norms for i in n.input if i)
        squares = {n.output[0] for n in g.node if n.op_type == "Pow"}  # an RMSNorm's x^2 and its mean: FP32
        means = [n for n in g.node if n.op_type == "ReduceMean" and n.input[0] in squares]
        assert len(means) == fp16["recipe"]["rms_norms_fp32"] // 2
        assert all(types[n.input[0]] == types[n.output[0]] == TensorProto.FLOAT for n in means)
        # the interface is the FP32 one the runtime feeds
        assert [v.type.tensor_type.elem_type for v in g.input] == [
            v.type.tensor_type.elem_type for v in onnx.load(str(d / f"{part}.onnx"), load_external_data=False).graph.input]


def test_fp16_keeps_a_traced_rmsnorm_in_fp32(tmp_path):
    """Llama's RMSNorm as torch traces it (Cast, Pow(x, 2), ReduceMean, Add eps, Sqrt, Div, Mul(x, .), Cast, weight
    Mul) before a GEMM: one hidden value of 1000 makes x^2 overflow FP16 and zeroes its row when the chain runs in
    FP16 (the onnx reference evaluator computes in the graph's dtypes, as TensorRT would; ONNX Runtime CPU upcasts
    FP16 Pow itself and would hide it). Kept in FP32 as one group, the row matches FP32."""
    from onnx.reference import ReferenceEvaluator

    from edgecap_export.tensorrt.fp16 import convert_fp16

    const = lambda name, v: helper.make_node("Constant", [], [name],  # noqa: E731
                                             value=numpy_helper.from_array(np.array(v, np.float32)))
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT, name="up"), const("two", 2.0),
             helper.make_node("Pow", ["xf", "two"], ["sq"], name="pow"),
             helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1, name="mean"), const("eps", 1e-5),
             helper.make_node("Add", ["ms", "eps"], ["mse"], name="add"),
             helper.make_node("Sqrt", ["mse"], ["rt"], name="sqrt"), const("one", 1.0),
             helper.make_node("Div", ["one", "rt"], ["inv"], name="div"),
             helper.make_node("Mul", ["xf", "inv"], ["nx"], name="norm"),
             helper.make_node("Cast", ["nx"], ["nxc"], to=TensorProto.FLOAT, name="down"),
             helper.make_node("Mul", ["w", "nxc"], ["y"], name="weight"),
             helper.make_node("MatMul", ["y", "proj"], ["z"], name="proj")]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.ones(8, np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "proj")]
    graph = helper.make_graph(nodes, "rms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "a.onnx"))
    assert convert_fp16(tmp_path / "a.onnx", tmp_path / "b.onnx") == 1
    x = rng.standard_normal((2, 8)).astype(np.float32)
    x[0, 3] = 1000.0
    (want,), (got,) = (ReferenceEvaluator(str(tmp_path / f)).run(None, {"x": x}) for f in ("a.onnx", "b.onnx"))
    np.testing.assert_allclose(got, want, rtol=0.01, atol=0.01)
    g = onnx.load(str(tmp_path / "b.onnx")).graph
    assert {n.name for n in g.node if n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT} == {
        "pow__in0_fp32", "norm__in0_fp32", "z__to_fp32"}  # into the group (nothing between its nodes), the output
    assert [n.op_type for n in g.node if n.name.endswith("__out_fp16")] == ["Cast"]  # out of the group, once
    assert numpy_helper.to_array(next(i for i in g.initializer if i.name == "proj")).dtype == np.float16


@pytest.mark.parametrize("family", FAMILIES)
def test_q_is_scaled_before_q_kt(family, trt_export):
    """Every activation x activation MatMul that is not P.V (Softmax output first, or V.P^T as DaViT's channel
    attention multiplies) takes a Q scaled by a constant Mul: TensorRT's attention fusion wants the scale there,
    transformers puts it after Q.K^T."""
    for part in ("encoder", "decoder"):
        g = onnx.load(str(trt_export(family) / f"{part}.onnx")).graph
        consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
        producer = {o: n for n in g.node for o in n.output}

        def probabilities(name: str) -> bool:  # a Softmax output, possibly transposed
            node = producer.get(name)
            while node is not None and node.op_type == "Transpose":
                node = producer.get(node.input[0])
            return node is not None and node.op_type == "Softmax"

        qk = [n for n in g.node if n.op_type == "MatMul" and n.input[1] not in consts
              and not probabilities(n.input[0]) and not probabilities(n.input[1])]
        assert qk, part
        for n in qk:
            q = producer[n.input[0]]
            assert q.op_type == "Mul" and any(i in consts for i in q.input), (part, n.name, q.op_type)
            assert not any(u.op_type in ("Mul", "Div") and n.output[0] in u.input for u in g.node), n.name


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_arithmetic_does_not_grow_with_attention(family, trt_export):
    """Heads are split and merged by Reshapes with constant shapes: a handful of Shape nodes per graph (position
    ids, the causal mask, the patch embedding), not a Shape/Gather/Concat chain per attention (31-34 per graph of
    these 2-layer models before)."""
    for part in ("encoder", "decoder"):
        g = onnx.load(str(trt_export(family) / f"{part}.onnx")).graph
        reshapes = [n for n in g.node if n.op_type == "Reshape"]
        consts = {o for n in g.node if n.op_type == "Constant" for o in n.output} | {i.name for i in g.initializer}
        # at most the patch embedding's flatten (transformers' own module) computes its shape
        assert reshapes and sum(n.input[1] not in consts for n in reshapes) <= 1, part
        assert sum(n.op_type == "Shape" for n in g.node) <= 4, part


@pytest.mark.parametrize("family", FAMILIES)
def test_every_op_of_the_tensorrt_graphs_is_in_the_table_and_one_left_out_fails(family, trt_export, trt_int8,
                                                                               monkeypatch):
    """The lint passes these graphs because the table lists each of their ops, not by default: an op taken out of
    the table is reported on every node that uses it."""
    from edgecap_export.tensorrt import lint as lint_module

    table = support_table()
    paths = [trt_export(family) / f"{part}.{p}onnx" for part in ("encoder", "decoder") for p in ("", "fp16.")]
    paths += [trt_int8(family)[0] / f"{part}.int8.onnx" for part in ("encoder", "decoder")]
    used = {n.op_type for path in paths for n in onnx.load(str(path)).graph.node}
    assert used <= set(table["ops"]), used - set(table["ops"])
    gelu = "Erf" if "Erf" in used else "Tanh"  # exact GELU, or the tanh approximation (SmolVLM's SigLIP)
    for op in (gelu, "LayerNormalization", "DequantizeLinear"):
        reduced = {**table, "ops": {k: v for k, v in table["ops"].items() if k != op}}
        monkeypatch.setattr(lint_module, "support_table", lambda reduced=reduced: reduced)
        found = [v for path in paths for v in lint_model(onnx.load(str(path)), graph=path.name, trt_version="10.0")]
        users = sum(n.op_type == op for path in paths for n in onnx.load(str(path)).graph.node)
        assert users and len(found) == users and all(
            v.op == op and v.rule == f"op {op} is not supported by TensorRT's ONNX parser" for v in found), op


def test_tensorrt_target_refuses_contrib_attention_and_an_opset_out_of_range(checkpoint_factory, tmp_path):
    from edgecap_export import export_model

    ckpt = str(checkpoint_factory("vit-gpt2"))
    with pytest.raises(ExportError, match="needs standard attention"):
        export_model(ckpt, tmp_path / "a", progress=False, target="tensorrt", attention="contrib")
    with pytest.raises(ExportError, match="opset 21 is outside TensorRT 10.0's range 9-20"):
        export_model(ckpt, tmp_path / "b", progress=False, target="tensorrt", opset=21)
    with pytest.raises(ExportError, match="pass --target tensorrt with it"):
        export_model(ckpt, tmp_path / "c", progress=False, fp16=True)
    assert not any((tmp_path / x).exists() for x in "abc")


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_tensorrt_int8_is_static_symmetric_qdq_that_passes_the_lint(family, trt_int8):
    d, report = trt_int8(family)
    assert lint_dir(d) == []
    manifest = json.loads((d / "manifest.json").read_text())
    recipe = manifest["graphs"]["int8"]["recipe"]
    assert recipe["format"] == "QDQ" and recipe["target"] == "tensorrt" and recipe["check_trt"] == "passed"
    assert report["frames"] == 8
    for part in ("encoder", "decoder"):
        path = d / f"{part}.int8.onnx"
        _assert_tensorrt_graph(path, *opset_range("10.0"))
        g = onnx.load(str(path)).graph
        inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        dq_weights = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
        assert dq_weights and all(inits[n.input[1]].size > 1 for n in dq_weights)  # per-channel weights
        assert all(inits[n.input[0]].dtype == np.int8 for n in dq_weights)  # S8 weights (no INT32 bias)
        acts = [n for n in g.node if n.op_type == "QuantizeLinear"]
        assert acts and all(inits[n.input[1]].size == 1 for n in acts)  # per-tensor activations


def test_smolvlm_calibration_feeds_are_the_runtimes_prefill_and_step_inputs(trt_export):
    """Static QDQ calibrates SmolVLM's prefill on the images with the default question rendered through the chat
    prompt (ids, mask, positions) and its step on the grown mask, the next positions and the cache: the inputs the
    runtime feeds (pixel values alone would not run the prefill)."""
    from edgecap import Captioner
    from edgecap.decoder_only import left_pad
    from edgecap_export.quantize import _recorded_feeds, calibration_frames

    cap = Captioner(trt_export("smol"))
    px = cap.preprocess(calibration_frames(None, 6, progress=False))
    sessions = [cap.lm.prefill_session, cap.decoder_session]
    prefill, steps = _recorded_feeds(cap, px, sessions, 5)
    assert all("run" not in vars(s) for s in sessions)  # the sessions' own run again
    assert [f["pixel_values"].shape[0] for f in prefill] == [4, 2]  # every batch of the calibration frames
    ids, mask, positions = left_pad([cap.prompts.prefix(None)] * 4, cap.lm.pad_token_id)
    assert np.array_equal(prefill[0]["input_ids"], ids) and np.array_equal(prefill[0]["attention_mask"], mask)
    assert np.array_equal(prefill[0]["position_ids"], positions) and np.array_equal(prefill[0]["pixel_values"], px[:4])
    assert len(steps) == 5  # capped at max_feeds
    first = [step for step in steps if len(step["input_ids"]) == 4]  # the first batch's steps
    assert first
    for step in steps:  # one new id per row after the prompt and the answer so far; the mask covers past + 1
        rows, past = len(step["input_ids"]), step["past_k.0"].shape[2]
        assert step["input_ids"].shape == (rows, 1) and step["attention_mask"].shape == (rows, past + 1)
    for k, step in enumerate(first):
        assert step["past_k.0"].shape[2] == ids.shape[1] + k
        assert np.array_equal(step["attention_mask"], np.concatenate([mask, np.ones((4, k + 1), np.int64)], axis=1))
        assert np.array_equal(step["position_ids"][:, 0], positions[:, -1] + 1 + k)


def test_quantize_target_tensorrt_needs_a_tensorrt_export(tiny_export, tmp_path):
    from edgecap_export.quantize import quantize_dir

    with pytest.raises(InputError, match="quantizes a --target tensorrt export"):
        quantize_dir(tiny_export, target="tensorrt", progress=False)
    with pytest.raises(InputError, match="quantizes statically"):
        quantize_dir(tiny_export, target="tensorrt", encoder_mode="dynamic", progress=False)


# -- providers (option construction runs here; sessions need a GPU) ------------------------------------------------

def test_provider_options_for_tensorrt_cuda_and_cpu(trt_export):
    from edgecap.providers import ProfileLimits, session_providers

    d = trt_export("vit-gpt2")
    assert session_providers(None, d / "decoder.onnx") == ["CPUExecutionProvider"]
    assert session_providers(["CPUExecutionProvider"], d / "decoder.onnx") == ["CPUExecutionProvider"]
    trt, cuda, cpu = session_providers(["tensorrt"], d / "decoder.fp16.onnx", ProfileLimits(max_batch=4, max_past=10))
    name, opts = trt
    assert name == "TensorrtExecutionProvider" and cuda[0] == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"
    assert opts["trt_fp16_enable"] and not opts["trt_int8_enable"] and opts["trt_engine_cache_enable"]
    assert opts["trt_engine_cache_path"] == str(d / "trt_cache")
    heads, head_dim = (json.loads((d / "manifest.json").read_text())["architecture"][k] for k in ("num_heads", "head_dim"))
    assert f"past_k.0:1x{heads}x0x{head_dim}" in opts["trt_profile_min_shapes"].split(",")
    assert f"past_k.0:4x{heads}x10x{head_dim}" in opts["trt_profile_max_shapes"].split(",")
    assert "input_ids:1x1" in opts["trt_profile_min_shapes"].split(",")
    with pytest.raises(InputError, match="unknown provider 'rocm'"):
        session_providers(["rocm"], d / "decoder.onnx")


def test_florence2_profiles_cover_the_prompt_and_the_cross_kv_it_lengthens(trt_export):
    """Florence-2's encoder reads the prompt ids ([batch, prompt_len]) and its cross K/V hold image features +
    prompt positions ("encoder_len"): both get ranges, not 1..1."""
    from edgecap.providers import ProfileLimits, session_providers

    d = trt_export("florence2")
    arch = json.loads((d / "manifest.json").read_text())["architecture"]
    heads, head_dim, image = arch["num_heads"], arch["head_dim"], arch["encoder_seq_len"]
    limits = ProfileLimits(max_batch=2, max_prompt=40)
    (_, enc), *_ = session_providers(["tensorrt"], d / "encoder.onnx", limits)
    assert "input_ids:1x1" in enc["trt_profile_min_shapes"].split(",")
    assert "input_ids:2x40" in enc["trt_profile_max_shapes"].split(",")
    (_, dec), *_ = session_providers(["tensorrt"], d / "decoder.fp16.onnx", limits)
    assert f"cross_k.0:1x{heads}x{image + 1}x{head_dim}" in dec["trt_profile_min_shapes"].split(",")
    assert f"cross_v.0:2x{heads}x{image + 40}x{head_dim}" in dec["trt_profile_max_shapes"].split(",")


def test_smolvlm_profiles_hold_the_image_tokens_and_the_mask_is_past_plus_one(trt_export):
    """SmolVLM's prefill prompt holds the image tokens and the chat template around the question; its step's past
    is that whole prefix plus the answer so far, and the step's attention mask covers past + the new id at every
    point of the profile."""
    from edgecap.providers import ProfileLimits, session_providers

    d = trt_export("smol")
    arch = json.loads((d / "manifest.json").read_text())["architecture"]
    kv, head_dim, image = arch["num_kv_heads"], arch["head_dim"], arch["encoder_seq_len"]
    limits = ProfileLimits(max_batch=2, max_prompt=40, max_past=20)
    (_, pre), *_ = session_providers(["tensorrt"], d / "encoder.onnx", limits)
    shapes = {k: dict(e.split(":") for e in pre[f"trt_profile_{k}_shapes"].split(",")) for k in ("min", "opt", "max")}
    assert [shapes[k]["input_ids"] for k in ("min", "opt", "max")] == [f"1x{image + 1}", f"1x{image + 10}",
                                                                      f"2x{image + 40}"]
    assert all(shapes[k]["attention_mask"] == shapes[k]["position_ids"] == shapes[k]["input_ids"] for k in shapes)
    (_, step), *_ = session_providers(["tensorrt"], d / "decoder.fp16.onnx", limits)
    shapes = {k: dict(e.split(":") for e in step[f"trt_profile_{k}_shapes"].split(",")) for k in ("min", "opt", "max")}
    pasts = [image + 1, image + 10 + 10, image + 40 + 20]  # the prefix (image + prompt) plus 0 / half / all answer
    for k, past in zip(("min", "opt", "max"), pasts):
        batch = 2 if k == "max" else 1
        assert shapes[k]["past_v.1"] == f"{batch}x{kv}x{past}x{head_dim}"
        new = int(shapes[k]["input_ids"].split("x")[1])
        assert shapes[k]["attention_mask"] == f"{batch}x{past + new}" and shapes[k]["position_ids"] == f"{batch}x{new}"
    assert shapes["min"]["input_ids"] == shapes["opt"]["input_ids"] == "1x1"


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["tensorrt", "cuda"])
def test_gpu_providers_caption_like_cpu(provider, trt_export):
    ort = pytest.importorskip("onnxruntime")
    wanted = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider"}[provider]
    if wanted not in ort.get_available_providers():
        pytest.skip(f"{wanted} is not available (needs onnxruntime-gpu and a GPU)")
    from edgecap import Captioner
    from edgecap import synth

    d = trt_export("vit-gpt2")
    frames = [synth.render_scene(synth.HELD_OUT_SEED_START + i)[0] for i in range(4)]
    cpu = Captioner(d).caption(frames)
    gpu = Captioner(d, providers=[provider]).caption(frames)
    assert [c.token_ids for c in gpu] == [c.token_ids for c in cpu]


def test_engines_build_needs_a_tensorrt_export_then_tensorrt(tiny_export, trt_export, capsys):
    from cli_helpers import run_cli

    code, _out, err = run_cli(["engines", "build", str(tiny_export)], capsys)
    assert code == 2 and "is not a --target tensorrt export" in err
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        code, _out, err = run_cli(["engines", "build", str(trt_export("vit-gpt2"))], capsys)
        assert code == 2 and "`tensorrt` is not installed" in err


def test_engine_cache_key_changes_with_each_part():
    from edgecap_export.tensorrt.engines import EngineKey

    base = EngineKey("ab" * 32, "fp16", "10.0.1", "89")
    names = {base.file_name("decoder")} | {
        EngineKey(*(x if i != j else y for i, (x, y) in enumerate(zip(base.__dict__.values(),
                                                                        ("cd" * 32, "int8", "10.3", "87"))))
                  ).file_name("decoder") for j in range(4)}
    assert len(names) == 5 and all(n.startswith("decoder.") and n.endswith(".plan") for n in names)


@pytest.mark.gpu
def test_engines_build_on_a_gpu(trt_export):
    pytest.importorskip("tensorrt")
    from edgecap_export.tensorrt.engines import build_engines

    first = build_engines(trt_export("vit-gpt2"), precisions=("fp16",))
    assert len(first) == 2 and all(p.stat().st_size > 0 for p in first)
    mtimes = [p.stat().st_mtime_ns for p in first]
    assert build_engines(trt_export("vit-gpt2"), precisions=("fp16",)) == first  # cache hit
    assert [p.stat().st_mtime_ns for p in first] == mtimes
