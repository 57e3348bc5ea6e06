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

Each function returns how many sites it rewrote; unused nodes and initializers are removed.
"""

from __future__ import annotations

import numpy as np

from embedrank.errors import InputError
from embedrank.ops import DOMAIN as OPS_DOMAIN

MS = "com.microsoft"
REWRITES = ("qkv", "swiglu")
MIN_ORT_QK_NORM = "1.31"  # the first ONNX Runtime whose GroupQueryAttention takes q_norm_weight


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


def pack_qkv(model, fold_norms: bool = True) -> tuple[int, int]:
    """q / k / v projections -> one MatMul into GroupQueryAttention's packed input (see module).

    Returns (layers packed, of which with the q / k norms moved into the op).
    """
    import onnx_ir as ir

    graph, count, folded = model.graph, 0, 0
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
        norms, attrs = [], {name: attr.value for name, attr in gqa.attributes.items()}
        if q_norm is not None:
            head_size = weights[0].shape[1] // attrs["num_heads"]
            found = [_norm_scale(n, head_size) for n in (q_norm, k_norm)]
            if None in found or found[0][1] != found[1][1]:
                continue
            norms = [_initializer(graph, f"{gqa.name or 'gqa'}_{count}_{w}_norm",
                                  f[0].astype(weights[0].dtype)) for w, f in zip("qk", found, strict=True)]
            attrs["qk_norm_epsilon"] = found[0][1]
            folded += 1
        name = f"{gqa.name or 'gqa'}_{count}_packed_qkv"
        packed = _initializer(graph, name, np.concatenate(weights, axis=1))
        nodes = [ir.node("MatMul", [q[0], packed], name=name)]
        if q[2] is not None:
            bias = _initializer(graph, f"{name}_bias", np.concatenate([p[2] for p in (q, k, v)]))
            nodes.append(ir.node("Add", [nodes[-1].outputs[0], bias], name=f"{name}_bias"))
        fused = ir.node("GroupQueryAttention", [nodes[-1].outputs[0], None, None, *inputs[3:9],
                                                *([None] * 5 + norms if norms else [])],
                        attributes=attrs, domain=MS, num_outputs=len(gqa.outputs), name=gqa.name)
        graph.insert_before(gqa, [*nodes, fused])
        for old, new in zip(gqa.outputs, fused.outputs, strict=True):
            old.replace_all_uses_with(new)
        fused.outputs[0].dtype, fused.outputs[0].shape = gqa.outputs[0].dtype, gqa.outputs[0].shape
        graph.remove(gqa, safe=True)
        count += 1
    _cleanup(model)
    return count, folded


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
    for name in rewrites:
        if name == "qkv":
            done["qkv"], done["qkv_norms"] = pack_qkv(model, fold_norms)
        else:
            done["swiglu"] = fuse_swiglu(model)
    return done
