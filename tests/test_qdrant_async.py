"""embedrank.plugin.AsyncQdrantClient: same results as the sync client, models off the loop."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from qdrant_client import models
from qdrant_support import CORPUS, QUERY, TEXTS, brute_force, other_fingerprint_dir, points

from embedrank.errors import CollectionMismatchError
from embedrank.plugin import AsyncQdrantClient, Embedder, Reranker, register_embedder

ALL = list(range(len(CORPUS)))


@pytest.fixture(scope="module")
def embedder(embedder_dir):
    embedder = Embedder.load(embedder_dir)
    register_embedder("async-embedder", embedder)
    return embedder


@pytest.fixture(scope="module")
def reranker(reranker_dir):
    return Reranker.load(reranker_dir)


async def make(client, name="docs"):
    await client.create_collection(name, vectors_config=models.VectorParams(
        size=64, distance=models.Distance.COSINE))


def doc(text=QUERY):
    return models.Document(text=text, model="async-embedder")


async def test_async_upsert_and_reranked_query(embedder, reranker):
    client = AsyncQdrantClient(":memory:")
    await make(client)
    await client.upsert("docs", points("async-embedder"))
    stored = sorted(await client.retrieve("docs", ALL, with_vectors=True), key=lambda r: r.id)
    np.testing.assert_allclose([r.vector for r in stored], embedder.embed_documents(TEXTS),
                               atol=1e-6)
    await client.set_reranker("docs", reranker)
    hits = (await client.query_points("docs", query=doc(), limit=10)).points
    ids, scores = brute_force(embedder, reranker, QUERY, ALL, 100, 10)
    assert [h.id for h in hits] == ids
    np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-5)
    flt = models.Filter(must=[models.FieldCondition(key="topic",
                                                    match=models.MatchValue(value="tech"))])
    tech = [i for i, r in enumerate(CORPUS) if r["topic"] == "tech"]
    hits = (await client.query_points("docs", query=doc(), query_filter=flt, limit=3)).points
    assert [h.id for h in hits] == brute_force(embedder, reranker, QUERY, tech, 100, 3)[0]
    batch = await client.query_batch_points("docs", [models.QueryRequest(query=doc(), limit=10)])
    assert [h.id for h in batch[0].points] == ids
    plain = (await client.query_points("docs", query=doc(), limit=3, rerank=False)).points
    assert [h.id for h in plain] != ids[:3] or [h.score for h in plain] != scores[:3]
    await client.close()


async def test_model_calls_run_off_the_event_loop(embedder, reranker, monkeypatch):
    threads = []
    for obj, method in ((embedder, "embed_documents"), (embedder, "embed_queries"),
                        (reranker, "score")):
        original = getattr(obj, method)

        def spy(*args, _original=original, **kwargs):
            threads.append(threading.get_ident())
            return _original(*args, **kwargs)

        monkeypatch.setattr(obj, method, spy)
    client = AsyncQdrantClient(":memory:")
    await make(client)
    await client.set_reranker("docs", reranker)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await client.upsert("docs", points("async-embedder"))
    await client.query_points("docs", query=doc(), limit=5)
    task.cancel()
    loop_thread = threading.get_ident()
    assert len(threads) == 3 and loop_thread not in threads
    assert ticks > 0
    await client.close()


async def test_async_upload_points_update_vectors(embedder):
    client = AsyncQdrantClient(":memory:")
    await make(client)
    client.upload_points("docs", iter(points("async-embedder")))
    await client.update_vectors("docs", [models.PointVectors(id=0, vector=doc("volcanoes"))])
    await client.batch_update_points("docs", [models.UpdateVectorsOperation(
        update_vectors=models.UpdateVectors(points=[models.PointVectors(id=1,
                                                                        vector=doc("lava"))]))])
    stored = sorted(await client.retrieve("docs", ALL, with_vectors=True), key=lambda r: r.id)
    expected = embedder.embed_documents(["volcanoes", "lava"] + TEXTS[2:])
    np.testing.assert_allclose([r.vector for r in stored], expected, atol=1e-6)
    await client.close()


async def test_async_refusal_survives_reopen(tmp_path, embedder, embedder_dir):
    register_embedder("async-other", other_fingerprint_dir(embedder_dir, tmp_path / "other"))
    client = AsyncQdrantClient(path=str(tmp_path / "db"))
    await make(client)
    await client.upsert("docs", points("async-embedder", CORPUS[:3]))
    await client.close()
    client = AsyncQdrantClient(path=str(tmp_path / "db"))
    with pytest.raises(CollectionMismatchError):
        await client.upsert("docs", [models.PointStruct(
            id=9, vector=models.Document(text="x", model="async-other"))])
    assert (await client.count("docs")).count == 3
    await client.close()
