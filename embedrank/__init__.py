"""embedrank: Qwen3-style instruction-aware embeddings and rerankers for Qdrant."""

from embedrank.errors import EmbedrankError

__version__ = "0.1.0"
__all__ = ["EmbedrankError", "__version__"]
