"""Fold the shape arithmetic a traced graph does over static dimensions into constants.

torch.onnx traces every ``x.shape[i]`` a module reads as a Shape/Gather chain, even where the dimension is static
(the image size is fixed; only the batch, token and cache lengths vary). Modules edgecap does not rewrite itself
(Florence-2's DaViT vision tower: window padding computed with ``%``, window partition reshapes, position
embeddings sized from the image) trace dozens of such chains per encoder, shape work TensorRT would have to fold at
build time and ops it may not import (Mod). This pass, run on ``--target tensorrt`` graphs:

* replaces a Shape, a Gather of a Shape or a Slice of a Shape by a constant when every dimension it yields is
  static (see :func:`_static_dims`: shape inference with the dynamic axes probed at two sets of primes);
* gives a Reshape whose target concatenates constants and reads of dynamic dimensions a constant target: a read of
  the dimension the data already has at that position becomes 0 (ONNX: keep it), one dynamic read left becomes -1;
* evaluates every node whose inputs are all constants (the onnx reference evaluator), up to ``max_elements``
  elements per output, so constants stay small;
* drops nodes nothing reads, and repeats until nothing changes.

Dynamic dimensions (batch, sequence, past length) stay dynamic: what cannot be shown static keeps its Shape nodes.
The probes are evidence, not proof (a dimension like ``min(batch, 1)`` would look static), so the export's parity
check against transformers runs on the folded graphs, at several batch sizes and lengths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

_SHAPE_CONSUMERS = ("Gather", "Slice")
_NONDETERMINISTIC = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli")


def fold_file(path: Path, *, max_elements: int = 1 << 16) -> int:
    """Fold ``path`` in place (see the module docstring).

    Args:
        path: an ONNX graph (weights inside the file).
        max_elements: the largest constant a folded node may produce.

    Returns:
        The number of nodes removed.
    """
    import onnx

    model = onnx.load(str(path))
    before = len(model.graph.node)
    model = fold_static_shapes(model, max_elements=max_elements)
    onnx.save(model, str(path))
    return before - len(model.graph.node)


def fold_static_shapes(model: Any, *, max_elements: int = 1 << 16) -> Any:
    """``model`` (an onnx ModelProto) with its static shape arithmetic folded into constants.

    Args:
        model: the model (not modified).
        max_elements: the largest constant a folded node may produce.

    Returns:
        A new ModelProto.
    """
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    while True:
        changed = _fold_once(model, max_elements)
        changed |= _drop_unused(model.graph)
        if not changed:
            return model


Dims = dict[str, list[int | None]]


def _static_dims(model: Any) -> tuple[Dims, tuple[Dims, Dims]]:
    """Every tensor's dimensions, None where a dimension depends on an input's dynamic axis; and the two probes.

    ONNX shape inference alone leaves most dimensions behind a Reshape unknown once the batch is symbolic (it does
    not cancel symbols), so the graph is inferred twice with every dynamic axis set to a different prime (batch 2
    then 17, prompt length 3 then 19, ...): a dimension equal in both probes does not follow those axes. Parity with
    transformers is validated on the folded graphs at several batch sizes and lengths.
    """
    axes = sorted({d.dim_param for v in model.graph.input for d in v.type.tensor_type.shape.dim if d.dim_param})
    first, second = (_inferred_dims(model, dict(zip(axes, primes))) for primes in _PROBES)
    merged = {name: [a if a is not None and a == b else None for a, b in zip(dims, second[name])]
              for name, dims in first.items() if name in second and len(second[name]) == len(dims)}
    return merged, (first, second)


_PROBES = ((2, 3, 5, 7, 11, 13, 29, 31), (17, 19, 23, 37, 41, 43, 47, 53))


def _inferred_dims(model: Any, values: dict[str, int]) -> dict[str, list[int | None]]:
    import onnx

    if len(values) < len({d.dim_param for v in model.graph.input for d in v.type.tensor_type.shape.dim
                          if d.dim_param}):
        return {}  # more dynamic axes than probe values: nothing is known to be static
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    for v in probe.graph.input:
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_value = values[d.dim_param]
    try:
        probe = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    except Exception:  # noqa: BLE001 - without inference nothing is known to be static; fold constants only
        return {}
    g = probe.graph
    dims: dict[str, list[int | None]] = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            dims[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return dims


def _fold_once(model: Any, max_elements: int) -> bool:
    from onnx import helper, numpy_helper

    g = model.graph
    dims, probes = _static_dims(model)
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    partial: dict[str, list[int | None]] = {}  # a Shape's output, entry by entry (None: dynamic)
    reads: dict[str, list[tuple[str, int]]] = {}  # a Shape output or a part of it -> (tensor, axis) per entry
    changed = False
    for index, node in enumerate(g.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                consts[node.output[0]] = numpy_helper.to_array(value)
            continue
        value = None
        if node.op_type == "Shape" and node.input[0] in dims:
            shape = dims[node.input[0]]
            attrs = {a.name: a.i for a in node.attribute}
            partial[node.output[0]] = shape[attrs.get("start", 0):attrs.get("end", len(shape))]
            reads[node.output[0]] = [(node.input[0], attrs.get("start", 0) + j)
                                     for j in range(len(partial[node.output[0]]))]
            if all(d is not None for d in partial[node.output[0]]):
                value = np.array(partial[node.output[0]], dtype=np.int64)
        elif node.op_type in _SHAPE_CONSUMERS and node.input[0] in partial:
            value = _shape_entries(node, partial[node.input[0]], consts)
            if value is None and node.input[0] in reads:
                reads[node.output[0]] = _shape_entries(node, reads[node.input[0]], consts)
        elif node.op_type == "Unsqueeze" and node.input[0] in reads:
            reads[node.output[0]] = reads[node.input[0]]
        elif node.op_type == "Reshape" and node.input[1] not in consts:
            target = _reshape_target(node, producer.get(node.input[1]), consts, reads, probes)
            if target is not None:
                name = f"{node.input[1]}__static"
                g.initializer.append(numpy_helper.from_array(target, name))
                consts[name] = target
                node.input[1] = name
                changed = True
        elif (node.op_type not in _NONDETERMINISTIC and node.input
              and all(not name or name in consts for name in node.input)):
            value = _evaluate(node, consts, max_elements)
        if value is None:
            continue
        consts[node.output[0]] = value
        g.node[index].CopyFrom(helper.make_node("Constant", [], [node.output[0]], name=node.name,
                                                value=numpy_helper.from_array(value, node.output[0])))
        changed = True
    return changed


def _reshape_target(node: Any, concat: Any, consts: dict[str, np.ndarray],
                    reads: dict[str, list[tuple[str, int]]], probes: tuple[Dims, Dims]) -> np.ndarray | None:
    """A constant target for a Reshape whose target concatenates constants and reads of dynamic dimensions:
    a read of the dimension the data already has at that position becomes 0 (ONNX: keep it), and one dynamic
    read left becomes -1 (inferred). None when more stay dynamic."""
    if concat is None or concat.op_type != "Concat" or any(a.name == "allowzero" and a.i for a in node.attribute):
        return None
    entries: list[int | None] = []
    for piece in concat.input:
        if piece in consts:
            entries += [int(x) for x in consts[piece].reshape(-1)]
            continue
        if reads.get(piece) is None:
            return None
        for tensor, axis in reads[piece]:
            i = len(entries)
            same = all(i < len(p.get(node.input[0], [])) and axis < len(p.get(tensor, []))
                       and p[node.input[0]][i] is not None and p[node.input[0]][i] == p[tensor][axis] for p in probes)
            entries.append(0 if same else None)
    dynamic = [i for i, e in enumerate(entries) if e is None]
    if len(dynamic) > 1 or (dynamic and -1 in entries):
        return None
    return np.array([-1 if e is None else e for e in entries], dtype=np.int64)


def _shape_entries(node: Any, entries: list, consts: dict[str, np.ndarray]) -> Any:
    """What a Gather (axis 0, one index) or a Slice (one axis) of a Shape output picks from ``entries`` (the Shape's
    dims, or its (tensor, axis) reads): a constant when every picked dim is static, else None; with reads, the
    picked reads (None when the indices are not constants)."""
    if any(name and name not in consts for name in node.input[1:]):
        return None
    if node.op_type == "Gather":
        idx = consts[node.input[1]]
        if any(a.name == "axis" and a.i != 0 for a in node.attribute) or idx.size != 1:
            return None
        picked = [entries[int(idx.reshape(-1)[0])]]
    else:
        starts, ends = consts[node.input[1]], consts[node.input[2]]
        steps = consts[node.input[4]] if len(node.input) > 4 and node.input[4] else [1]
        picked = entries[int(starts[0]):int(min(ends[0], len(entries))):int(steps[0])]
    if picked and all(isinstance(d, tuple) for d in picked):
        return picked
    if not all(isinstance(d, (int, np.integer)) for d in picked):
        return None
    value = np.array(picked, dtype=np.int64)
    return value.reshape(()) if node.op_type == "Gather" and idx.ndim == 0 else value


def _evaluate(node: Any, consts: dict[str, np.ndarray], max_elements: int) -> np.ndarray | None:
    from onnx.reference import ReferenceEvaluator

    if len([o for o in node.output if o]) != 1:
        return None
    try:
        (value,) = ReferenceEvaluator(node).run(None, {name: consts[name] for name in node.input if name})
    except Exception:  # noqa: BLE001 - an op the reference evaluator lacks stays in the graph
        return None
    value = np.asarray(value)
    return value if value.size <= max_elements else None


def _drop_unused(g: Any) -> bool:
    used = {o.name for o in g.output}
    for node in g.node:
        used.update(node.input)
    keep = [n for n in g.node if any(o in used for o in n.output)]
    inits = [i for i in g.initializer if i.name in used]
    if len(keep) == len(g.node) and len(inits) == len(g.initializer):
        return False
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(inits)
    return True
