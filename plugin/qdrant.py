"""``embedrank.plugin.QdrantClient``: qdrant-client with embedrank models and a rerank hook.

A drop-in subclass. Every ``models.Document(text=..., model=<registered name>)`` in a write
(``upsert``, ``upload_points``, ``upload_collection``, ``update_vectors``,
``batch_update_points``) or a query (``query_points`` with prefetch, ``query_batch_points``,
``query_points_groups``) is replaced by its vector before qdrant-client sees it; other
documents (fastembed models) go through qdrant-client's own inference unchanged.

Each method runs one operation of :mod:`embedrank.plugin.core`, the code it shares with
:class:`~embedrank.plugin.AsyncQdrantClient`. Every write re-reads the collection's model
records, and checks and writes under a per-collection lock; in local mode every call holds one
client-wide lock as well (qdrant-client's local mode is not thread-safe).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading
from typing import Any

import qdrant_client

from embedrank.plugin import core, drivers
from embedrank.plugin.collections import ModelRecord, RerankConfig
from embedrank.plugin.vectorizer import register_embedder, registration
from embedrank.runtime import Reranker

__all__ = ["QdrantClient", "register_embedder"]


def _serialized(method: Any) -> Any:
    @functools.wraps(method)
    def serialized(self: _SerialLocal, *args: Any, **kwargs: Any) -> Any:
        with self._serial:
            return method(self, *args, **kwargs)

    return serialized


class _SerialLocal(qdrant_client.QdrantClient):
    """qdrant-client's ``QdrantClient`` whose local mode serves one call at a time.

    Every public method of ``qdrant_client.QdrantClient`` holds a reentrant lock in local mode
    (a query there reads the arrays an upsert resizes); a client of a server does not lock.
    """

    _serial: Any = contextlib.nullcontext()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if drivers.is_local(self.init_options):
            self._serial = threading.RLock()


SERIALIZED = sorted(name for name, value in vars(qdrant_client.QdrantClient).items()
                    if inspect.isfunction(value) and not name.startswith("_"))
for _name in SERIALIZED:
    setattr(_SerialLocal, _name, _serialized(getattr(qdrant_client.QdrantClient, _name)))


class QdrantClient(_SerialLocal):
    """qdrant-client's ``QdrantClient``, plus embedrank models and a collection's reranker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._locks = drivers.LockTable(threading.RLock)

    def _call(self, call: core.Call) -> Any:
        return getattr(super(), call.method)(**call.kwargs)

    def _run(self, op: core.Op) -> Any:
        return drivers.run(op, self._call, self._locks)

    # ------------------------------------------------------------------ configuration

    def set_reranker(self, collection_name: str, model: str | os.PathLike | Reranker | None,
                     text_field: str = "text", top_k: int = 100,
                     instruction: str | None = None) -> None:
        """Rerank text queries on ``collection_name`` (``model=None`` removes the reranker).

        Stored in the collection's metadata (:class:`RerankConfig`: the directory's absolute
        path and fingerprint, ``text_field``, ``top_k``, ``instruction``), so every client and
        ``embedrank serve`` rerank alike. A loaded :class:`Reranker` is recorded by its path
        and fingerprint, and used as given by this process.
        """
        self._run(core.set_reranker(collection_name, model, text_field, top_k, instruction))

    def collection_reranker(self, collection_name: str) -> RerankConfig | None:
        """The reranker recorded for a collection, or None."""
        return self._run(core.collection_reranker(collection_name))

    def set_instruction(self, collection_name: str, instruction: str | None,
                        using: str | None = None) -> None:
        """Change the default query instruction stored with a collection's vector ``using``."""
        self._run(core.set_instruction(collection_name, instruction, using))

    def collection_models(self, collection_name: str) -> dict[str, ModelRecord]:
        """The embedrank models recorded for each vector of a collection ("" = default vector)."""
        return self._run(core.collection_models(collection_name))

    def check_embedder(self, collection_name: str, model_name: str,
                       using: str | None = None) -> ModelRecord:
        """Refuse a registered model whose vectors do not fit ``using``; record it if new."""
        return self._run(core.check_embedder(collection_name, model_name, using))

    def get_embedding_size(self, model_name: str) -> int:
        found = registration(model_name)
        return found.dim if found is not None else super().get_embedding_size(model_name)

    # ------------------------------------------------------------------ writes

    def upsert(self, collection_name: str, *args: Any, **kwargs: Any) -> Any:
        return self._run(core.write("upsert", collection_name, args, kwargs))

    def update_vectors(self, collection_name: str, *args: Any, **kwargs: Any) -> Any:
        return self._run(core.write("update_vectors", collection_name, args, kwargs))

    def batch_update_points(self, collection_name: str, *args: Any, **kwargs: Any) -> Any:
        return self._run(core.write("batch_update_points", collection_name, args, kwargs))

    def upload_points(self, collection_name: str, *args: Any, **kwargs: Any) -> None:
        """As qdrant-client's; lists are checked whole first, other iterables chunk by chunk."""
        return self._run(core.upload("upload_points", collection_name, args, kwargs, self._run))

    def upload_collection(self, collection_name: str, *args: Any, **kwargs: Any) -> None:
        return self._run(core.upload("upload_collection", collection_name, args, kwargs,
                                     self._run))

    # ------------------------------------------------------------------ queries

    def query_points(self, collection_name: str, *args: Any,
                     rerank: bool | RerankConfig = True, **kwargs: Any) -> Any:
        """qdrant-client's ``query_points``; a text query is reranked when the collection has a
        reranker (``rerank=False`` skips it, a :class:`RerankConfig` uses that one for this
        call). ``score_threshold`` filters the first stage."""
        return self._run(core.query_points(collection_name, args, kwargs, rerank))

    def query_batch_points(self, collection_name: str, *args: Any,
                           rerank: bool | RerankConfig = True, **kwargs: Any) -> Any:
        return self._run(core.query_batch_points(collection_name, args, kwargs, rerank))

    def query_points_groups(self, collection_name: str, *args: Any, **kwargs: Any) -> Any:
        """Embeds embedrank documents; grouped results are not reranked."""
        return self._run(core.query_points_groups(collection_name, args, kwargs))
