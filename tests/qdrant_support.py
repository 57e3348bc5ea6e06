"""Shared helpers for the Qdrant plugin tests: corpus, brute-force references, a second model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from qdrant_client import models

from embedrank.manifest import TOKENIZER_NAME, read_manifest
from embedrank.plugin.demo_corpus import QUERIES, records

CORPUS = records()
TEXTS = [r["text"] for r in CORPUS]
QUERY = QUERIES[0]


def other_fingerprint_dir(src: Path, dst: Path) -> Path:
    """The same model with a different fingerprint (tokenizer.json gains a trailing newline)."""
    if not dst.exists():
        shutil.copytree(src, dst)
        with open(dst / TOKENIZER_NAME, "a", encoding="utf-8") as fh:
            fh.write("\n")
        read_manifest(dst).sealed(dst).write(dst)
    return dst


def make_collection(client, name: str = "docs", size: int = 64, **kwargs) -> None:
    client.create_collection(name, vectors_config=models.VectorParams(
        size=size, distance=models.Distance.COSINE), **kwargs)


def points(model: str, rows=CORPUS, vector_name: str | None = None) -> list[models.PointStruct]:
    out = []
    for i, row in enumerate(rows):
        doc = models.Document(text=row["text"], model=model)
        out.append(models.PointStruct(id=i, vector=doc if vector_name is None
                                      else {vector_name: doc}, payload=dict(row)))
    return out


def first_stage(embedder, query: str, texts=TEXTS, instruction=None) -> np.ndarray:
    """Cosine scores of every text against the query (vectors are unit length)."""
    q = embedder.embed_queries([query], instruction)[0]
    return embedder.embed_documents(texts) @ q


def brute_force(embedder, reranker, query: str, ids: list[int], top_k: int, limit: int,
                offset: int = 0, instruction=None, rerank_instruction=None):
    """(ids, scores) of the reranked top ``limit`` among the ``top_k`` nearest of ``ids``."""
    texts = [TEXTS[i] for i in ids]
    cos = first_stage(embedder, query, texts, instruction)
    order = sorted(range(len(ids)), key=lambda j: -cos[j])
    cands = order[: max(top_k, offset + limit)]
    scores = reranker.score(query, [texts[j] for j in cands], rerank_instruction)
    ranked = sorted(range(len(cands)), key=lambda j: -scores[j])[offset: offset + limit]
    return [ids[cands[j]] for j in ranked], [float(scores[j]) for j in ranked]


class Synced:
    """An ``AsyncQdrantClient`` called like the sync client: its coroutines run on one event
    loop in a thread of its own; its synchronous methods run in the caller's thread."""

    def __init__(self, client) -> None:
        import asyncio
        import threading

        self.client = client
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def __getattr__(self, name: str):
        import asyncio
        import functools
        import inspect

        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            out = attr(*args, **kwargs)
            if inspect.isawaitable(out):
                return asyncio.run_coroutine_threadsafe(out, self.loop).result()
            return out

        return call

    def close(self) -> None:
        self.__getattr__("close")()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def open_client(kind: str, *args, **kwargs):
    """The plugin's sync client, or its async client behind :class:`Synced` (kind "async")."""
    from embedrank.plugin import AsyncQdrantClient, QdrantClient

    if kind == "sync":
        return QdrantClient(*args, **kwargs)
    return Synced(AsyncQdrantClient(*args, **kwargs))
