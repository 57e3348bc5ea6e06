"""Qwen3-style Embedder and Reranker as PyTorch modules over a Hugging Face checkpoint.

Both take left-padded ``input_ids`` / ``attention_mask`` and are the exact functions the
ONNX export traces: the embedder returns L2-normalized last-token states, the reranker the
one logit ``logit_yes - logit_no`` at the last position (score = sigmoid of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from embedrank.errors import DeviceError, InputError, ModelDirError
from embedrank.formats import (
    DEFAULT_MAX_LENGTH,
    QWEN3,
    PromptFormat,
    check_instruction,
    check_texts,
    encode_embedding_inputs,
    encode_query_inputs,
    encode_rerank_inputs,
    pad_left,
    plain_tokenizer,
    token_id,
)
from embedrank.hub import check_source


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2... from each row's first real token, whatever the padding."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at each row's last real token (works for left and right padding).

    The argmax runs on floats: ONNX Runtime's CUDA ArgMax has no int64 kernel, and a CPU node
    in the exported graph would rule out CUDA graphs (exact for lengths below 2**24).
    """
    steps = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (steps[None, :] * attention_mask).float().argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def torch_device(device: str) -> str:
    """``device`` ("cpu", "cuda", "cuda:N") checked against what PyTorch sees, before anything loads."""
    if device == "cpu":
        return device
    if not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise DeviceError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise DeviceError(f"device={device!r} but PyTorch sees no CUDA GPU on this machine (torch "
                          f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use "
                          "--device cpu, or run where a GPU and a CUDA build of torch are installed")
    index = int(device[5:]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device={device!r} but PyTorch sees {torch.cuda.device_count()} GPU(s); "
                          "use cuda:0 .. cuda:N-1")
    return device


def _load_tokenizer(src: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"cannot load a tokenizer from {src!r}: {exc}. Pass a local "
                            "checkpoint directory or a reachable Hugging Face hub id") from None


def _load(auto_cls: str, src: str, dtype, device, trust_remote_code: bool):
    import transformers

    check_source(src)  # at once, not after a minute of hub retries
    cls = getattr(transformers, auto_cls)
    try:
        model = cls.from_pretrained(str(src), dtype=dtype, trust_remote_code=trust_remote_code,
                                    use_safetensors=True)  # never unpickle .bin weights
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"cannot load a model from {src!r}: {exc}. Pass a local checkpoint "
                            "directory (config.json + safetensors) or a reachable hub id") from None
    return model.to(device) if device is not None else model


M = TypeVar("M", bound="_QwenModule")


class _QwenModule(nn.Module):
    """Shared loading and tokenization for both modules; subclasses define ``forward``."""

    auto_class = "AutoModel"  # the transformers class that loads the checkpoint
    prompts: PromptFormat
    max_length: int

    def __init__(self, model: nn.Module, tokenizer, *, prompts: PromptFormat = QWEN3,
                 max_length: int | None = None, raw_control_tokens: bool = False) -> None:
        super().__init__()
        self.model = model
        self.prompts = prompts
        # user text is plain text, as in the runtime (formats.encode_text); True parses control
        # tokens such as <|im_end|> inside user text as the Hugging Face tokenizer does
        self.raw_control_tokens = raw_control_tokens
        self._setup_tokenizer(tokenizer, max_length, model.config)

    @classmethod
    def from_pretrained(cls: type[M], src: str | Path, *, dtype=torch.float32, device=None,
                        max_length: int | None = None, trust_remote_code: bool = False,
                        raw_control_tokens: bool = False) -> M:
        model = _load(cls.auto_class, src, dtype, device, trust_remote_code)
        return cls(model.eval(), _load_tokenizer(str(src), trust_remote_code), max_length=max_length,
                   raw_control_tokens=raw_control_tokens)

    def _setup_tokenizer(self, tokenizer, max_length: int | None, config) -> None:
        self.hf_tokenizer = tokenizer
        self.tokenizer = plain_tokenizer(tokenizer)
        self.eot_id = token_id(self.tokenizer, self.prompts.eot_token)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = self.eot_id if pad is None else pad
        limit = getattr(config, "max_position_embeddings", DEFAULT_MAX_LENGTH)
        self.max_length = min(max_length or DEFAULT_MAX_LENGTH, limit)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def batch(self, seqs: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        ids, mask = pad_left(seqs, self.pad_id)
        return {"input_ids": torch.from_numpy(ids).to(self.device),
                "attention_mask": torch.from_numpy(mask).to(self.device)}

    def save_pretrained(self, out: str | Path) -> None:
        self.model.save_pretrained(out)
        self.hf_tokenizer.save_pretrained(out)


class Embedder(_QwenModule):
    """Decoder LM + last-token pooling + L2 norm (Qwen3-Embedding)."""

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids(attention_mask)).last_hidden_state
        return nn.functional.normalize(last_token_pool(hidden, attention_mask), dim=-1)

    def tokenize_queries(self, texts, instruction: str | None = None) -> list[list[int]]:
        check_instruction(instruction)
        texts = check_texts(texts, "queries")
        return encode_query_inputs(self.tokenizer, self.prompts, texts, instruction, self.max_length,
                                   raw_control_tokens=self.raw_control_tokens) if texts else []

    def tokenize_documents(self, texts) -> list[list[int]]:
        texts = check_texts(texts, "documents")
        return encode_embedding_inputs(self.tokenizer, texts, self.max_length, self.prompts.eot_token,
                                       raw_control_tokens=self.raw_control_tokens)

    @torch.no_grad()
    def embed_queries(self, texts, instruction: str | None = None,
                      dim: int | None = None) -> torch.Tensor:
        return _matryoshka(self(**self.batch(self.tokenize_queries(texts, instruction))), dim)

    @torch.no_grad()
    def embed_documents(self, texts, dim: int | None = None) -> torch.Tensor:
        return _matryoshka(self(**self.batch(self.tokenize_documents(texts))), dim)


def _matryoshka(emb: torch.Tensor, dim: int | None) -> torch.Tensor:
    if dim is None:
        return emb
    if not 0 < dim <= emb.shape[-1]:
        raise InputError(f"dim={dim} is outside (0, {emb.shape[-1]}]")
    return nn.functional.normalize(emb[..., :dim], dim=-1)


class Reranker(_QwenModule):
    """Causal LM judging relevance: score = P("yes") = sigmoid(logit_yes - logit_no)."""

    auto_class = "AutoModelForCausalLM"

    def __init__(self, model: nn.Module, tokenizer, *, prompts: PromptFormat = QWEN3,
                 max_length: int | None = None, raw_control_tokens: bool = False) -> None:
        super().__init__(model, tokenizer, prompts=prompts, max_length=max_length,  # a *ForCausalLM
                         raw_control_tokens=raw_control_tokens)
        self.yes_id = token_id(self.tokenizer, prompts.yes_token)
        self.no_id = token_id(self.tokenizer, prompts.no_token)

    @property
    def decoder(self) -> nn.Module:
        return self.model.get_decoder()

    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The one-logit head: (w_yes - w_no, b_yes - b_no) from two LM-head rows."""
        lm_head = self.model.get_output_embeddings()
        weight = lm_head.weight[self.yes_id] - lm_head.weight[self.no_id]
        bias = getattr(lm_head, "bias", None)
        diff = bias[self.yes_id] - bias[self.no_id] if bias is not None else weight.new_zeros(())
        return weight, diff

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """yes - no logit at the last position, shape [B]."""
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids(attention_mask)).last_hidden_state
        weight, bias = self.head()
        return last_token_pool(hidden, attention_mask) @ weight + bias

    def tokenize(self, query: str, documents, instruction: str | None = None) -> list[list[int]]:
        if not isinstance(query, str):
            raise InputError(f"query must be a str, got {type(query).__name__}")
        query = check_texts([query], "query")[0]
        check_instruction(instruction)
        documents = check_texts(documents, "documents") if documents else []
        return encode_rerank_inputs(self.tokenizer, self.prompts, query, documents, instruction,
                                    self.max_length, raw_control_tokens=self.raw_control_tokens)

    @torch.no_grad()
    def score(self, query: str, documents, instruction: str | None = None) -> torch.Tensor:
        """P(yes) per document, shape [n]."""
        seqs = self.tokenize(query, documents, instruction)
        if not seqs:
            return torch.zeros(0, device=self.device)
        return torch.sigmoid(self(**self.batch(seqs)))
