"""``embedrank.plugin.AsyncQdrantClient``: the async twin of :class:`~embedrank.plugin.QdrantClient`.

Model calls (embedding, reranking) run in the event loop's default thread executor, so an
awaited call never blocks the loop. ``upload_points`` / ``upload_collection`` are synchronous
in qdrant-client's async client too; they embed in the calling thread, as qdrant-client does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import qdrant_client
from qdrant_client import models

from embedrank.errors import InputError
from embedrank.plugin.collections import RERANK_KEY, CollectionState, ModelRecord, RerankConfig, meta_key
from embedrank.plugin.qdrant import UPLOAD_EMBED_BATCH, batches, rerank_plan, widened
from embedrank.plugin.rerank import RerankPlan, configure, needs_reread, rerank, strip_payload
from embedrank.plugin.vectorizer import embed_in, registration
from embedrank.runtime import Reranker

__all__ = ["AsyncQdrantClient"]


async def _off_loop(fn, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


class AsyncQdrantClient(qdrant_client.AsyncQdrantClient):
    """qdrant-client's ``AsyncQdrantClient``, plus embedrank models and ``set_reranker``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._states: dict[str, CollectionState] = {}

    # ------------------------------------------------------------------ configuration

    async def set_reranker(self, collection_name: str,
                           model: str | os.PathLike | Reranker | None, text_field: str = "text",
                           top_k: int = 100, instruction: str | None = None) -> None:
        """See :meth:`embedrank.plugin.QdrantClient.set_reranker`."""
        config = None if model is None else await _off_loop(configure, model, text_field, top_k,
                                                             instruction)
        await self.update_collection(collection_name, metadata={
            RERANK_KEY: None if config is None else asdict(config)})

    async def collection_reranker(self, collection_name: str) -> RerankConfig | None:
        return (await self._fresh(collection_name)).reranker

    async def set_instruction(self, collection_name: str, instruction: str | None,
                              using: str | None = None) -> None:
        state = await self._state(collection_name)
        record = state.records.get(using or "")
        if record is None:
            raise InputError(f"collection {collection_name!r} has no embedrank model recorded for "
                             f"vector {using or ''!r} yet: write documents first")
        metadata = {meta_key(using or ""): {**asdict(record), "instruction": instruction}}
        await super().update_collection(collection_name, metadata=metadata)
        state.remember(metadata)

    async def collection_models(self, collection_name: str) -> dict[str, ModelRecord]:
        return dict((await self._state(collection_name)).records)

    def get_embedding_size(self, model_name: str) -> int:
        found = registration(model_name)
        return found.dim if found is not None else super().get_embedding_size(model_name)

    # ------------------------------------------------------------------ collection state

    async def _state(self, collection_name: str) -> CollectionState:
        if collection_name not in self._states:
            info = await super().get_collection(collection_name)
            self._states[collection_name] = CollectionState.from_info(collection_name, info)
        return self._states[collection_name]

    async def _fresh(self, collection_name: str) -> CollectionState:
        self._forget(collection_name)
        return await self._state(collection_name)

    def _forget(self, collection_name: str) -> None:
        self._states.pop(collection_name, None)

    async def create_collection(self, collection_name: str, *args: Any, **kwargs: Any) -> bool:
        self._forget(collection_name)
        return await super().create_collection(collection_name, *args, **kwargs)

    async def recreate_collection(self, collection_name: str, *args: Any, **kwargs: Any) -> bool:
        self._forget(collection_name)
        return await super().recreate_collection(collection_name, *args, **kwargs)

    async def delete_collection(self, collection_name: str, *args: Any, **kwargs: Any) -> bool:
        self._forget(collection_name)
        return await super().delete_collection(collection_name, *args, **kwargs)

    async def update_collection(self, collection_name: str, *args: Any, **kwargs: Any) -> bool:
        self._forget(collection_name)
        return await super().update_collection(collection_name, *args, **kwargs)

    # ------------------------------------------------------------------ writes

    async def _checked(self, collection_name: str, obj: Any) -> None:
        state = await self._state(collection_name)
        new = await _off_loop(state.plan, obj)  # walks every point: off the loop too
        if new:
            await super().update_collection(collection_name, metadata=new)
            state.remember(new)

    async def _for_write(self, collection_name: str, obj: Any) -> Any:
        await self._checked(collection_name, obj)
        return await _off_loop(embed_in, obj, False)

    async def upsert(self, collection_name: str, points: Any, *args: Any, **kwargs: Any):
        points = await self._for_write(collection_name, points)
        return await super().upsert(collection_name, points, *args, **kwargs)

    async def update_vectors(self, collection_name: str, points: Any, *args: Any, **kwargs: Any):
        points = await self._for_write(collection_name, points)
        return await super().update_vectors(collection_name, points, *args, **kwargs)

    async def batch_update_points(self, collection_name: str, update_operations: Any,
                                  *args: Any, **kwargs: Any):
        operations = await self._for_write(collection_name, update_operations)
        return await super().batch_update_points(collection_name, operations, *args, **kwargs)

    def _for_write_blocking(self, collection_name: str, obj: Any) -> Any:
        """For the synchronous upload methods: run the async check on a private loop."""
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, self._checked(collection_name, obj)).result()
        return embed_in(obj, is_query=False)

    def upload_points(self, collection_name: str, points: Iterable, *args: Any,
                      **kwargs: Any) -> None:
        if isinstance(points, (list, tuple)):
            points = self._for_write_blocking(collection_name, points)
        else:
            points = (p for chunk in batches(points, UPLOAD_EMBED_BATCH)
                      for p in self._for_write_blocking(collection_name, chunk))
        return super().upload_points(collection_name, points, *args, **kwargs)

    def upload_collection(self, collection_name: str, vectors: Any, *args: Any,
                          **kwargs: Any) -> None:
        if isinstance(vectors, dict) or isinstance(vectors, (list, tuple)):
            vectors = self._for_write_blocking(collection_name, vectors)
        elif not hasattr(vectors, "shape"):
            vectors = (v for chunk in batches(vectors, UPLOAD_EMBED_BATCH)
                       for v in self._for_write_blocking(collection_name, chunk))
        return super().upload_collection(collection_name, vectors, *args, **kwargs)

    # ------------------------------------------------------------------ queries

    async def _for_query(self, state: CollectionState, obj: Any, using: str | None = None) -> Any:
        def work():
            state.plan(obj, using or "")  # refuses a mismatched embedder; records nothing
            return embed_in(obj, True, state.instruction_for, using or "")

        return await _off_loop(work)

    async def query_points(self, collection_name: str, query: Any = None,
                           using: str | None = None, prefetch: Any = None,
                           query_filter: models.Filter | None = None,
                           search_params: models.SearchParams | None = None, limit: int = 10,
                           offset: int | None = None, with_payload: Any = True,
                           with_vectors: Any = False, score_threshold: float | None = None,
                           lookup_from: models.LookupLocation | None = None,
                           consistency: Any = None, shard_key_selector: Any = None,
                           timeout: int | None = None, *, rerank: bool | RerankConfig = True,
                           **kwargs: Any) -> Any:
        """See :meth:`embedrank.plugin.QdrantClient.query_points`."""
        state = await self._fresh(collection_name)
        p = rerank_plan(state, rerank, query, using, limit, offset, with_payload)
        query, prefetch = await self._for_query(state, (query, prefetch), using)
        if p is not None:
            limit, offset, fetch_payload = p.candidates, None, True
        else:
            fetch_payload = with_payload
        response = await super().query_points(
            collection_name, query=query, using=using, prefetch=prefetch,
            query_filter=query_filter, search_params=search_params, limit=limit, offset=offset,
            with_payload=fetch_payload, with_vectors=with_vectors,
            score_threshold=score_threshold, lookup_from=lookup_from, consistency=consistency,
            shard_key_selector=shard_key_selector, timeout=timeout, **kwargs)
        if p is None:
            return response
        points = await self._reranked(collection_name, p, response.points)
        return response.model_copy(update={"points": points})

    async def _reranked(self, collection_name: str, p: RerankPlan,
                        candidates: list[models.ScoredPoint]) -> list[models.ScoredPoint]:
        points = await _off_loop(rerank, p, candidates)
        selected = None
        if needs_reread(p.with_payload) and points:
            records = await self.retrieve(collection_name, [pt.id for pt in points],
                                          with_payload=p.with_payload)
            selected = {r.id: r.payload for r in records}
        return strip_payload(points, p.with_payload, selected)

    async def query_batch_points(self, collection_name: str, requests: list[models.QueryRequest],
                                 *args: Any, rerank: bool | RerankConfig = True,
                                 **kwargs: Any):
        state = await self._fresh(collection_name)
        plans = [rerank_plan(state, rerank, r.query, r.using, r.limit or 10, r.offset,
                             False if r.with_payload is None else r.with_payload)
                 for r in requests]
        requests = [widened(r, p) if p else r for r, p in zip(requests, plans, strict=False)]
        requests = await self._for_query(state, requests)
        responses = await super().query_batch_points(collection_name, requests, *args, **kwargs)
        out = []
        for response, p in zip(responses, plans, strict=True):
            if p is not None:
                points = await self._reranked(collection_name, p, response.points)
                response = response.model_copy(update={"points": points})
            out.append(response)
        return out

    async def query_points_groups(self, collection_name: str, group_by: str, query: Any = None,
                                  using: str | None = None, prefetch: Any = None, *args: Any,
                                  **kwargs: Any):
        state = await self._state(collection_name)
        query, prefetch = await self._for_query(state, (query, prefetch), using)
        return await super().query_points_groups(collection_name, group_by, query, using,
                                                 prefetch, *args, **kwargs)
