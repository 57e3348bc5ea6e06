"""Torch-free runtime: load an exported model directory and embed / rerank with ONNX Runtime."""

from embedrank.runtime.models import DEFAULT_MAX_BATCH, DEFAULT_TOKEN_BUDGET, Embedder, Reranker

__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_TOKEN_BUDGET", "Embedder", "Reranker"]
