"""Convolutions as GEMMs for the CPU INT8 recipe (:func:`edgecap_export.quantize.quantize_dynamic_graph`).

Dynamic quantization makes integer GEMMs of MatMuls only; a convolution past the image stem written as im2col and
one MatMul becomes one of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Fewer input channels than this: the Conv is an image stem on raw pixels, where one per-tensor activation scale
# costs the most accuracy and the GEMM is small (Florence-2's 7x7 stem: K = 147).
IM2COL_MIN_CHANNELS = 8
_SLICE_TO_END = 2**62


def _im2col_conv(node: Any, weight: Any) -> bool:
    """Whether :func:`convs_as_matmuls` rewrites this Conv: 2-D, one group, no dilation, explicit pads, and at
    least :data:`IM2COL_MIN_CHANNELS` input channels (the image stem, on 3 channels of raw pixels, stays float)."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (len(weight.dims) == 4 and weight.dims[1] >= IM2COL_MIN_CHANNELS and attrs.get("group", 1) == 1
            and all(d == 1 for d in attrs.get("dilations", [1, 1]))
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))


def convs_as_matmuls(src: Path, dst: Path) -> int:
    """Write ``src`` to ``dst`` with every eligible Conv (:func:`_im2col_conv`) as channels-last im2col and one
    MatMul, so dynamic quantization makes it an integer GEMM like the rest; returns how many (0: nothing written).

    A k_h x k_w Conv with stride s becomes Transpose to NHWC, Pad, k_h*k_w strided Slices (tap (i, j) starts at
    (i, j) and stops k-1-i / k-1-j before the padded end, so each has exactly the output's rows and columns for any
    input size), Concat along channels, MatMul with the weight laid out as (k_h*k_w*C_in, C_out), Add of the bias
    and Transpose back; ONNX Runtime cancels the Transposes against the channels-last neighbours. In float it is
    the same product summed in another order (the test bounds the difference). Florence-2-base's three stride-2
    downsampling convolutions (2.7 GMAC each) took 170-200 ms of its INT8 encoder in float. Measured on the
    encoder graph, AMD EPYC (AVX2), one image, graphs alternated in one process: on one thread, as encoder streams
    run each image of a batch, 5,422 -> 5,049 ms; on two threads no change (3,027 / 3,018 ms: the float
    convolution splits across both threads, the Slices and the Concat run on one).
    """
    import onnx
    from onnx import helper, numpy_helper

    probe = onnx.load(str(src), load_external_data=False)
    shapes = {i.name: i for i in probe.graph.initializer}
    if not any(n.op_type == "Conv" and n.input[1] in shapes and _im2col_conv(n, shapes[n.input[1]])
               for n in probe.graph.node):
        return 0
    model = onnx.load(str(src))
    g = model.graph
    weights = {i.name: i for i in g.initializer}
    nodes: list[Any] = []
    rewritten = 0

    def const(name: str, values: Any) -> str:
        g.initializer.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    for node in g.node:
        w = weights.get(node.input[1]) if node.op_type == "Conv" else None
        if w is None or not _im2col_conv(node, w):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = numpy_helper.to_array(w)
        c_out, c_in, kh, kw = kernel.shape
        stride = list(attrs.get("strides", [1, 1]))
        top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
        at = f"{node.name or node.output[0]}/im2col/"
        nodes.append(helper.make_node("Transpose", [node.input[0]], [at + "nhwc"], perm=[0, 2, 3, 1],
                                      name=at + "to_nhwc"))
        x = at + "nhwc"
        if top or left or bottom or right:
            pads = const(at + "pads", np.array([0, top, left, 0, 0, bottom, right, 0], np.int64))
            nodes.append(helper.make_node("Pad", [x, pads], [at + "padded"], name=at + "pad"))
            x = at + "padded"
        axes, steps = const(at + "axes", np.array([1, 2], np.int64)), const(at + "steps", np.array(stride, np.int64))
        taps = []
        for i in range(kh):
            for j in range(kw):
                starts = const(f"{at}starts_{i}_{j}", np.array([i, j], np.int64))
                ends = const(f"{at}ends_{i}_{j}", np.array([-(kh - 1 - i) or _SLICE_TO_END,
                                                            -(kw - 1 - j) or _SLICE_TO_END], np.int64))
                taps.append(f"{at}tap_{i}_{j}")
                nodes.append(helper.make_node("Slice", [x, starts, ends, axes, steps], [taps[-1]],
                                              name=f"{at}slice_{i}_{j}"))
        nodes.append(helper.make_node("Concat", taps, [at + "columns"], axis=3, name=at + "concat"))
        matrix = const(at + "weight", np.ascontiguousarray(kernel.transpose(2, 3, 1, 0).reshape(-1, c_out)))
        y = at + "product"
        nodes.append(helper.make_node("MatMul", [at + "columns", matrix], [y], name=at + "matmul"))
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [y, node.input[2]], [at + "biased"], name=at + "bias"))
            y = at + "biased"
        nodes.append(helper.make_node("Transpose", [y], [node.output[0]], perm=[0, 3, 1, 2], name=at + "to_nchw"))
        rewritten += 1
    del g.node[:]
    g.node.extend(nodes)
    used = {name for n in g.node for name in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
              location=dst.name + ".data", size_threshold=1024)
    return rewritten
