"""Concurrency: one Embedder, Reranker and client shared by 16 threads give the serial results,
without deadlock; the async client answers many concurrent queries the same way; writer and
reader threads share one local-mode client and every vector they see is right.

Sizes: 16 threads x 30 calls, 50 concurrent async queries, 480 / 160 points written by writer
threads (in memory / on disk) in CI; 16 x 500, 200, 4,800 / 800 with
``EMBEDRANK_RELIABILITY_FULL=1``.
"""

from __future__ import annotations

import asyncio
import random
import threading
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


LOCAL_POINTS = {"memory": size(480, 4_800), "disk": size(160, 800)}
WRITERS = READERS = 4


def writer(client, ids: list[int], texts: list[str], k: int) -> None:
    """Writes its ids in batches of 8, through upsert, upload_points and batch_update_points."""
    for n, start in enumerate(range(0, len(ids), 8)):
        batch = [models.PointStruct(id=i, payload={"text": texts[i]}, vector=models.Document(
            text=texts[i], model="tiny-conc")) for i in ids[start: start + 8]]
        how = (n + k) % 3
        if how == 0:
            client.upsert("local", batch)
        elif how == 1:
            client.upload_points("local", batch, batch_size=3)
        else:
            client.batch_update_points("local", [models.UpsertOperation(
                upsert=models.PointsList(points=batch))])


def reader(client, expected: np.ndarray, stop: threading.Event, seed: int) -> tuple[int, int]:
    """Reads while the writers write; (vectors seen, vectors right). A wrong, torn or repeated
    point, or a count that goes down, counts as wrong."""
    rng, seen, right, last_count = random.Random(seed), 0, 0, 0
    while not stop.is_set():
        ids = rng.sample(range(len(expected)), 8)
        got = client.retrieve("local", ids, with_vectors=True)
        hits = client.query_points("local", query=expected[ids[0]].tolist(), limit=5,
                                   with_vectors=True, rerank=False).points
        page, _ = client.scroll("local", limit=50, with_vectors=True)
        count = client.count("local").count
        records = list(got) + list(hits) + list(page)
        seen += len(records) + 1
        right += sum(np.allclose(r.vector, expected[r.id], atol=1e-5) for r in records)
        right += count >= last_count and len({r.id for r in page}) == len(page)
        last_count = count
    return seen, right


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_local_mode_writers_and_readers_share_one_client(shared, tmp_path, where):
    n = LOCAL_POINTS[where]
    texts = [f"note {i} on {TEXTS[i % len(TEXTS)].split()[-1]}" for i in range(n)]
    expected = shared[0].embed_documents(texts)
    client = QdrantClient(":memory:") if where == "memory" else QdrantClient(
        path=str(tmp_path / "db"))
    client.create_collection("local", vectors_config=models.VectorParams(
        size=64, distance=models.Distance.COSINE))
    client.upsert("local", [models.PointStruct(id=0, payload={"text": texts[0]},
                                               vector=expected[0].tolist())])
    stop = threading.Event()
    with ThreadPoolExecutor(WRITERS + READERS) as pool:
        readers = [pool.submit(reader, client, expected, stop, k) for k in range(READERS)]
        writers = [pool.submit(writer, client, list(range(k, n, WRITERS)), texts, k)
                   for k in range(WRITERS)]
        done, pending = wait(writers, timeout=TIMEOUT)
        stop.set()
        assert not pending, f"writers still running after {TIMEOUT}s: deadlock?"
        for future in writers:
            future.result()
        seen, right = map(sum, zip(*(f.result() for f in readers), strict=True))
    records, _ = client.scroll("local", limit=n + 1, with_vectors=True)
    final = sum(np.allclose(r.vector, expected[r.id], atol=1e-5) for r in records)
    client.close()
    TALLY.add("concurrency", f"local mode ({where}): {WRITERS} writer + {READERS} reader threads, "
              f"one client, {n} points", seen + n, right + final, seen + n - right - final,
              "every vector read is right")
    assert len(records) == n and final == n and right == seen
