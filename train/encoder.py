"""Encoder checkpoints (BERT-style, e.g. all-MiniLM-L6-v2) as embedders: mean pooling.

Same interface as :class:`~embedrank.train.modeling.Embedder` (tokenize, batch, forward ->
normalized ``[B, D]``), so the trainer and the evaluation take it as is. Queries carry no
instruction template (these models were not trained with one); ``[SEP]`` ends every sequence.
Training side only: ``embedrank export`` produces last-token (Qwen3-style) graphs.
"""

from __future__ import annotations

import torch
from torch import nn

from embedrank.formats import PromptFormat
from embedrank.train.modeling import Embedder, position_ids

ENCODER_PROMPTS = PromptFormat(query_template="{query}", eot_token="[SEP]")


class MeanPoolEmbedder(Embedder):
    """Encoder + mean over the real tokens + L2 norm (sentence-transformers' usual recipe)."""

    def __init__(self, model: nn.Module, tokenizer, *, prompts: PromptFormat = ENCODER_PROMPTS,
                 max_length: int | None = None, raw_control_tokens: bool = False) -> None:
        super().__init__(model, tokenizer, prompts=prompts, max_length=max_length,
                         raw_control_tokens=raw_control_tokens)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids(attention_mask)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return nn.functional.normalize(mean, dim=-1)
