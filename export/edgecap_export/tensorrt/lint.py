"""A pure-Python lint of ONNX graphs against TensorRT's ONNX parser support, kept as data in onnx_support.json.

What it checks (each violation names the graph, the node, the op and the rule):

* op and domain: TensorRT's parser has no importer for ``com.microsoft`` (or any non-default) domain, and an op
  absent from the table is not supported (MatMulInteger, DynamicQuantizeLinear, QLinear*, ...);
* opset: the default-domain opset lies in the target version's range;
* dtypes: the op's typed input has a type the table lists (MatMul and Softmax take float types only); UINT8 only at
  the network's inputs and outputs; INT8 only as the input of a DequantizeLinear;
* constant inputs: inputs the parser needs as constants (Squeeze/Unsqueeze/Reduce axes, Conv weights, ...);
* outputs: LayerNormalization with output Y only;
* QDQ: zero points all zero (and INT8), scales positive with a static shape, per-axis only for weights (a MatMul
  weight [K, N] on axis 1, the output channel), activations per tensor, nothing quantized around Softmax or
  LayerNormalization (a LayerNorm output only as a GEMM input or an Add's residual input).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgecap.errors import InputError, directory_not_found

TABLE_FILE = Path(__file__).with_name("onnx_support.json")
_NORMS = ("Softmax", "LayerNormalization")
_GEMM_OR_RESIDUAL = ("MatMul", "Gemm", "Add")


@dataclass(frozen=True)
class Violation:
    """One rule a graph breaks: which graph, node (name or "#index"), op ("domain::op" outside the default) and
    rule."""

    graph: str
    node: str
    op: str
    rule: str

    def __str__(self) -> str:
        return f"{self.graph}: node {self.node} ({self.op}): {self.rule}"


@lru_cache(maxsize=1)
def support_table() -> dict[str, Any]:
    """The support table (its ``source`` names the document and TensorRT version it was written from)."""
    return json.loads(TABLE_FILE.read_text(encoding="utf-8"))


def opset_range(trt_version: str) -> tuple[int, int]:
    """The default-domain opsets TensorRT ``trt_version`` parses, inclusive.

    Raises:
        InputError: a version the table does not describe.
    """
    versions = support_table()["versions"]
    if trt_version not in versions:
        raise InputError(f"TensorRT version {trt_version!r} is not in the support table; expected one of "
                         f"{', '.join(versions)}")
    low, high = versions[trt_version]["opset"]
    return int(low), int(high)


class _Graph:
    """What the rules need to know about one model: constants, types, producers and consumers."""

    def __init__(self, model: Any):
        import onnx
        from onnx import numpy_helper

        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - inference only adds type information; lint what is declared
            pass
        g = model.graph
        self.model = model
        self.nodes = list(g.node)
        self.consts: dict[str, Any] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for n in self.nodes:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
        self.types: dict[str, int] = {}
        for v in list(g.input) + list(g.output) + list(g.value_info):
            if v.type.HasField("tensor_type"):
                self.types[v.name] = v.type.tensor_type.elem_type
        for i in g.initializer:
            self.types[i.name] = i.data_type
        self.io = {v.name for v in list(g.input) + list(g.output)}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.nodes:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)

    def type_name(self, tensor: str) -> str | None:
        from onnx import TensorProto

        t = self.types.get(tensor)
        return TensorProto.DataType.Name(t) if t else None

    def is_constant(self, tensor: str) -> bool:
        """A constant, or a constant passed through DequantizeLinear (a QDQ weight)."""
        if tensor in self.consts:
            return True
        p = self.producer.get(tensor)
        return p is not None and p.op_type == "DequantizeLinear" and p.input[0] in self.consts


def lint_model(model: Any, *, graph: str, trt_version: str) -> list[Violation]:
    """Every rule ``model`` (an onnx ModelProto) breaks for TensorRT ``trt_version``.

    Args:
        model: the ONNX model.
        graph: the name violations carry (e.g. the file name).
        trt_version: a version of the support table (e.g. "10.0").

    Returns:
        The violations, in node order (empty: the graph passes).
    """
    table = support_table()
    low, high = opset_range(trt_version)
    g = _Graph(model)
    out: list[Violation] = []
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not low <= imp.version <= high:
            out.append(Violation(graph, "-", "opset", f"default-domain opset {imp.version} outside TensorRT "
                                                       f"{trt_version}'s range {low}-{high}"))
    for index, node in enumerate(g.nodes):
        name = node.name or f"#{index}"
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        out += [Violation(graph, name, op, rule) for rule in _node_rules(g, node, table)]
    for tensor, t in g.types.items():
        if t and g.type_name(tensor) in table["io_only_types"] and tensor not in g.io:
            p = g.producer.get(tensor)
            out.append(Violation(graph, (p.name if p else tensor) or tensor, p.op_type if p else "tensor",
                                 f"{g.type_name(tensor)} tensor {tensor} inside the network (only at its I/O)"))
    return out


def _node_rules(g: _Graph, node: Any, table: dict[str, Any]) -> list[str]:
    if node.domain not in table["domains"]:
        return [f"domain {node.domain} has no TensorRT importer"]
    spec = table["ops"].get(node.op_type)
    if spec is None:
        return [f"op {node.op_type} is not supported by TensorRT's ONNX parser"]
    rules = []
    k = spec.get("type_input", 0)
    if k < len(node.input) and node.input[k]:
        t = g.type_name(node.input[k])
        if t is not None and t not in spec["types"]:
            rules.append(f"input {node.input[k]} is {t}; {node.op_type} takes {', '.join(spec['types'])}")
    for k in spec.get("const_inputs", []):
        if k < len(node.input) and node.input[k] and not g.is_constant(node.input[k]):
            rules.append(f"input {k} ({node.input[k]}) must be a constant")
    if "outputs_max" in spec and sum(1 for o in node.output if o) > spec["outputs_max"]:
        rules.append(f"only the first {spec['outputs_max']} output(s) are supported")
    qdq = node.op_type in ("QuantizeLinear", "DequantizeLinear")
    for name in node.input:
        if name and g.type_name(name) in table["quantized_types"] and not qdq:
            rules.append(f"INT8 input {name}: INT8 only through QuantizeLinear/DequantizeLinear")
    if qdq:
        rules += _qdq_rules(g, node)
    return rules


def _qdq_rules(g: _Graph, node: Any) -> list[str]:
    import numpy as np

    rules = []
    scale_name = node.input[1]
    scale = g.consts.get(scale_name)
    if scale is None:
        rules.append(f"scale {scale_name} must be a constant with a static shape")
    elif not (np.asarray(scale) > 0).all():
        rules.append(f"scale {scale_name} must be positive")
    zp_name = node.input[2] if len(node.input) > 2 else ""
    if zp_name:
        zp = g.consts.get(zp_name)
        if zp is None:
            rules.append(f"zero point {zp_name} must be a constant")
        elif np.asarray(zp).any():
            rules.append(f"zero point {zp_name} must be all zero (found {np.count_nonzero(zp)} non-zero)")
        elif g.type_name(zp_name) not in (None, "INT8"):
            rules.append(f"zero point {zp_name} is {g.type_name(zp_name)}; TensorRT quantizes to INT8")
    per_axis = scale is not None and np.asarray(scale).size > 1
    data = node.input[0]
    if per_axis:
        if data not in g.consts:
            rules.append(f"per-axis scale on activation {data}: activations are quantized per tensor")
        else:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            rank = np.asarray(g.consts[data]).ndim
            axis = axis + rank if axis < 0 else axis
            for user in g.consumers.get(node.output[0], []):
                if user.op_type in ("MatMul", "Gemm") and user.input[1] == node.output[0] and rank == 2:
                    want = 0 if user.op_type == "Gemm" and any(a.name == "transB" and a.i for a in user.attribute) \
                        else 1
                    if axis != want:
                        rules.append(f"per-axis weight {data} on axis {axis}; the output channel of this "
                                     f"{user.op_type} weight is axis {want}")
    if node.op_type == "DequantizeLinear":
        for user in g.consumers.get(node.output[0], []):
            if user.op_type in _NORMS:
                rules.append(f"dequantized tensor feeds {user.op_type} {user.name}: nothing is quantized around "
                             "Softmax or LayerNormalization")
    else:
        # a LayerNorm output may be quantized as the input of the GEMMs it feeds and as the residual input of an
        # Add (where TensorRT fuses the add into the GEMM's epilogue), nothing else
        p = g.producer.get(data)
        users = [u for dq in g.consumers.get(node.output[0], []) for u in g.consumers.get(dq.output[0], [])]
        if p is not None and p.op_type in _NORMS and (
                p.op_type == "Softmax" or any(u.op_type not in _GEMM_OR_RESIDUAL for u in users)):
            rules.append(f"quantizes the output of {p.op_type} {p.name} for an op other than a GEMM or residual "
                         "Add: nothing is quantized "
                         "around Softmax or LayerNormalization")
    return rules


def graph_files(directory: str | os.PathLike) -> list[Path]:
    """The .onnx files of a model directory, sorted."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{directory_not_found(d)}; expected an `edgecap export` directory")
    files = sorted(d.glob("*.onnx"))
    if not files:
        raise InputError(f"{d} holds no .onnx graph; expected an `edgecap export` directory")
    return files


def lint_dir(directory: str | os.PathLike, *, trt_version: str | None = None,
             files: list[Path] | None = None) -> list[Violation]:
    """Lint every graph of a model directory (or just ``files``) for TensorRT.

    Args:
        directory: a model directory.
        trt_version: the target TensorRT version (default: the table's default, 10.0).
        files: the graphs to check (default: every .onnx file in ``directory``).

    Returns:
        Every violation of every graph.
    """
    import onnx

    version = trt_version or support_table()["default_version"]
    out: list[Violation] = []
    for path in files if files is not None else graph_files(directory):
        out += lint_model(onnx.load(str(path)), graph=path.name, trt_version=version)
    return out
