"""Qdrant integration (no torch): embed `models.Document` on upsert, rerank on query."""

from embedrank.errors import EmbedrankError
from embedrank.runtime import Embedder, Reranker

__all__ = [
    "AsyncQdrantClient",
    "EmbedrankError",
    "Embedder",
    "QdrantClient",
    "Reranker",
    "register_embedder",
]

_LAZY = {  # qdrant-client takes ~1 s to import: only when asked for
    "QdrantClient": "embedrank.plugin.qdrant",
    "AsyncQdrantClient": "embedrank.plugin.qdrant_async",
    "register_embedder": "embedrank.plugin.vectorizer",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'embedrank.plugin' has no attribute {name!r}")
