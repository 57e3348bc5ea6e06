"""`embedrank serve`: an ASGI server (Starlette + uvicorn, no torch) in front of the runtime.

- ``POST /qdrant/infer``: Qdrant's inference hook (``QDRANT__INFERENCE__ADDRESS``), so the Qdrant
  server itself embeds ``Document``s with embedrank models;
- ``POST /rerank`` (Jina / Cohere v2 shape), ``POST /v1/embeddings`` (OpenAI shape);
- ``GET /health``, ``GET /metrics`` (Prometheus text);
- with ``--qdrant URL``, a Qdrant REST proxy that reranks text queries (:mod:`.proxy`).

Concurrent requests are merged into token-budget batches (:mod:`.batcher`). docs/serve.md.
"""

from __future__ import annotations

__all__ = ["ModelSet", "ModelSpec", "ServeOptions", "create_app", "run"]

_LAZY = {  # Starlette and the models: only when asked for (the CLI imports this package's defaults)
    "create_app": "embedrank.serve.app",
    "run": "embedrank.serve.app",
    "ModelSet": "embedrank.serve.models",
    "ModelSpec": "embedrank.serve.settings",
    "ServeOptions": "embedrank.serve.settings",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'embedrank.serve' has no attribute {name!r}")
