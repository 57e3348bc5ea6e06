"""Outlier channels kept in fp32 around int8 linear layers (in the spirit of LLM.int8()).

A decoder's hidden states carry a few channels whose activations are 100-1000x the median
(the "massive activations" of attention-sink tokens). Rounding the weight rows they multiply,
or sharing an int8 scale with them, is most of a trained retrieval model's int8 error
(docs/int8.md: weight-only 8-bit rounding of the trained Debian embedder, mean cosine to fp32
0.988 with every channel rounded, 0.997 with the outlier channels in fp32).

:func:`split_outliers` rewrites ``Y = X W`` for the activation channels ``O`` found in
calibration as ``Y = (X * mask) W' + X[..., O] W[O]``: ``mask`` zeroes ``O``, ``W'`` is ``W`` with
the rows ``O`` zeroed (so they neither widen a weight scale nor a block), and the second product
is a small fp32 ``MatMul`` over ``|O|`` channels. The identity is exact in fp32; the int8
methods then quantize ``(X * mask) W'`` alone.
"""

from __future__ import annotations

import numpy as np

from embedrank.errors import InputError


def find_outliers(amax: dict[str, np.ndarray], ratio: float) -> dict[str, np.ndarray]:
    """Per activation: the channels whose calibration max |x| exceeds ``ratio`` times the
    median channel's (sorted indices; activations without one are left out)."""
    if not ratio > 1.0:
        raise InputError(f"the outlier ratio must be > 1 (a multiple of the median), got {ratio}")
    found = {}
    for tensor, channel_max in amax.items():
        idx = np.flatnonzero(channel_max > ratio * np.median(channel_max))
        if len(idx):
            found[tensor] = idx.astype(np.int64)
    return found


def split_outliers(model, names: list[str], outliers: dict[str, np.ndarray]) -> list[str]:
    """Rewrite the MatMuls ``names`` (constant weight ``[in, out]``) whose input has outlier
    channels, in place; the names of the fp32 ``MatMul`` nodes added (keep them out of the
    quantization)."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    wanted = set(names)
    shared: dict[str, tuple[str, str]] = {}  # activation -> (masked, outlier columns)
    added, nodes, new_inits = [], [], []
    for node in model.graph.node:
        x = node.input[0] if node.op_type == "MatMul" else None
        if node.name not in wanted or x not in outliers:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        idx = outliers[x]
        if idx.max() >= weight.shape[0]:
            raise InputError(f"outlier channel {int(idx.max())} of {x!r} is outside the "
                             f"{weight.shape[0]} inputs of {node.name!r}")
        if x not in shared:
            tag = f"{x}/outliers"
            mask = np.ones(weight.shape[0], np.float32)
            mask[idx] = 0.0
            new_inits += [numpy_helper.from_array(mask, f"{tag}/mask"),
                          numpy_helper.from_array(idx, f"{tag}/index")]
            nodes += [helper.make_node("Mul", [x, f"{tag}/mask"], [f"{tag}/masked"],
                                       name=f"{tag}/Mul"),
                      helper.make_node("Gather", [x, f"{tag}/index"], [f"{tag}/columns"],
                                       name=f"{tag}/Gather", axis=-1)]
            shared[x] = (f"{tag}/masked", f"{tag}/columns")
        masked, columns = shared[x]
        p, y = f"{node.name}/outliers", node.output[0]
        rest = weight.copy()
        rest[idx] = 0.0
        new_inits += [numpy_helper.from_array(rest, f"{p}/weight"),
                      numpy_helper.from_array(np.ascontiguousarray(weight[idx]), f"{p}/rows")]
        node.input[0], node.input[1], node.output[0] = masked, f"{p}/weight", f"{p}/rest"
        nodes += [node,
                  helper.make_node("MatMul", [columns, f"{p}/rows"], [f"{p}/fp32"],
                                   name=f"{p}/MatMul"),
                  helper.make_node("Add", [f"{p}/rest", f"{p}/fp32"], [y], name=f"{p}/Add")]
        added.append(f"{p}/MatMul")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(new_inits)
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return added
