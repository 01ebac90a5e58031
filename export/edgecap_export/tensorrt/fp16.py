"""FP32 -> FP16 graphs for TensorRT, with the ops whose accuracy needs FP32 kept in FP32.

Everything float becomes FP16 (initializers, Constant and ConstantOfShape values, Casts to float) except the inputs
and outputs of LayerNormalization and Softmax: their variance and exp-sum accumulate over a whole row, where FP16's
10-bit mantissa and 65504 range lose captions. Those nodes read FP32 through a Cast and hand FP16 on through another,
and their own weights stay FP32. A Llama decoder's RMSNorm (SmolVLM) is traced as ops, Pow(x, 2) -> ReduceMean ->
Add eps -> Sqrt -> Div -> Mul(x, .), which transformers runs in float32 whatever the model's dtype: in FP16 a single
|x| > 256 (LLM hidden states hold such outliers) makes x^2 infinite and zeroes the row, so each such chain runs in
FP32 as one group, its constants FP32, with Casts only at its border. The graph's interface stays FP32 (a Cast
behind each float input and in front of each float output), so the runtime feeds the same arrays as for the FP32
graphs.

Values beyond FP16's range (the attention mask's float32 minimum) are clipped to +-65504, which stays a mask: after
the FP32 Softmax, exp(-65504 - max) is 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

KEEP_FP32 = ("LayerNormalization", "Softmax")
_FP16_MAX = float(np.finfo(np.float16).max)
# the ops between an RMSNorm's Pow(x, 2) and its Mul(x, 1 / sqrt(mean + eps))
_RMS_NORM_OPS = ("ReduceMean", "Add", "Sqrt", "Div", "Reciprocal", "Mul")


def _half(array: np.ndarray) -> np.ndarray:
    return np.clip(array, -_FP16_MAX, _FP16_MAX).astype(np.float16)


def _consumers(nodes: list[Any]) -> dict[str, list[int]]:
    """Value name -> the indices of the nodes that read it."""
    consumers: dict[str, list[int]] = {}
    for j, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(j)
    return consumers


def rms_norm_groups(nodes: list[Any], consumers: dict[str, list[int]] | None = None) -> list[set[int]]:
    """The decomposed RMSNorms of a graph: for each Pow(x, 2) read by a ReduceMean, the indices of the nodes from
    that Pow to the Mul(x, .) that ends it, when nothing outside the chain reads an intermediate. ``consumers``:
    :func:`_consumers` of ``nodes``, if the caller has it."""
    consumers = _consumers(nodes) if consumers is None else consumers
    groups = []
    for i, pow_node in enumerate(nodes):
        if pow_node.op_type != "Pow" or not any(nodes[j].op_type == "ReduceMean"
                                                for j in consumers.get(pow_node.output[0], [])):
            continue
        x = pow_node.input[0]
        group, frontier, ends = {i}, [i], []
        for _ in range(len(_RMS_NORM_OPS)):
            ahead = [j for k in frontier for j in consumers.get(nodes[k].output[0], []) if j not in group]
            if any(nodes[j].op_type not in _RMS_NORM_OPS for j in ahead):
                break
            group.update(ahead)
            ends += [j for j in ahead if nodes[j].op_type == "Mul" and x in nodes[j].input]
            frontier = [j for j in ahead if j not in ends]
            if not frontier:
                break
        if len(ends) == 1 and not frontier:
            groups.append(group)
    return groups


def convert_fp16(src: Path, dst: Path, *, keep_fp32: tuple[str, ...] = KEEP_FP32) -> int:
    """Write ``dst``, the FP16 version of the FP32 graph ``src`` (see the module docstring).

    Args:
        src: an FP32 ONNX graph.
        dst: where to write the FP16 graph.
        keep_fp32: op types computed in FP32.

    Returns:
        How many decomposed RMSNorms were kept in FP32.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    nodes = list(g.node)  # one Python object per node: membership below is by position
    consumers = _consumers(nodes)
    groups = rms_norm_groups(nodes, consumers)
    in_fp32 = {j for j, n in enumerate(nodes) if n.op_type in keep_fp32}
    in_fp32.update(j for group in groups for j in group)
    inits = {i.name: i for i in g.initializer}
    fp32_copies = []
    for j, node in enumerate(nodes):
        if j in in_fp32:
            # the exporter folds equal constants into one initializer (a LayerNorm's ones shared with a bias):
            # the FP32 node gets its own copy
            for k, name in enumerate(node.input):
                if name in inits and inits[name].data_type == f32:
                    node.input[k] = f"{name}__fp32"
                    if all(c.name != node.input[k] for c in fp32_copies):
                        fp32_copies.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]), node.input[k]))
    for init in g.initializer:
        if init.data_type == f32:
            init.CopyFrom(numpy_helper.from_array(_half(numpy_helper.to_array(init)), init.name))
    g.initializer.extend(fp32_copies)
    fp32_values = {c.name for c in fp32_copies}  # already FP32: the weight copies and the constants kept below
    for node in nodes:
        if node.op_type == "Constant" and all(c in in_fp32 for c in consumers.get(node.output[0], [-1])):
            fp32_values.add(node.output[0])  # an RMSNorm's exponent, eps and 1: read by FP32 nodes alone
        else:
            _node_to_fp16(node, f32, f16)
    fp32_name = {y: f"{y}__fp32" for j in in_fp32 for y in nodes[j].output if y}

    new_nodes: list[Any] = []
    renamed_inputs: dict[str, str] = {}
    for vi in g.input:
        if vi.type.tensor_type.elem_type == f32:
            renamed_inputs[vi.name] = f"{vi.name}__fp16"
            new_nodes.append(helper.make_node("Cast", [vi.name], [f"{vi.name}__fp16"], name=f"{vi.name}__to_fp16",
                                              to=f16))
    for node in nodes:
        for k, name in enumerate(node.input):
            if name in renamed_inputs:
                node.input[k] = renamed_inputs[name]
    float_outputs = {vi.name for vi in g.output if vi.type.tensor_type.elem_type == f32}
    tail: list[Any] = []
    graph_outputs = {vi.name for vi in g.output}
    for j, node in enumerate(nodes):
        if j in in_fp32:
            for k, x in enumerate(node.input):
                if x in fp32_name:  # computed by an FP32 node of the same group
                    node.input[k] = fp32_name[x]
                elif x and x not in fp32_values:
                    node.input[k] = f"{x}__fp32_for_{node.name}"
                    new_nodes.append(helper.make_node("Cast", [x], [node.input[k]], name=f"{node.name}__in{k}_fp32",
                                                      to=f32))
            new_nodes.append(node)
            for k, y in enumerate(node.output):
                if y:
                    node.output[k] = fp32_name[y]
                    if y in graph_outputs or any(c not in in_fp32 for c in consumers.get(y, [])):
                        new_nodes.append(helper.make_node("Cast", [node.output[k]], [y],
                                                          name=f"{node.name}__out_fp16", to=f16))
        else:
            new_nodes.append(node)
    for name in float_outputs:
        # the node producing a float graph output now produces FP16: rename it and cast back at the border
        for node in new_nodes:
            for k, o in enumerate(node.output):
                if o == name:
                    node.output[k] = f"{name}__fp16"
                    for other in new_nodes:
                        for j, i in enumerate(other.input):
                            if i == name:
                                other.input[j] = node.output[k]
        tail.append(helper.make_node("Cast", [f"{name}__fp16"], [name], name=f"{name}__to_fp32", to=f32))
    del g.node[:]
    g.node.extend(new_nodes + tail)
    del g.value_info[:]  # stale FP32 types; shape inference recomputes what tools need
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return len(groups)


def _node_to_fp16(node: Any, f32: int, f16: int) -> None:
    from onnx import numpy_helper

    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == f32:
            attr.i = f16
        elif node.op_type in ("Constant", "ConstantOfShape") and attr.name == "value" and attr.t.data_type == f32:
            attr.t.CopyFrom(numpy_helper.from_array(_half(numpy_helper.to_array(attr.t)), attr.t.name))


def fp16_captioner(model_dir: Path, view: Path, **captioner_options: Any) -> Any:
    """A Captioner running the FP16 graphs of ``model_dir``: ``view`` gets the FP16 graphs (hard links) and the
    tokenizer as its FP32 precision, because the runtime loads the precisions it knows by name.
    ``captioner_options`` go to the Captioner (e.g. ``providers=["tensorrt"]``)."""
    import json
    import os
    import shutil

    from edgecap import Captioner
    from edgecap.manifest import MANIFEST_FILE

    data = json.loads((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    files = [data["graphs"]["fp16"][part]["file"] for part in ("encoder", "decoder")] + [data["tokenizer"]["file"]]
    view.mkdir(parents=True, exist_ok=True)
    for name in files:
        try:
            os.link(model_dir / name, view / name)
        except OSError:  # another file system: copy
            shutil.copyfile(model_dir / name, view / name)
    data["graphs"] = {"fp32": {part: data["graphs"]["fp16"][part] for part in ("encoder", "decoder")}}
    (view / MANIFEST_FILE).write_text(json.dumps(data), encoding="utf-8")
    return Captioner(view, **captioner_options)


def fp16_agreement(model_dir: Path, frames: list[np.ndarray], *, prompt: str | None = None) -> dict[str, Any]:
    """FP16 vs FP32 generated ids on ``frames`` (ONNX Runtime CPU), each captioned with ``prompt`` (None: the
    model's default): exact-match share and token agreement."""
    import tempfile

    from edgecap import Captioner

    from ..quantize import caption_agreement

    with tempfile.TemporaryDirectory() as tmp:
        return caption_agreement(Captioner(model_dir), fp16_captioner(model_dir, Path(tmp) / "fp16"), frames,
                                 prompt=prompt)
