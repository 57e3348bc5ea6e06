"""Concurrency: one Embedder, Reranker and client shared by 16 threads give the serial results,
without deadlock; the async client answers many concurrent queries the same way.

Sizes: 16 threads x 30 calls and 50 concurrent async queries in CI; 16 x 500 and 200 with
``EMBEDRANK_RELIABILITY_FULL=1``.
"""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import pytest
from qdrant_client import models
from reliability_support import TALLY, size

from embedrank.plugin import AsyncQdrantClient, QdrantClient, Reranker, register_embedder

pytestmark = pytest.mark.reliability

THREADS = 16
CALLS = size(30, 500)
ASYNC_QUERIES = size(50, 200)
TIMEOUT = size(240, 1800)  # seconds: past this the run counts as deadlocked
VARIANTS = 12
TEXTS = [f"passage {i} on {w}" for i, w in enumerate(
    ["tides", "bread", "comets", "violins", "ferns", "owls", "maps", "salt"] * 8)]
QUERIES = [f"question {i} about {TEXTS[i * 5 % len(TEXTS)].split()[-1]}" for i in range(VARIANTS)]
KINDS = ("embed_documents", "embed_queries", "rerank", "query", "query_no_rerank")


@pytest.fixture(scope="module")
def shared(embedder_dir, reranker_dir):
    embedder = register_embedder("tiny-conc", embedder_dir)
    reranker = Reranker.load(reranker_dir)
    client = QdrantClient(":memory:")
    client.create_collection("docs", vectors_config=models.VectorParams(
        size=64, distance=models.Distance.COSINE))
    client.upsert("docs", [models.PointStruct(id=i, payload={"text": t}, vector=models.Document(
        text=t, model="tiny-conc")) for i, t in enumerate(TEXTS)])
    client.set_reranker("docs", reranker, top_k=16)
    return embedder, reranker, client


def call(shared, kind: str, i: int):
    embedder, reranker, client = shared
    q = QUERIES[i]
    if kind == "embed_documents":
        return embedder.embed_documents(TEXTS[i: i + 1 + i % 4])
    if kind == "embed_queries":
        return embedder.embed_queries([q])
    if kind == "rerank":
        return reranker.score(q, TEXTS[i: i + 8])
    points = client.query_points("docs", query=models.Document(text=q, model="tiny-conc"),
                                 limit=5, rerank=kind == "query").points
    return np.array([[p.id, p.score] for p in points])


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.allclose(a, b, atol=1e-6, rtol=0)


def test_threads_share_one_embedder_reranker_and_client(shared):
    serial = {(k, i): call(shared, k, i) for k in KINDS for i in range(VARIANTS)}
    rng = random.Random(0)
    plans = [[(rng.choice(KINDS), rng.randrange(VARIANTS)) for _ in range(CALLS)]
             for _ in range(THREADS)]

    def worker(plan):
        return [same(call(shared, k, i), serial[(k, i)]) for k, i in plan]

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(worker, plan) for plan in plans]
        done, pending = wait(futures, timeout=TIMEOUT)
        assert not pending, f"{len(pending)} threads still running after {TIMEOUT}s: deadlock?"
    results = [ok for f in futures for ok in f.result()]
    TALLY.add("concurrency", f"{THREADS} threads x {CALLS} mixed embed / rerank / query calls",
              len(results), sum(results), len(results) - sum(results), "identical to serial")
    assert all(results)


async def test_async_client_under_concurrent_queries(shared):
    reranker = shared[1]
    client = AsyncQdrantClient(":memory:")
    await client.create_collection("docs", vectors_config=models.VectorParams(
        size=64, distance=models.Distance.COSINE))
    await client.upsert("docs", [models.PointStruct(id=i, payload={"text": t}, vector=models.
                        Document(text=t, model="tiny-conc")) for i, t in enumerate(TEXTS)])
    await client.set_reranker("docs", reranker, top_k=16)

    async def one(i: int):
        response = await client.query_points("docs", query=models.Document(
            text=QUERIES[i % VARIANTS], model="tiny-conc"), limit=5)
        return np.array([[p.id, p.score] for p in response.points])

    expected = [call(shared, "query", i) for i in range(VARIANTS)]
    got = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(ASYNC_QUERIES))),
                                 timeout=TIMEOUT)
    ok = [same(g, expected[i % VARIANTS]) for i, g in enumerate(got)]
    TALLY.add("concurrency", f"AsyncQdrantClient, {ASYNC_QUERIES} concurrent reranked queries",
              len(ok), sum(ok), len(ok) - sum(ok), "identical to the sync client")
    assert all(ok)
    await client.close()
