"""``embedrank.plugin.QdrantClient``: qdrant-client with embedrank models and a rerank hook.

A drop-in subclass. Every ``models.Document(text=..., model=<registered name>)`` in a write
(``upsert``, ``upload_points``, ``upload_collection``, ``update_vectors``,
``batch_update_points``) or a query (``query_points`` with prefetch, ``query_batch_points``,
``query_points_groups``) is replaced by its vector before qdrant-client sees it; other
documents (fastembed models) go through qdrant-client's own inference unchanged.
The async twin lives in :mod:`embedrank.plugin.qdrant_async`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import Any

import qdrant_client
from qdrant_client import models

from embedrank.errors import InputError
from embedrank.plugin.collections import RERANK_KEY, CollectionState, ModelRecord, RerankConfig, meta_key
from embedrank.plugin.rerank import RerankPlan, configure, needs_reread, plan, rerank, strip_payload
from embedrank.plugin.vectorizer import embed_in, register_embedder, registration
from embedrank.runtime import Reranker

__all__ = ["QdrantClient", "register_embedder"]

UPLOAD_EMBED_BATCH = 64


def batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def rerank_plan(state: CollectionState, rerank: bool | RerankConfig, query: Any, using: str | None,
                limit: int, offset: int | None, with_payload: Any) -> RerankPlan | None:
    """``rerank``: True = the collection's reranker, False = none, a RerankConfig = that one."""
    from embedrank.plugin.rerank import query_document

    if not isinstance(rerank, (bool, RerankConfig)):
        raise InputError(f"rerank must be True, False or a RerankConfig, got {rerank!r}")
    config = rerank if isinstance(rerank, RerankConfig) else state.reranker if rerank else None
    doc = query_document(query)
    default = None
    if doc is not None and registration(doc.model) is not None:
        default = state.default_instruction(using or "", doc.model)
    return plan(config, state.name, query, limit, offset, with_payload, default)


def widened(request: models.QueryRequest, p: RerankPlan) -> models.QueryRequest:
    return request.model_copy(update={"limit": p.candidates, "offset": None, "with_payload": True})


class QdrantClient(qdrant_client.QdrantClient):
    """qdrant-client's ``QdrantClient``, plus embedrank models and ``set_reranker``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._states: dict[str, CollectionState] = {}

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
        config = None if model is None else configure(model, text_field, top_k, instruction)
        self.update_collection(collection_name, metadata={
            RERANK_KEY: None if config is None else asdict(config)})

    def collection_reranker(self, collection_name: str) -> RerankConfig | None:
        """The reranker recorded for a collection, or None."""
        return self._fresh(collection_name).reranker

    def set_instruction(self, collection_name: str, instruction: str | None,
                        using: str | None = None) -> None:
        """Change the default query instruction stored with a collection's vector ``using``."""
        state = self._state(collection_name)
        record = state.records.get(using or "")
        if record is None:
            raise InputError(f"collection {collection_name!r} has no embedrank model recorded for "
                             f"vector {using or ''!r} yet: write documents first")
        metadata = {meta_key(using or ""): {**asdict(record), "instruction": instruction}}
        super().update_collection(collection_name, metadata=metadata)
        state.remember(metadata)

    def collection_models(self, collection_name: str) -> dict[str, ModelRecord]:
        """The embedrank models recorded for each vector of a collection ("" = default vector)."""
        return dict(self._state(collection_name).records)

    def get_embedding_size(self, model_name: str) -> int:
        found = registration(model_name)
        return found.dim if found is not None else super().get_embedding_size(model_name)

    # ------------------------------------------------------------------ collection state

    def _state(self, collection_name: str) -> CollectionState:
        if collection_name not in self._states:
            info = super().get_collection(collection_name)
            self._states[collection_name] = CollectionState.from_info(collection_name, info)
        return self._states[collection_name]

    def _fresh(self, collection_name: str) -> CollectionState:
        self._forget(collection_name)
        return self._state(collection_name)

    def _forget(self, collection_name: str) -> None:
        self._states.pop(collection_name, None)

    def create_collection(self, collection_name: str, *args: Any, **kwargs: Any) -> bool:
        self._forget(collection_name)
        return super().create_collection(collection_name, *args, **kwargs)

    def recreate_collection(self, collection_name: str, *args: Any, **kwargs: Any) -> bool:
        self._forget(collection_name)
        return super().recreate_collection(collection_name, *args, **kwargs)

    def delete_collection(self, collection_name: str, *args: Any, **kwargs: Any) -> bool:
        self._forget(collection_name)
        return super().delete_collection(collection_name, *args, **kwargs)

    def update_collection(self, collection_name: str, *args: Any, **kwargs: Any) -> bool:
        self._forget(collection_name)
        return super().update_collection(collection_name, *args, **kwargs)

    # ------------------------------------------------------------------ writes

    def _checked(self, collection_name: str, obj: Any) -> None:
        """Refuse a mismatched embedder; record a new one. Nothing is written on refusal."""
        state = self._state(collection_name)
        new = state.plan(obj)
        if new:
            super().update_collection(collection_name, metadata=new)
            state.remember(new)

    def _for_write(self, collection_name: str, obj: Any) -> Any:
        self._checked(collection_name, obj)
        return embed_in(obj, is_query=False)

    def upsert(self, collection_name: str, points: Any, *args: Any, **kwargs: Any):
        return super().upsert(collection_name, self._for_write(collection_name, points),
                              *args, **kwargs)

    def update_vectors(self, collection_name: str, points: Any, *args: Any, **kwargs: Any):
        return super().update_vectors(collection_name, self._for_write(collection_name, points),
                                      *args, **kwargs)

    def batch_update_points(self, collection_name: str, update_operations: Any, *args: Any,
                            **kwargs: Any):
        operations = self._for_write(collection_name, update_operations)
        return super().batch_update_points(collection_name, operations, *args, **kwargs)

    def upload_points(self, collection_name: str, points: Iterable, *args: Any,
                      **kwargs: Any) -> None:
        """As qdrant-client's; lists are checked whole first, other iterables batch by batch."""
        if isinstance(points, (list, tuple)):
            self._checked(collection_name, points)
        embedded = (p for chunk in batches(points, UPLOAD_EMBED_BATCH)
                    for p in self._for_write(collection_name, chunk))
        return super().upload_points(collection_name, embedded, *args, **kwargs)

    def upload_collection(self, collection_name: str, vectors: Any, *args: Any,
                          **kwargs: Any) -> None:
        if isinstance(vectors, (dict, list, tuple)):
            vectors = self._for_write(collection_name, vectors)
        elif not hasattr(vectors, "shape"):
            vectors = (v for chunk in batches(vectors, UPLOAD_EMBED_BATCH)
                       for v in self._for_write(collection_name, chunk))
        return super().upload_collection(collection_name, vectors, *args, **kwargs)

    # ------------------------------------------------------------------ queries

    def _for_query(self, state: CollectionState, obj: Any, using: str | None = None) -> Any:
        state.plan(obj, using or "")  # refuses a mismatched embedder; queries record nothing
        return embed_in(obj, True, state.instruction_for, using or "")

    def query_points(self, collection_name: str, query: Any = None, using: str | None = None,
                     prefetch: Any = None, query_filter: models.Filter | None = None,
                     search_params: models.SearchParams | None = None, limit: int = 10,
                     offset: int | None = None, with_payload: Any = True,
                     with_vectors: Any = False, score_threshold: float | None = None,
                     lookup_from: models.LookupLocation | None = None, consistency: Any = None,
                     shard_key_selector: Any = None, timeout: int | None = None, *,
                     rerank: bool | RerankConfig = True, **kwargs: Any) -> Any:
        """qdrant-client's ``query_points``; a text query is reranked when the collection has a
        reranker (``rerank=False`` skips it, a :class:`RerankConfig` uses that one for this
        call). ``score_threshold`` filters the first stage."""
        state = self._fresh(collection_name)
        p = rerank_plan(state, rerank, query, using, limit, offset, with_payload)
        query, prefetch = self._for_query(state, (query, prefetch), using)
        if p is not None:
            limit, offset, fetch_payload = p.candidates, None, True
        else:
            fetch_payload = with_payload
        response = super().query_points(
            collection_name, query=query, using=using, prefetch=prefetch,
            query_filter=query_filter, search_params=search_params, limit=limit, offset=offset,
            with_payload=fetch_payload, with_vectors=with_vectors,
            score_threshold=score_threshold, lookup_from=lookup_from, consistency=consistency,
            shard_key_selector=shard_key_selector, timeout=timeout, **kwargs)
        if p is None:
            return response
        return response.model_copy(update={
            "points": self._reranked(collection_name, p, response.points)})

    def _reranked(self, collection_name: str, p: RerankPlan,
                  candidates: list[models.ScoredPoint]) -> list[models.ScoredPoint]:
        points = rerank(p, candidates)
        selected = None
        if needs_reread(p.with_payload) and points:
            records = self.retrieve(collection_name, [pt.id for pt in points],
                                    with_payload=p.with_payload)
            selected = {r.id: r.payload for r in records}
        return strip_payload(points, p.with_payload, selected)

    def query_batch_points(self, collection_name: str, requests: list[models.QueryRequest],
                           *args: Any, rerank: bool | RerankConfig = True, **kwargs: Any):
        state = self._fresh(collection_name)
        plans = [rerank_plan(state, rerank, r.query, r.using, r.limit or 10, r.offset,
                             False if r.with_payload is None else r.with_payload)
                 for r in requests]
        requests = [widened(r, p) if p else r for r, p in zip(requests, plans, strict=False)]
        requests = self._for_query(state, requests)
        responses = super().query_batch_points(collection_name, requests, *args, **kwargs)
        return [r.model_copy(update={"points": self._reranked(collection_name, p, r.points)})
                if p else r for r, p in zip(responses, plans, strict=True)]

    def query_points_groups(self, collection_name: str, group_by: str, query: Any = None,
                            using: str | None = None, prefetch: Any = None, *args: Any,
                            **kwargs: Any):
        """Embeds embedrank documents; grouped results are not reranked."""
        state = self._state(collection_name)
        query, prefetch = self._for_query(state, (query, prefetch), using)
        return super().query_points_groups(collection_name, group_by, query, using, prefetch,
                                           *args, **kwargs)
