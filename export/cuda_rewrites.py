"""Graph rewrites of the fused GroupQueryAttention graph for ONNX Runtime's CUDA kernels.

The fused export leaves, per layer, three q / k / v ``MatMul`` s, two per-head q / k
RMSNorms (Qwen3) and a gate / up / down MLP whose SiLU and gating product ONNX Runtime runs
as separate element-wise kernels. The kernel profile (docs/performance.md) puts the gap to
``torch.compile`` in exactly those element-wise passes. Two rewrites, each an exact
re-expression of the graph (same weights, same arithmetic up to rounding order):

* ``"qkv"`` (:func:`pack_qkv`): one ``MatMul`` against the concatenated q / k / v weights
  feeds GroupQueryAttention's packed-QKV input; the q / k norms move into the op
  (``q_norm_weight`` / ``k_norm_weight``: its unpack kernel normalizes, rotates and lays out
  Q / K in one pass); q / k / v biases (Qwen2) become one ``Add`` after the packed ``MatMul``.
  The ``present_key`` / ``present_value`` outputs stay although nothing reads them: the CUDA
  kernel refuses to run without them. ONNX Runtime implements the in-op q / k norm on CUDA only
  (the CPU provider rejects it; ONNX Runtime >= 1.31), so with ``fold_norms=False`` a model with
  q / k norms keeps its graph.
* ``"swiglu"`` (:func:`fuse_swiglu`): the gate and up projections become one ``MatMul``
  against ``[W_gate | W_up]`` and the SiLU-gated product one ``ai.embedrank.SwiGLU``, a
  custom op of embedrank's own library (:mod:`embedrank.ops`, CPU and CUDA kernels): one
  element-wise pass instead of ONNX Runtime's two. The model then needs that library built, so
  it is opt-in (``--rewrites qkv,swiglu``), never a default.
* ``"rope"`` (:func:`rotary_mha`, instead of ``"qkv"``): the packed ``MatMul`` feeds
  ``ai.embedrank.QKVRotary`` (embedrank's library again), which normalizes and rotates Q / K and
  lays out Q, K and V for ``com.microsoft.MultiHeadAttention`` with ``unidirectional=1`` (causal,
  no mask: exact on right-padded rows, as GroupQueryAttention was). GroupQueryAttention's CUDA
  kernel unpacks the same input in a kernel that took 10.3 of 37.6 ms per 64 x 256 batch on an
  H200 (docs/performance.md), and writes K / V into ``present`` outputs nobody reads;
  MultiHeadAttention takes equal head counts, so K / V come out repeated per query head, which
  lets it run flash attention straight on them. Opt-in, like ``"swiglu"``.

Each function returns how many sites it rewrote; unused nodes and initializers are removed.
"""

from __future__ import annotations

import numpy as np

from embedrank.errors import InputError
from embedrank.ops import DOMAIN as OPS_DOMAIN

MS = "com.microsoft"
REWRITES = ("qkv", "swiglu", "rope")
MIN_ORT_QK_NORM = "1.31"  # the first ONNX Runtime whose GroupQueryAttention takes q_norm_weight
# the GroupQueryAttention attributes the rope rewrite reproduces (see rotary_mha)
ROPE_ATTRIBUTES = {"num_heads", "kv_num_heads", "do_rotary", "rotary_interleaved"}


def _const(value) -> np.ndarray | None:
    return None if value is None or value.const_value is None else value.const_value.numpy()


def _producer(value, op_type: str):
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type else None


def _only_use(value) -> bool:
    return len(value.uses()) == 1 and not value.is_graph_output()


def _initializer(graph, name: str, array: np.ndarray):
    import onnx_ir as ir

    value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
    graph.register_initializer(value)
    return value


def _linear(value):
    """value = MatMul(x, W) [+ b] with constant 2-D W and 1-D b: (x, W, b or None) or None."""
    if value is None or not _only_use(value):
        return None
    bias, add = None, _producer(value, "Add")
    if add is not None:
        for out, b in (add.inputs, add.inputs[::-1]):
            if (_producer(out, "MatMul") is not None and _only_use(out) and _const(b) is not None
                    and _const(b).ndim == 1):
                value, bias = out, _const(b)
                break
        else:
            return None
    matmul = _producer(value, "MatMul")
    weight = _const(matmul.inputs[1]) if matmul is not None else None
    if weight is None or weight.ndim != 2:
        return None
    return matmul.inputs[0], weight, bias


def _projection(value):
    """value = linear or Reshape(SLN(Reshape(linear), w)): ((x, W, b), norm or None) or (None, None)."""
    if _producer(value, "Reshape") is None:
        return _linear(value), None
    outer = _producer(value, "Reshape")
    norm = _producer(outer.inputs[0], "SimplifiedLayerNormalization")
    inner = _producer(norm.inputs[0], "Reshape") if norm else None
    if inner is None or not all(_only_use(v) for v in (inner.outputs[0], norm.outputs[0])):
        return None, None
    return _linear(inner.inputs[0]), norm


def _norm_scale(norm, head_size: int) -> tuple[np.ndarray, float] | None:
    """The scale and epsilon of a per-head RMSNorm over the last axis, or None."""
    attrs = {name: attr.value for name, attr in norm.attributes.items()}
    scale = _const(norm.inputs[1])
    if attrs.get("axis", -1) != -1 or scale is None or scale.shape != (head_size,):
        return None
    return scale, float(attrs.get("epsilon", 1e-5))


def _qkv_sites(graph, fold_norms: bool):
    """Each GroupQueryAttention fed by q / k / v projections of one input, no KV cache:
    (node, input, [W_q, W_k, W_v], stacked bias or None, q / k norm scales or None, epsilon);
    a list, so callers may edit the graph. With ``fold_norms=False`` layers with norms are left out."""
    found = []
    for gqa in [n for n in graph if n.op_type == "GroupQueryAttention" and n.domain == MS]:
        inputs = list(gqa.inputs)
        if len(inputs) < 9 or inputs[1] is None or any(v is not None for v in inputs[3:5] + inputs[9:]):
            continue
        (q, q_norm), (k, k_norm) = (_projection(v) for v in inputs[:2])
        v = _linear(inputs[2])
        if q is None or k is None or v is None or len({id(p[0]) for p in (q, k, v)}) != 1:
            continue
        if (q_norm is None) != (k_norm is None) or (q_norm is not None and not fold_norms):
            continue
        if sum(p[2] is None for p in (q, k, v)) not in (0, 3):  # biases on some projections only
            continue
        weights = [p[1] for p in (q, k, v)]
        bias = None if q[2] is None else np.concatenate([p[2] for p in (q, k, v)])
        norms, epsilon = None, None
        if q_norm is not None:
            head_size = weights[0].shape[1] // gqa.attributes["num_heads"].value
            scales = [_norm_scale(n, head_size) for n in (q_norm, k_norm)]
            if None in scales or scales[0][1] != scales[1][1]:
                continue
            norms, epsilon = [f[0].astype(weights[0].dtype) for f in scales], scales[0][1]
        found.append((gqa, q[0], weights, bias, norms, epsilon))
    return found


def _packed_matmul(graph, x, weights, bias, name: str) -> list:
    """MatMul(x, [W_q | W_k | W_v]) [+ bias]: the nodes, the packed projection last."""
    import onnx_ir as ir

    nodes = [ir.node("MatMul", [x, _initializer(graph, name, np.concatenate(weights, axis=1))], name=name)]
    if bias is not None:
        nodes.append(ir.node("Add", [nodes[-1].outputs[0], _initializer(graph, f"{name}_bias", bias)],
                             name=f"{name}_bias"))
    return nodes


def _replace_output(graph, old, new_node, nodes: list) -> None:
    """Insert ``nodes`` (ending with ``new_node``) before ``old`` and move old's first output there."""
    graph.insert_before(old, nodes)
    old.outputs[0].replace_all_uses_with(new_node.outputs[0])
    new_node.outputs[0].dtype, new_node.outputs[0].shape = old.outputs[0].dtype, old.outputs[0].shape
    graph.remove(old, safe=True)


def pack_qkv(model, fold_norms: bool = True) -> tuple[int, int]:
    """q / k / v projections -> one MatMul into GroupQueryAttention's packed input (see module).

    Returns (layers packed, of which with the q / k norms moved into the op).
    """
    import onnx_ir as ir

    graph, count, folded = model.graph, 0, 0
    for gqa, x, weights, bias, norms, epsilon in _qkv_sites(model.graph, fold_norms):
        attrs = {name: attr.value for name, attr in gqa.attributes.items()}
        name = f"{gqa.name or 'gqa'}_{count}_packed_qkv"
        nodes = _packed_matmul(graph, x, weights, bias, name)
        scales = []
        if norms is not None:
            scales = [_initializer(graph, f"{gqa.name or 'gqa'}_{count}_{w}_norm", n)
                      for w, n in zip("qk", norms, strict=True)]
            attrs["qk_norm_epsilon"] = epsilon
            folded += 1
        inputs = list(gqa.inputs)
        fused = ir.node("GroupQueryAttention", [nodes[-1].outputs[0], None, None, *inputs[3:9],
                                                *([None] * 5 + scales if scales else [])],
                        attributes=attrs, domain=MS, num_outputs=len(gqa.outputs), name=gqa.name)
        _replace_output(graph, gqa, fused, [*nodes, fused])
        count += 1
    _cleanup(model)
    return count, folded


def rotary_mha(model) -> int:
    """GroupQueryAttention -> embedrank's ``QKVRotary`` + causal ``MultiHeadAttention`` (see module)."""
    import onnx_ir as ir

    graph, count, float_tables = model.graph, 0, {}  # one float copy of each shared table
    for gqa, x, weights, bias, norms, epsilon in _qkv_sites(model.graph, fold_norms=True):
        attrs = {name: attr.value for name, attr in gqa.attributes.items()}
        # only what QKVRotary + MultiHeadAttention compute: a scale, soft cap, local window or
        # interleaved rotary would change the result, so such a layer keeps its GroupQueryAttention
        if set(attrs) - ROPE_ATTRIBUTES or attrs.get("do_rotary") != 1 or attrs.get("rotary_interleaved", 0):
            continue
        tables = [_const(v) for v in gqa.inputs[7:9]]
        if any(t is None for t in tables):
            continue
        name = f"{gqa.name or 'gqa'}_{count}"
        nodes = _packed_matmul(graph, x, weights, bias, f"{name}_packed_qkv")
        for source, table in zip(gqa.inputs[7:9], tables, strict=True):  # the op reads float
            if source.name not in float_tables:
                float_tables[source.name] = _initializer(graph, f"{source.name}_float",
                                                         table.astype(np.float32))
        consts = [float_tables[v.name] for v in gqa.inputs[7:9]]
        consts += [_initializer(graph, f"{name}_{w}_norm", n.astype(np.float32))
                   for w, n in zip("qk", norms or [], strict=False)]
        heads = attrs["num_heads"]
        rotary = ir.node("QKVRotary", [nodes[-1].outputs[0], *consts],
                         attributes={"num_heads": heads, "kv_num_heads": attrs["kv_num_heads"],
                                     "epsilon": 1e-6 if epsilon is None else float(epsilon)},
                         domain=OPS_DOMAIN, num_outputs=3, name=f"{name}_qkv_rotary")
        for value in rotary.outputs:
            value.dtype = gqa.outputs[0].dtype
        mha = ir.node("MultiHeadAttention", list(rotary.outputs),
                      attributes={"num_heads": heads, "unidirectional": 1}, domain=MS, name=f"{name}_mha")
        _replace_output(graph, gqa, mha, [*nodes, rotary, mha])
        count += 1
    _cleanup(model)
    if count:
        model.opset_imports[OPS_DOMAIN] = 1
    return count


def _silu_gate(value):
    """value = Mul(Mul(g, Sigmoid(g)), u) in either operand order: (g, u) or None."""
    mul = _producer(value, "Mul")
    if mul is None:
        return None
    for silu, up in (mul.inputs, mul.inputs[::-1]):
        inner = _producer(silu, "Mul")
        if inner is None or not _only_use(silu):
            continue
        for gate, sig in (inner.inputs, inner.inputs[::-1]):
            sigmoid = _producer(sig, "Sigmoid")
            if sigmoid is not None and sigmoid.inputs[0] is gate and _only_use(sig):
                return gate, up
    return None


def _swiglu_mlps(graph):
    """Each ``down(silu(gate(x)) * up(x))`` with constant 2-D weights and no biases:
    (down MatMul, gate MatMul, W_gate, W_up, W_down); a list, so callers may edit the graph."""
    found = []
    for down in [n for n in graph if n.op_type == "MatMul"]:
        gated = _silu_gate(down.inputs[0]) if _only_use(down.inputs[0]) else None
        if gated is None:
            continue
        gate_mm, up_mm = _producer(gated[0], "MatMul"), _producer(gated[1], "MatMul")
        if gate_mm is None or up_mm is None or gate_mm.inputs[0] is not up_mm.inputs[0]:
            continue
        weights = [_const(m.inputs[1]) for m in (gate_mm, up_mm, down)]
        if all(w is not None and w.ndim == 2 for w in weights):
            found.append((down, gate_mm, *weights))
    return found


def fuse_swiglu(model) -> int:
    """gate / up MatMuls + SiLU + product -> one MatMul against [W_gate | W_up] and one
    ``ai.embedrank.SwiGLU`` (embedrank's custom-op library, :mod:`embedrank.ops`)."""
    import onnx_ir as ir

    graph, count = model.graph, 0
    for down, gate_mm, w_gate, w_up, _ in _swiglu_mlps(graph):
        name = f"{down.name or 'mlp'}_{count}_gate_up"
        packed = ir.node("MatMul", [gate_mm.inputs[0], _initializer(graph, name, np.concatenate(
            [w_gate, w_up], axis=1))], name=name)
        swiglu = ir.node("SwiGLU", [packed.outputs[0]], domain=OPS_DOMAIN, name=f"{name}_swiglu")
        graph.insert_before(down, [packed, swiglu])
        gated = down.inputs[0]
        packed.outputs[0].dtype = swiglu.outputs[0].dtype = gated.dtype
        swiglu.outputs[0].shape = gated.shape
        down.replace_input_with(0, swiglu.outputs[0])
        count += 1
    _cleanup(model)
    if count:
        model.opset_imports[OPS_DOMAIN] = 1
    return count


def _cleanup(model) -> None:
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    RemoveUnusedNodesPass()(model)
    if MS not in model.opset_imports:
        model.opset_imports[MS] = 1


def apply(model, rewrites, fold_norms: bool) -> dict[str, int]:
    """Run the named rewrites (subset of REWRITES, in that order); their site counts
    (``qkv_norms``: layers whose q / k norms moved into GroupQueryAttention, a CUDA-only graph)."""
    unknown = [name for name in rewrites if name not in REWRITES]
    if unknown:
        raise InputError(f"unknown rewrites {unknown}: choose from {REWRITES}")
    done = {}
    if "qkv" in rewrites and "rope" in rewrites:
        raise InputError("the qkv and rope rewrites both pack q / k / v, for different attention ops: "
                         "choose one")
    for name in rewrites:
        if name == "qkv":
            done["qkv"], done["qkv_norms"] = pack_qkv(model, fold_norms)
        elif name == "rope":
            done["rope"] = rotary_mha(model)
        else:
            done["swiglu"] = fuse_swiglu(model)
    return done
