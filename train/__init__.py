"""Model side: Qwen3-style Embedder / Reranker modules, losses, merging, training (needs torch)."""

from embedrank.errors import require

require("torch", "train")
require("transformers", "train")

from embedrank.train.modeling import Embedder, Reranker  # noqa: E402

__all__ = ["Embedder", "Reranker"]
