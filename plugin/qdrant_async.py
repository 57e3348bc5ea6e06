"""``embedrank.plugin.AsyncQdrantClient``: :class:`~embedrank.plugin.QdrantClient` for asyncio.

The same operations (:mod:`embedrank.plugin.core`), run by the async driver: model calls
(embedding, reranking, loading) run in the event loop's default thread executor, so an awaited
call never blocks the loop; writes to one collection are checked and written under an
``asyncio.Lock``. ``upload_points`` / ``upload_collection`` are synchronous in qdrant-client's
async client too: they run the same operations with the synchronous driver, in the calling
thread, and reach the collection's metadata through qdrant-client's local mode directly or,
for a server, through a synchronous client made from this client's ``init_options``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from typing import Any

import qdrant_client

from embedrank.plugin import core, drivers
from embedrank.plugin.collections import ModelRecord, RerankConfig
from embedrank.plugin.vectorizer import registration
from embedrank.runtime import Reranker

__all__ = ["AsyncQdrantClient"]


def _finished(coroutine: Any) -> Any:
    """The result of a local-mode coroutine, which never waits for anything."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("a local-mode Qdrant call waited for I/O")


class AsyncQdrantClient(qdrant_client.AsyncQdrantClient):
    """qdrant-client's ``AsyncQdrantClient``, plus embedrank models and a collection's reranker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._locks = drivers.LockTable(asyncio.Lock)
        self._sync_locks = drivers.LockTable(threading.RLock)
        self._sync_client: qdrant_client.QdrantClient | None = None

    async def _call(self, call: core.Call) -> Any:
        return await getattr(super(), call.method)(**call.kwargs)

    def _call_blocking(self, call: core.Call) -> Any:
        method = getattr(super(), call.method)
        if not inspect.iscoroutinefunction(method):
            return method(**call.kwargs)
        if drivers.is_local(self.init_options):
            return _finished(method(**call.kwargs))
        if self._sync_client is None:
            self._sync_client = qdrant_client.QdrantClient(**self.init_options)
        return getattr(self._sync_client, call.method)(**call.kwargs)

    async def _run(self, op: core.Op) -> Any:
        return await drivers.arun(op, self._call, self._locks)

    def _run_blocking(self, op: core.Op) -> Any:
        return drivers.run(op, self._call_blocking, self._sync_locks)

    async def close(self, *args: Any, **kwargs: Any) -> None:
        if self._sync_client is not None:
            self._sync_client.close()
        await super().close(*args, **kwargs)

    # ------------------------------------------------------------------ configuration

    async def set_reranker(self, collection_name: str,
                           model: str | os.PathLike | Reranker | None, text_field: str = "text",
                           top_k: int = 100, instruction: str | None = None) -> None:
        """See :meth:`embedrank.plugin.QdrantClient.set_reranker`."""
        await self._run(core.set_reranker(collection_name, model, text_field, top_k, instruction))

    async def collection_reranker(self, collection_name: str) -> RerankConfig | None:
        return await self._run(core.collection_reranker(collection_name))

    async def set_instruction(self, collection_name: str, instruction: str | None,
                              using: str | None = None) -> None:
        await self._run(core.set_instruction(collection_name, instruction, using))

    async def collection_models(self, collection_name: str) -> dict[str, ModelRecord]:
        return await self._run(core.collection_models(collection_name))

    async def check_embedder(self, collection_name: str, model_name: str,
                             using: str | None = None) -> ModelRecord:
        return await self._run(core.check_embedder(collection_name, model_name, using))

    def get_embedding_size(self, model_name: str) -> int:
        found = registration(model_name)
        return found.dim if found is not None else super().get_embedding_size(model_name)

    # ------------------------------------------------------------------ writes

    async def upsert(self, collection_name: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run(core.write("upsert", collection_name, args, kwargs))

    async def update_vectors(self, collection_name: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run(core.write("update_vectors", collection_name, args, kwargs))

    async def batch_update_points(self, collection_name: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run(core.write("batch_update_points", collection_name, args, kwargs))

    def upload_points(self, collection_name: str, *args: Any, **kwargs: Any) -> None:
        return self._run_blocking(core.upload("upload_points", collection_name, args, kwargs,
                                              self._run_blocking))

    def upload_collection(self, collection_name: str, *args: Any, **kwargs: Any) -> None:
        return self._run_blocking(core.upload("upload_collection", collection_name, args, kwargs,
                                              self._run_blocking))

    # ------------------------------------------------------------------ queries

    async def query_points(self, collection_name: str, *args: Any,
                           rerank: bool | RerankConfig = True, **kwargs: Any) -> Any:
        """See :meth:`embedrank.plugin.QdrantClient.query_points`."""
        return await self._run(core.query_points(collection_name, args, kwargs, rerank))

    async def query_batch_points(self, collection_name: str, *args: Any,
                                 rerank: bool | RerankConfig = True, **kwargs: Any) -> Any:
        return await self._run(core.query_batch_points(collection_name, args, kwargs, rerank))

    async def query_points_groups(self, collection_name: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run(core.query_points_groups(collection_name, args, kwargs))
