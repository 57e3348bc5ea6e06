"""Every qdrant-client write path, named vectors, prefetch, Matryoshka, and model records."""

from __future__ import annotations

import os

import numpy as np
import pytest
from qdrant_client import models
from qdrant_support import (
    CORPUS,
    QUERY,
    TEXTS,
    brute_force,
    first_stage,
    make_collection,
    open_client,
    other_fingerprint_dir,
    points,
)

from embedrank.errors import CollectionMismatchError
from embedrank.plugin import Embedder, QdrantClient, Reranker, register_embedder

ALL = list(range(len(CORPUS)))


@pytest.fixture(scope="module")
def embedder(embedder_dir):
    return Embedder.load(embedder_dir)


@pytest.fixture(scope="module")
def small(embedder_dir):
    return Embedder.load(embedder_dir, dim=32)


@pytest.fixture(scope="module")
def reranker(reranker_dir):
    return Reranker.load(reranker_dir)


@pytest.fixture(scope="module", autouse=True)
def names(embedder, small):
    register_embedder("e64", embedder)
    register_embedder("e32", small)


@pytest.fixture(params=["sync", "async"])
def kind(request):
    return request.param


@pytest.fixture
def client(kind):
    client = open_client(kind, ":memory:")
    yield client
    client.close()


def vectors(client, name="docs", using=None):
    stored = sorted(client.retrieve(name, ALL, with_vectors=True), key=lambda r: r.id)
    return np.array([r.vector if using is None else r.vector[using] for r in stored])


def test_issue_snippet_runs_as_written(tmp_path, monkeypatch, embedder_dir, reranker_dir,
                                       embedder, reranker):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    os.symlink(embedder_dir, "models/embedder")
    os.symlink(reranker_dir, "models/reranker")
    text = CORPUS[3]["text"]
    # --- the snippet from the issue, with size=64 for the tiny test model
    from qdrant_client import models  # noqa: I001
    from embedrank.plugin import register_embedder

    register_embedder("docs-embedder", "models/embedder")   # a model name for models.Document
    client = QdrantClient(path="./db")                      # drop-in subclass
    client.create_collection("docs", vectors_config=models.VectorParams(size=64, distance=models.Distance.COSINE))  # noqa: E501
    client.set_reranker("docs", "models/reranker", text_field="text", top_k=100)
    client.upsert("docs", points=[models.PointStruct(id=1, vector=models.Document(text=text, model="docs-embedder"), payload={"text": text})])  # noqa: E501
    hits = client.query_points("docs", query=models.Document(text="a question", model="docs-embedder"), limit=10).points  # reranked  # noqa: E501
    # ---
    assert [h.id for h in hits] == [1]
    assert hits[0].score == pytest.approx(float(reranker.score("a question", [text])[0]), rel=1e-5)
    client.close()


def test_matryoshka_dim(client, small, embedder):
    assert client.get_embedding_size("e32") == 32
    make_collection(client, size=client.get_embedding_size("e32"))
    client.upsert("docs", points("e32"))
    got = vectors(client)
    assert got.shape == (30, 32)
    full = embedder.embed_documents(TEXTS)[:, :32]
    np.testing.assert_allclose(got, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-6)
    hits = client.query_points("docs", query=models.Document(text=QUERY, model="e32"),
                               limit=30).points
    cos = first_stage(small, QUERY)
    np.testing.assert_allclose([{h.id: h.score for h in hits}[i] for i in ALL], cos, atol=1e-5)


def test_named_vectors_and_prefetch(client, embedder, small, reranker):
    client.create_collection("docs", vectors_config={
        "full": models.VectorParams(size=64, distance=models.Distance.COSINE),
        "small": models.VectorParams(size=32, distance=models.Distance.COSINE)})
    client.upsert("docs", [models.PointStruct(
        id=i, payload=row, vector={"full": models.Document(text=row["text"], model="e64"),
                                   "small": models.Document(text=row["text"], model="e32")})
        for i, row in enumerate(CORPUS)])
    np.testing.assert_allclose(vectors(client, using="full"), embedder.embed_documents(TEXTS),
                               atol=1e-6)
    np.testing.assert_allclose(vectors(client, using="small"), small.embed_documents(TEXTS),
                               atol=1e-6)
    records = client.collection_models("docs")
    assert (records["full"].dim, records["small"].dim) == (64, 32)
    client.create_collection("named", vectors_config={
        "small": models.VectorParams(size=32, distance=models.Distance.COSINE)})
    client.upload_collection("named", [{"small": models.Document(text=t, model="e32")}
                                       for t in TEXTS], ids=ALL)
    np.testing.assert_allclose(vectors(client, "named", using="small"),
                               small.embed_documents(TEXTS), atol=1e-6)

    # prefetch 8 on the small vector, then the full vector reorders them, then rerank
    cos_small = first_stage(small, QUERY)
    pre = [int(i) for i in np.argsort(-cos_small)[:8]]
    prefetch = models.Prefetch(query=models.Document(text=QUERY, model="e32"), using="small",
                               limit=8)
    query = models.Document(text=QUERY, model="e64")
    plain = client.query_points("docs", query=query, using="full", prefetch=prefetch,
                                limit=8, rerank=False).points
    cos_full = first_stage(embedder, QUERY)
    assert [h.id for h in plain] == sorted(pre, key=lambda i: -cos_full[i])
    client.set_reranker("docs", reranker)
    hits = client.query_points("docs", query=query, using="full", prefetch=prefetch,
                               limit=5).points
    assert [h.id for h in hits] == brute_force(embedder, reranker, QUERY, pre, 100, 5)[0]

    # a fusion query is not a text query: prefetch documents embedded, no rerank
    fused = client.query_points("docs", query=models.FusionQuery(fusion=models.Fusion.RRF),
                                prefetch=[prefetch, models.Prefetch(query=query, using="full")],
                                limit=3).points
    assert len(fused) == 3 and all(h.score > 0 for h in fused)
    groups = client.query_points_groups("docs", "topic", query=query, using="full", limit=2,
                                        group_size=1).groups
    assert len(groups) == 2


def test_upload_points_generator_and_upload_collection(client, embedder):
    make_collection(client)
    client.upload_points("docs", (p for p in points("e64")), batch_size=7)
    np.testing.assert_allclose(vectors(client), embedder.embed_documents(TEXTS), atol=1e-6)
    make_collection(client, "cols")
    client.upload_collection("cols", [models.Document(text=t, model="e64") for t in TEXTS],
                             payload=CORPUS, ids=ALL, batch_size=16)
    np.testing.assert_allclose(vectors(client, "cols"), embedder.embed_documents(TEXTS),
                               atol=1e-6)
    assert client.collection_models("cols")[""].embedder == "e64"


def test_update_vectors_and_batch_update_points(client, embedder):
    make_collection(client)
    client.upsert("docs", points("e64"))
    new = "A completely different passage about volcanoes."
    client.update_vectors("docs", [models.PointVectors(
        id=0, vector=models.Document(text=new, model="e64"))])
    got = client.retrieve("docs", [0], with_vectors=True)[0].vector
    np.testing.assert_allclose(got, embedder.embed_documents([new])[0], atol=1e-6)
    client.batch_update_points("docs", [
        models.UpsertOperation(upsert=models.PointsList(points=[models.PointStruct(
            id=100, vector=models.Document(text=new, model="e64"), payload={"text": new})])),
        models.UpdateVectorsOperation(update_vectors=models.UpdateVectors(points=[
            models.PointVectors(id=1, vector=models.Document(text=new, model="e64"))])),
    ])
    got = client.retrieve("docs", [1, 100], with_vectors=True)
    for record in got:
        np.testing.assert_allclose(record.vector, embedder.embed_documents([new])[0], atol=1e-6)


def test_mismatched_embedder_refused_before_writing_even_after_reopen(tmp_path, embedder_dir,
                                                                    kind):
    other = other_fingerprint_dir(embedder_dir, tmp_path / "other")
    register_embedder("other", other)
    client = open_client(kind, path=str(tmp_path / "db"))
    make_collection(client)
    client.upsert("docs", points("e64", CORPUS[:5]))
    client.close()

    client = open_client(kind, path=str(tmp_path / "db"))
    assert client.collection_models("docs")[""].embedder == "e64"
    stray = [models.PointStruct(id=50, vector=models.Document(text="x", model="other"))]
    with pytest.raises(CollectionMismatchError, match="fingerprint"):
        client.upsert("docs", stray)
    with pytest.raises(CollectionMismatchError, match="fingerprint"):
        client.upload_points("docs", iter(stray))
    with pytest.raises(CollectionMismatchError, match="fingerprint"):
        client.query_points("docs", query=models.Document(text="x", model="other"))
    with pytest.raises(CollectionMismatchError, match="32-d"):
        client.upsert("docs", [models.PointStruct(
            id=51, vector=models.Document(text="x", model="e32"))])
    # the refused writes left nothing behind, a write mixing models is refused whole
    mixed = [models.PointStruct(id=60, vector=models.Document(text="y", model="e64"))] + stray
    with pytest.raises(CollectionMismatchError):
        client.upsert("docs", mixed)
    assert client.count("docs").count == 5
    client.upsert("docs", points("e64", CORPUS[:6]))  # same fingerprint under any name is fine
    assert client.count("docs").count == 6
    client.close()


@pytest.mark.parametrize("size,advice", [
    (1024, "its Matryoshka sizes are 32..64, so create the collection with a size in that range"),
    (48, "register it with dim=48 (Matryoshka) or use a collection of size 64"),
])
def test_a_size_mismatch_advises_only_what_works(embedder, size, advice):
    register_embedder("e64-advice", embedder)
    client = QdrantClient(":memory:")
    client.create_collection("sized", vectors_config=models.VectorParams(
        size=size, distance=models.Distance.COSINE))
    doc = models.Document(text="a passage", model="e64-advice")
    with pytest.raises(CollectionMismatchError) as err:
        client.upsert("sized", points=[models.PointStruct(id=1, vector=doc)])
    assert advice in str(err.value) and f"holds {size}-d vectors" in str(err.value)
    assert "dim=1024" not in str(err.value)
