"""Right-padded causal attention as one ``com.microsoft.GroupQueryAttention`` node per layer.

An embedder or reranker runs each input once, from position 0, with no KV cache. If the
batch is padded on the **right**, no real token ever attends to a pad (pads come after it)
and every row's positions are simply 0, 1, 2...: attention is plain causal attention, and
ONNX Runtime's GroupQueryAttention computes it exactly, with the rotary embedding inside
the op, K/V kept at their own head count (no expand to the query heads) and no layout
transposes (it reads [batch, sequence, heads * head_dim]). Its per-row lengths come from
the attention mask (``seqlens_k`` = real tokens - 1); pads only produce values nobody reads.

The export swaps each attention module's forward for :func:`_attention_forward`, which
calls the custom op ``embedrank::causal_gqa``. In PyTorch that op is a reference
implementation (rotary + causal SDPA, correct for right-padded rows), so the swapped module
can be checked against the untouched one; ``torch.onnx.export`` translates it to the
contrib op through :data:`ONNX_TRANSLATION`. Graphs exported this way are right-padded
(manifest ``padding_side = "right"``); the runtime pads as the manifest says.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch
from torch import nn

from embedrank.errors import FusionError


@torch.library.custom_op("embedrank::causal_gqa", mutates_args=())
def causal_gqa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               num_heads: int, kv_heads: int) -> torch.Tensor:
    """Rotary + causal attention over right-padded rows; [B, S, H*D] in, [B, S, H*D] out.

    ``cos`` / ``sin``: [max_positions, D/2] tables (GroupQueryAttention's cos/sin cache).
    ``attention_mask`` is not needed here (causal attention never looks right of a token);
    the ONNX translation turns it into GroupQueryAttention's per-row lengths.
    """
    batch, length, _ = query.shape
    dim = query.shape[-1] // num_heads
    q = query.view(batch, length, num_heads, dim).transpose(1, 2)
    k = key.view(batch, length, kv_heads, dim).transpose(1, 2)
    v = value.view(batch, length, kv_heads, dim).transpose(1, 2)
    c = torch.cat((cos[:length], cos[:length]), -1).to(query.dtype)
    s = torch.cat((sin[:length], sin[:length]), -1).to(query.dtype)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * c + torch.cat((-x[..., half:], x[..., :half]), -1) * s

    out = nn.functional.scaled_dot_product_attention(rotate(q), rotate(k), v, is_causal=True,
                                                     enable_gqa=num_heads != kv_heads)
    return out.transpose(1, 2).reshape(batch, length, num_heads * dim)


@causal_gqa.register_fake
def _(query, key, value, attention_mask, cos, sin, num_heads, kv_heads):
    return torch.empty_like(query)


def _gqa_op():
    """onnxscript handle for com.microsoft.GroupQueryAttention (ONNX has no schema for it)."""
    from onnx.defs import OpSchema
    from onnxscript.values import Op, Opset

    param, optional = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    names = ("query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length",
             "cos_cache", "sin_cache")
    inputs = [param(n, "M" if n in ("seqlens_k", "total_sequence_length") else "T",
                    param_option=optional if n not in ("query", "seqlens_k", "total_sequence_length")
                    else OpSchema.FormalParameterOption.Single) for n in names]
    outputs = [param(n, "T") for n in ("output", "present_key", "present_value")]
    attrs = [OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, required=True),
             OpSchema.Attribute("kv_num_heads", OpSchema.AttrType.INT, required=True),
             OpSchema.Attribute("do_rotary", OpSchema.AttrType.INT, required=False),
             OpSchema.Attribute("rotary_interleaved", OpSchema.AttrType.INT, required=False)]
    schema = OpSchema("GroupQueryAttention", "com.microsoft", 1, inputs=inputs, outputs=outputs,
                      type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
                                        ("M", ["tensor(int32)"], "")], attributes=attrs)
    return Op(Opset("com.microsoft", 1), "GroupQueryAttention", schema)


def _onnx_causal_gqa(query, key, value, attention_mask, cos, sin, num_heads: int, kv_heads: int):
    from onnxscript import opset20 as op

    lengths = op.Cast(op.Sub(op.ReduceSum(attention_mask, [1], keepdims=0), op.Constant(value_int=1)),
                      to=6)  # int32: index of each row's last real token
    total = op.Cast(op.Squeeze(op.Slice(op.Shape(attention_mask), [1], [2])), to=6)
    out, _, _ = _gqa_op()(query, key, value, None, None, lengths, total, cos, sin,
                          num_heads=num_heads, kv_num_heads=kv_heads, do_rotary=1,
                          rotary_interleaved=0)
    return out


ONNX_TRANSLATION = {torch.ops.embedrank.causal_gqa.default: _onnx_causal_gqa}


def rotary_tables(model: nn.Module, max_positions: int, dtype: torch.dtype, device) -> tuple:
    """cos / sin [max_positions, head_dim/2] from the model's rotary embedding (default RoPE only)."""
    rotary = next((m for name, m in model.named_modules() if name.split(".")[-1] == "rotary_emb"), None)
    if rotary is None or getattr(rotary, "rope_type", "default") != "default":
        raise FusionError("GroupQueryAttention export supports the default rotary embedding only "
                          f"(this model: {getattr(rotary, 'rope_type', None)!r}); use --optimize none")
    positions = torch.arange(max_positions, dtype=torch.float64, device=device)
    angles = positions[:, None] * rotary.inv_freq.to(device, torch.float64)[None, :]
    scale = float(getattr(rotary, "attention_scaling", 1.0))
    return ((angles.cos() * scale).to(dtype), (angles.sin() * scale).to(dtype))


def _attention_forward(self, hidden_states, *args, **kwargs):
    """Qwen3 / Llama-style attention with :func:`causal_gqa` (q/k norms where the model has them)."""
    batch, length, _ = hidden_states.shape
    dim = self.head_dim
    query, key = self.q_proj(hidden_states), self.k_proj(hidden_states)
    if hasattr(self, "q_norm"):
        query = self.q_norm(query.view(batch, length, -1, dim)).reshape(batch, length, -1)
        key = self.k_norm(key.view(batch, length, -1, dim)).reshape(batch, length, -1)
    heads, kv_heads = query.shape[-1] // dim, key.shape[-1] // dim
    state = self._embedrank_gqa
    out = torch.ops.embedrank.causal_gqa(query, key, self.v_proj(hidden_states), state["mask"],
                                         state["cos"], state["sin"], heads, kv_heads)
    if getattr(self, "_embedrank_last", False):  # the last layer: only the pooled token goes on
        out = _at_last_token(out, state)
    return self.o_proj(out), None


def _at_last_token(x: torch.Tensor, state: dict) -> torch.Tensor:
    """[B, S, C] -> [B, 1, C]: each right-padded row at its last real token."""
    last = state["mask"].sum(-1) - 1
    return x[torch.arange(x.shape[0], device=x.device), last][:, None]


def _last_layer_forward(self, hidden_states, *args, **kwargs):
    """The last decoder layer, for a graph that pools the last token: attention reads every
    position, but o_proj, the residual adds, the norm and the MLP run on the pooled token only
    (1 of S rows). Every position of the result holds that token's state, so the model's final
    norm and last-token pooling read the same value as without the cut."""
    residual = _at_last_token(hidden_states, self.self_attn._embedrank_gqa)
    hidden, _ = self.self_attn(self.input_layernorm(hidden_states))
    hidden = residual + hidden
    hidden = hidden + self.mlp(self.post_attention_layernorm(hidden))
    return hidden.expand(hidden_states.shape)


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    found = [m for m in model.modules()
             if all(hasattr(m, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim"))]
    config = model.config
    problems = []
    if not found or len(found) != getattr(config, "num_hidden_layers", -1):
        problems.append(f"{len(found)} q/k/v/o attention modules for "
                        f"{getattr(config, 'num_hidden_layers', '?')} layers")
    if any(abs(getattr(m, "scaling", m.head_dim ** -0.5) - m.head_dim ** -0.5) > 1e-9 for m in found):
        problems.append("an attention scale other than 1/sqrt(head_dim)")
    windowed = (getattr(config, "sliding_window", None) is not None
                and getattr(config, "use_sliding_window", True))  # Qwen2/3 carry a disabled one
    if windowed or any(getattr(m, "sliding_window", None) is not None for m in found) or any(
            t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        problems.append("sliding-window layers")
    if problems:
        raise FusionError(f"cannot export this model's attention as GroupQueryAttention "
                          f"({'; '.join(problems)}); use --optimize none")
    return found


@contextmanager
def gqa_attention(model: nn.Module, max_positions: int, dtype: torch.dtype, device):
    """Within the block, every attention layer of ``model`` (a decoder) runs :func:`causal_gqa`,
    and the last decoder layer runs the rest of its block at the pooled token only
    (:func:`_last_layer_forward`: the graph pools the last token, so the other rows are unused).

    Yields a dict: set ``state["mask"]`` to the batch's [B, S] attention mask before each call.
    """
    modules = _attention_modules(model)
    cos, sin = rotary_tables(model, max_positions, dtype, device)
    state = {"mask": None, "cos": cos, "sin": sin}
    for module in modules:
        module._embedrank_gqa = state
        module.forward = types.MethodType(_attention_forward, module)
    last = _last_layer(model, modules[-1])
    last.self_attn._embedrank_last = True
    last.forward = types.MethodType(_last_layer_forward, last)
    try:
        yield state
    finally:
        for module in modules:
            del module.forward, module._embedrank_gqa
        del last.forward, last.self_attn._embedrank_last


def _last_layer(model: nn.Module, attention: nn.Module) -> nn.Module:
    """The decoder layer holding ``attention`` (a pre-norm block: norm, attention, norm, MLP)."""
    parts = ("input_layernorm", "post_attention_layernorm", "mlp")
    layer = next((m for m in model.modules() if getattr(m, "self_attn", None) is attention), None)
    if layer is None or not all(hasattr(layer, p) for p in parts):
        raise FusionError("cannot export this model's attention as GroupQueryAttention (its last "
                          "decoder layer is not a pre-norm attention + MLP block); use --optimize none")
    return layer


class RightPaddedGraph(nn.Module):
    """Wraps an export graph so its attention layers see this call's mask (see gqa_attention)."""

    def __init__(self, graph: nn.Module, state: dict) -> None:
        super().__init__()
        self.inner = graph
        self._state = state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self._state["mask"] = attention_mask
        return self.inner(input_ids, attention_mask)

