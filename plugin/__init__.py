"""Serving side (no torch): ONNX Runtime embedder / reranker, Qdrant integration, CLI."""

from embedrank.errors import EmbedrankError
from embedrank.plugin.runtime import Embedder, Reranker

__all__ = ["EmbedrankError", "Embedder", "Reranker"]
