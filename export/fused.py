"""The fused export: ``torch.onnx`` (dynamo) + ONNX Runtime contrib-op fusions.

ONNX Runtime's transformer optimizer has no qwen3 model type (its presets fail on Qwen3), so the fusions
come from onnxscript's rewriter (``ort_fusions.optimize_for_ort``) on the dynamo-exported
graph: RMSNorm -> ``SimplifiedLayerNormalization``, residual add + RMSNorm ->
``SkipSimplifiedLayerNormalization``, SDPA -> ``MultiHeadAttention`` (com.microsoft), and,
by one rule of ours (:func:`_rotary_rules`), rotary embedding -> ``RotaryEmbedding`` with
precomputed cos / sin tables.
The model is exported in its compute dtype (fp16 on CUDA), so the fp32 up-casts that
Qwen3's RMSNorm and rotary embedding do in PyTorch are in the graph as PyTorch runs them.

Attention, two forms (``attention=``):

* ``"gqa"`` (default): one ``GroupQueryAttention`` per layer, written by the exporter itself
  (:mod:`embedrank.export.gqa`): rotary inside the op, K/V at their own head count, no
  layout transposes, causal flash attention. The graph is **right-padded** (manifest
  ``padding_side``). Its CUDA kernels are fp16 / bf16 only. The rotary embedding runs inside
  the op (``do_rotary``): moving it into separate ``RotaryEmbedding`` ops measured 12.5% slower
  on the H100 (docs/performance.md).
* ``"mha"``: K/V expanded to the query heads and ``MultiHeadAttention`` with the padding +
  causal mask as an additive bias, on left-padded batches (any dtype). onnxscript's own GQA
  rule is left out on purpose: it turns the mask into per-row lengths, i.e. assumes right
  padding, and breaks left-padded graphs.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from embedrank.errors import FusionError, InputError, MissingDependencyError, require
from embedrank.export.cuda_rewrites import apply as apply_rewrites
from embedrank.export.gqa import ONNX_TRANSLATION, RightPaddedGraph, gqa_attention

FUSED_OPSET = 20
# fused op type -> the onnxscript fusion counts that produce it
FUSED_OPS = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
             "MultiHeadAttention", "GroupQueryAttention", "RotaryEmbedding", "MoE",
             "SwiGLU", "QKVRotary")  # ai.embedrank (embedrank.ops): the swiglu / rope rewrites
REQUIRED_OPS = ("SimplifiedLayerNormalization", "MultiHeadAttention")


ATTENTION = "embedrank_sdpa_repeat_kv"


def _sdpa_repeat_kv(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                    is_causal=None, **kwargs):
    """SDPA with K/V repeated to the query heads and the mask passed explicitly.

    transformers picks ``enable_gqa`` or ``repeat_kv`` by version and device; the first
    exports as a pattern onnxscript fuses into GroupQueryAttention, whose kernels assume right
    padding (wrong results / errors on our left-padded batches). This keeps one graph form.
    """
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        batch, heads, length, dim = key.shape
        key, value = (t[:, :, None].expand(batch, heads, groups, length, dim)
                      .reshape(batch, heads * groups, length, dim) for t in (key, value))
    out = nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling, is_causal=attention_mask is None)
    return out.transpose(1, 2).contiguous(), None


@contextmanager
def _exportable_attention(model: nn.Module):
    """Run ``model`` with :func:`_sdpa_repeat_kv` (transformers' AttentionInterface) meanwhile."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, _sdpa_repeat_kv)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    previous = model.config._attn_implementation or "sdpa"
    model.set_attn_implementation(ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


ATTENTIONS = ("gqa", "mha")


def _example_inputs(module, device: str, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of 2 x 4 (dynamo specializes sizes 0 and 1, so avoid them)."""
    pad, eot = module.pad_id, module.eot_id
    row, row_mask = [pad, pad, eot, eot], [0, 0, 1, 1]
    if side == "right":
        row, row_mask = row[::-1], row_mask[::-1]
    ids = torch.tensor([row, [eot, eot, eot, eot]], device=device)
    mask = torch.tensor([row_mask, [1, 1, 1, 1]], device=device)
    return ids, mask


def _rotary_rules(max_positions: int):
    """x*cos + rotate_half(x)*sin, cos/sin computed from position ids -> com.microsoft.RotaryEmbedding.

    onnxscript fuses rotary only where the frequencies come from ``MatMul + Transpose``; the
    exporter writes Qwen3's ``inv_freq @ positions`` (contraction size 1) as a broadcast ``Mul``,
    so its cos/sin-cache rule misses and leaves seven element-wise ops per q / k per layer.
    This rule matches the ``Mul`` form and precomputes cos/sin tables for ``max_positions``.
    """
    import numpy as np
    import onnx_ir as ir
    from onnxscript.rewriter import pattern

    class RotaryFromPositions(pattern.RewriteRuleClassBase):
        def __init__(self, name: str, cast: bool) -> None:
            super().__init__(name, remove_nodes=False)  # cos / sin are shared by all layers
            self._cast = cast
            self._tables: dict = {}

        def pattern(self, op, x, pos, axes, inv_freq, start1, end1, start2, end2, dtype):
            freqs = op.Mul(op.Cast(op.Unsqueeze(pos, axes), to=ir.DataType.FLOAT), inv_freq)
            emb = op.Concat(freqs, freqs, axis=-1)
            cos, sin = op.Cos(emb), op.Sin(emb)
            if self._cast:
                cos, sin = op.Cast(cos, to=dtype), op.Cast(sin, to=dtype)
            cos, sin = op.Unsqueeze(cos, [1]), op.Unsqueeze(sin, [1])
            half1 = op.Slice(x, start1, end1, [3], [1])
            half2 = op.Slice(x, start2, end2, [3], [1])
            return op.Add(op.Mul(x, cos), op.Mul(op.Concat(op.Neg(half2), half1, axis=-1), sin))

        def check(self, context, x, pos, axes, inv_freq, start1, end1, start2, end2, **_):
            result = pattern.MatchResult()
            shape = x.shape
            if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1::2]):
                return result.fail("x is not [batch, heads, sequence, head_dim]", x)
            half = shape[3] // 2
            freq = inv_freq.const_value
            if freq is None or freq.numpy().size != half or pos.shape is None or len(pos.shape) != 2:
                return result.fail("not head_dim/2 constant frequencies over [batch, seq] ids")
            values = [v.const_value.numpy().tolist() if v.const_value is not None else None
                      for v in (axes, start1, end1, start2)]
            if values != [[2], [0], [half], [half]] or end2.const_value is None \
                    or end2.const_value.numpy().item() < shape[3]:
                return result.fail("not a rotate-half split of the last axis")
            return result

        def rewrite(self, op, x, pos, inv_freq, dtype=None, **_):
            key = (inv_freq, dtype.value if dtype is not None else None)
            if key not in self._tables:
                angles = np.arange(max_positions, dtype=np.float64)[:, None] \
                    * inv_freq.const_value.numpy().reshape(1, -1).astype(np.float64)
                np_dtype = np.float16 if self._cast and dtype.value == ir.DataType.FLOAT16 \
                    else np.float32
                self._tables[key] = tuple(op.Constant(value=ir.tensor(
                    f(angles).astype(np.float32).astype(np_dtype))) for f in (np.cos, np.sin))
            cos, sin = self._tables[key]
            return op.RotaryEmbedding(x, pos, cos, sin, interleaved=0, num_heads=x.shape[1],
                                      _domain="com.microsoft")

        def cleanup(self) -> None:
            self._tables.clear()

    return pattern.RewriteRuleSet([RotaryFromPositions.rule("rotary_cast", cast=True),
                                   RotaryFromPositions.rule("rotary", cast=False)])


def _fuse_rotary(model, max_positions: int) -> int:
    import onnx_ir as ir

    count = _rotary_rules(max_positions).apply_to_model(model)
    ir.passes.common.RemoveUnusedNodesPass()(model)
    ir.passes.common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16)(model)
    return count


def _optimize_for_ort(model) -> None:
    """onnxscript's ``ort_fusions.optimize_for_ort`` (0.7) minus the GroupQueryAttention rules.

    Its GQA rule fires once rotary is fused (torch 2.11 / transformers 5.17 export that form)
    and turns the padding mask into per-row lengths, which assumes right padding: the result
    is wrong on left-padded batches (seen: cosine 0.2 on CPU, a CUDA error on the GPU).
    """
    import onnx_ir as ir
    from onnxscript import optimizer
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import (
        cos_sin_cache,
        fused_matmul_rule_sets,
        rms_normalization,
        rotary_embedding,
        sdpa,
        sdpa_via_mha,
        shape_optimization,
        skip_normalization,
    )

    common = ir.passes.common
    common.ShapeInferencePass()(model)
    optimizer.optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimizer.optimize(model)
    rms_normalization.fuse_rms_normalization(model)
    skip_normalization.fuse_skip_rms_normalization(model)
    rotary_embedding.fuse_rotary_embedding(model)
    cos_sin_cache.fuse_cos_sin_cache(model)
    common.CommonSubexpressionEliminationPass()(model)
    sdpa.fuse_sdpa(model, apply_shape_inference=True)
    sdpa_via_mha.replace_sdpa_by_mha(model)
    optimizer.optimize(model)  # inlines the fusion functions nothing consumed
    rewrite(model, fused_matmul_rule_sets.fused_matmul_rule_sets())
    ir.passes.Sequential(common.LiftConstantsToInitializersPass(lift_all_constants=False,
                                                                size_limit=1),
                         common.RemoveInitializersFromInputsPass(),
                         common.ShapeInferencePass())(model)


def _rename_output(model, name: str) -> None:
    """Give the graph output ``name`` (dynamo may already use it for an inner value)."""
    taken = {v.name: v for node in model.graph for v in node.outputs}
    taken.update({v.name: v for v in model.graph.inputs})
    output = model.graph.outputs[0]
    if name in taken and taken[name] is not output:
        taken[name].name = f"{name}__inner"
    output.name = name


def _fix_output_shape(model, kind: str, dim: int) -> None:
    import onnx_ir as ir

    output = model.graph.outputs[0]
    output.shape = ir.Shape(["batch", dim] if kind == "embedder" else ["batch"])


def op_counts(model) -> dict[str, int]:
    """How many nodes of each fused op type the (onnx_ir) model holds."""
    counts = dict.fromkeys(FUSED_OPS, 0)
    for node in model.graph:
        if node.op_type in counts:
            counts[node.op_type] += 1
    return counts


def _initializer_bytes(model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values()
               if v.const_value is not None)


def export_fused(graph: nn.Module, kind: str, path: Path, *, output: str, dim: int, module,
                 device: str, opset: int = FUSED_OPSET, external_threshold: int,
                 external_name: str, max_positions: int, attention: str = "gqa",
                 rewrites: tuple[str, ...] = (), strict_rewrites: bool = True) -> dict[str, int]:
    """Export ``graph`` fused to ``path`` (+ one external-data file when large); return op counts.

    ``attention="gqa"`` writes a right-padded graph, ``"mha"`` a left-padded one.
    ``rewrites`` (GQA only): names of :data:`embedrank.export.cuda_rewrites.REWRITES`; the
    q / k norms move into GroupQueryAttention only for ``device="cuda"`` (CUDA-only kernel).
    ``strict_rewrites``: every layer must be rewritten (else ``FusionError``); off for the device
    default, which rewrites the layers it fits and records the counts.
    """
    try:
        ir = require("onnx_ir", "train")
        require("onnxscript.rewriter.ort_fusions", "train")
    except MissingDependencyError as exc:
        raise MissingDependencyError(f"{exc} (the fused export needs onnxscript >= 0.5 and "
                                     "onnx-ir), or export with --optimize none") from None
    if attention not in ATTENTIONS:
        raise InputError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    gqa = attention == "gqa"
    if rewrites and not gqa:
        raise InputError("graph rewrites apply to the fused GroupQueryAttention graph only")
    ids, mask = _example_inputs(module, device, "right" if gqa else "left")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    context = (gqa_attention(module.model, max_positions, next(module.model.parameters()).dtype,
                             device) if gqa else _exportable_attention(module.model))
    with warnings.catch_warnings(), torch.no_grad(), context as state:
        warnings.simplefilter("ignore")
        if gqa:
            graph = RightPaddedGraph(graph, state)
        program = torch.onnx.export(
            graph, (ids, mask), input_names=["input_ids", "attention_mask"],
            dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}), dynamo=True,
            opset_version=opset, optimize=False, verbose=False,
            custom_translation_table=ONNX_TRANSLATION if gqa else None)
        model = program.model
        _optimize_for_ort(model)
        if not gqa:
            _fuse_rotary(model, max_positions)
    layers = op_counts(model)["GroupQueryAttention"]
    rewritten = apply_rewrites(model, rewrites, fold_norms=device.startswith("cuda"))
    counts = op_counts(model)
    missed = {name: n for name, n in rewritten.items() if name in rewrites and n != layers}
    if strict_rewrites and missed:
        hint = (" (a model with q/k norms packs on device='cuda' only: ONNX Runtime runs the in-op "
                "norm on CUDA)" if "qkv" in missed and not device.startswith("cuda") else "")
        raise FusionError(f"the {'/'.join(missed)} rewrite fits {missed} of {layers} layers of this "
                          f"{kind}{hint}; export without --rewrites {','.join(missed)}")
    missing = [op for op in REQUIRED_OPS if not counts[op]]
    if layers:  # the other fused attention (or, after the rope rewrite, its MultiHeadAttention)
        missing = [op for op in missing if op != "MultiHeadAttention"]
    if missing:
        raise FusionError(f"the fused export found no {' / '.join(missing)} pattern in this "
                          f"{kind} (fused ops: {counts}); export with --optimize none (TorchScript, "
                          "unfused) or load the checkpoint with attn_implementation='sdpa'")
    _rename_output(model, output)
    _fix_output_shape(model, kind, dim)
    external = _initializer_bytes(model) >= external_threshold
    ir.save(model, str(path), external_data=external_name if external else None)
    return {**counts, **{f"rewrite_{name}": n for name, n in rewritten.items()}}
