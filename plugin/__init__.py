"""Serving side (no torch): ONNX Runtime embedder / reranker, Qdrant integration, CLI."""

from embedrank.errors import EmbedrankError
from embedrank.plugin.qdrant import QdrantClient
from embedrank.plugin.qdrant_async import AsyncQdrantClient
from embedrank.plugin.runtime import Embedder, Reranker
from embedrank.plugin.vectorizer import register_embedder

__all__ = [
    "AsyncQdrantClient",
    "EmbedrankError",
    "Embedder",
    "QdrantClient",
    "Reranker",
    "register_embedder",
]
