"""The fused export: ``torch.onnx`` (dynamo) + ONNX Runtime contrib-op fusions.

ONNX Runtime's transformer optimizer has no qwen3 model type (REFERENCE §6), so the fusions
come from onnxscript's rewriter (``ort_fusions.optimize_for_ort``) on the dynamo-exported
graph: RMSNorm -> ``SimplifiedLayerNormalization``, residual add + RMSNorm ->
``SkipSimplifiedLayerNormalization``, SDPA -> ``MultiHeadAttention`` (com.microsoft).
The model is exported in its compute dtype (fp16 on CUDA), so the fp32 up-casts that
Qwen3's RMSNorm and rotary embedding do in PyTorch are in the graph as PyTorch runs them.

GroupQueryAttention does not apply: onnxscript's GQA rule matches a decoder with a KV cache
(past/present key-values), and ORT's GQA kernel assumes right padding in the prompt phase.
Our graphs have no cache and are left-padded, so K/V are expanded to the query heads and
``MultiHeadAttention`` gets the padding + causal mask as an additive attention bias.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from embedrank.errors import FusionError, MissingDependencyError, require

FUSED_OPSET = 20
# fused op type -> the onnxscript fusion counts that produce it
FUSED_OPS = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
             "MultiHeadAttention", "GroupQueryAttention", "RotaryEmbedding")
REQUIRED_OPS = ("SimplifiedLayerNormalization", "MultiHeadAttention")


def _example_inputs(module, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch of 2 x 4 (dynamo specializes sizes 0 and 1, so avoid them)."""
    pad, eot = module.pad_id, module.eot_id
    ids = torch.tensor([[pad, pad, eot, eot], [eot, eot, eot, eot]], device=device)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]], device=device)
    return ids, mask


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
                 external_name: str) -> dict[str, int]:
    """Export ``graph`` fused to ``path`` (+ one external-data file when large); return op counts."""
    try:
        ir = require("onnx_ir", "train")
        ort_fusions = require("onnxscript.rewriter.ort_fusions", "train")
    except MissingDependencyError as exc:
        raise MissingDependencyError(f"{exc} (the fused export needs onnxscript >= 0.5 and "
                                     "onnx-ir), or export with --optimize none") from None
    ids, mask = _example_inputs(module, device)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph, (ids, mask), input_names=["input_ids", "attention_mask"],
            dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}), dynamo=True,
            opset_version=opset, optimize=False, verbose=False)
        model, _ = ort_fusions.optimize_for_ort(program.model)
    counts = op_counts(model)
    missing = [op for op in REQUIRED_OPS if not counts[op]]
    if missing:
        raise FusionError(f"the fused export found no {' / '.join(missing)} pattern in this "
                          f"{kind} (fused ops: {counts}); export with --optimize none (TorchScript, "
                          "unfused) or load the checkpoint with attn_implementation='sdpa'")
    _rename_output(model, output)
    _fix_output_shape(model, kind, dim)
    external = _initializer_bytes(model) >= external_threshold
    ir.save(model, str(path), external_data=external_name if external else None)
    return counts
