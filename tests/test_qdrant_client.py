"""embedrank.plugin.QdrantClient and AsyncQdrantClient in memory: embedding, reranking,
filters, instructions (every test runs on both clients)."""

from __future__ import annotations

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
    points,
)

from embedrank.errors import InputError
from embedrank.plugin import Embedder, Reranker, register_embedder

ALL = list(range(len(CORPUS)))
INSTRUCTION = "Given a trivia question, find the passage that states the fact"


@pytest.fixture(scope="module")
def embedder(embedder_dir):
    return Embedder.load(embedder_dir)


@pytest.fixture(scope="module")
def reranker(reranker_dir):
    return Reranker.load(reranker_dir)


@pytest.fixture(scope="module")
def model(embedder):
    register_embedder("test-embedder", embedder)
    return "test-embedder"


@pytest.fixture(params=["sync", "async"])
def kind(request):
    return request.param


@pytest.fixture
def client(model, reranker, kind):
    client = open_client(kind, ":memory:")
    make_collection(client)
    client.upsert("docs", points(model))
    client.set_reranker("docs", reranker)
    yield client
    client.close()


def doc(text=QUERY, **options):
    return models.Document(text=text, model="test-embedder", options=options or None)


def ids_scores(hits):
    return [h.id for h in hits], [h.score for h in hits]


def test_stored_vectors_equal_embed_documents(client, embedder):
    stored = client.retrieve("docs", ALL, with_vectors=True)
    got = np.array([r.vector for r in sorted(stored, key=lambda r: r.id)])
    np.testing.assert_allclose(got, embedder.embed_documents(TEXTS), atol=1e-6)


def test_first_stage_uses_embed_queries(client, embedder):
    hits = client.query_points("docs", query=doc(), limit=30, rerank=False).points
    cos = first_stage(embedder, QUERY)
    assert [h.id for h in hits] == list(np.argsort(-cos, kind="stable"))
    np.testing.assert_allclose([h.score for h in hits], np.sort(cos)[::-1], atol=1e-5)


def test_reranked_top10_equals_brute_force(client, embedder, reranker):
    hits = client.query_points("docs", query=doc(), limit=10).points
    ids, scores = brute_force(embedder, reranker, QUERY, ALL, top_k=100, limit=10)
    assert [h.id for h in hits] == ids
    np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-5)
    assert all(0.0 < s < 1.0 for s in scores)
    assert hits[0].payload == CORPUS[ids[0]]


def test_top_k_and_offset(client, embedder, reranker):
    client.set_reranker("docs", reranker, top_k=4)
    hits = client.query_points("docs", query=doc(), limit=3, offset=2).points
    ids, scores = brute_force(embedder, reranker, QUERY, ALL, top_k=4, limit=3, offset=2)
    assert ids_scores(hits)[0] == ids  # 5 candidates: max(top_k, offset + limit)
    np.testing.assert_allclose(ids_scores(hits)[1], scores, rtol=1e-5)


def test_filter_is_honoured(client, embedder, reranker):
    biology = [i for i, r in enumerate(CORPUS) if r["topic"] == "biology"]
    flt = models.Filter(must=[models.FieldCondition(key="topic",
                                                    match=models.MatchValue(value="biology"))])
    hits = client.query_points("docs", query=doc(), query_filter=flt, limit=4).points
    ids, scores = brute_force(embedder, reranker, QUERY, biology, top_k=100, limit=4)
    assert [h.id for h in hits] == ids
    np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-5)


def test_score_threshold_applies_to_first_stage(client, embedder, reranker):
    cos = first_stage(embedder, QUERY)
    threshold = float(np.sort(cos)[::-1][5]) - 1e-6  # six candidates pass
    passing = [i for i in ALL if cos[i] >= threshold]
    assert len(passing) == 6
    hits = client.query_points("docs", query=doc(), score_threshold=threshold, limit=10).points
    ids, _ = brute_force(embedder, reranker, QUERY, passing, top_k=100, limit=10)
    assert [h.id for h in hits] == ids


def test_rerank_false_returns_first_stage(client, embedder):
    reranked = client.query_points("docs", query=doc(), limit=5).points
    plain = client.query_points("docs", query=doc(), limit=5, rerank=False).points
    cos = first_stage(embedder, QUERY)
    assert [h.id for h in plain] == list(np.argsort(-cos)[:5])
    assert [h.id for h in reranked] != [h.id for h in plain] or \
        [h.score for h in reranked] != [h.score for h in plain]


def test_payload_selection_after_rerank(client):
    hits = client.query_points("docs", query=doc(), limit=3, with_payload=False).points
    assert all(h.payload is None for h in hits)
    hits = client.query_points("docs", query=doc(), limit=3, with_payload=["topic"]).points
    assert all(set(h.payload) == {"topic"} for h in hits)
    assert [h.payload["topic"] for h in hits] == [CORPUS[h.id]["topic"] for h in hits]


def test_missing_text_field_is_a_clear_error(client, model):
    client.upsert("docs", [models.PointStruct(id=99, vector=doc("no text stored"),
                                              payload={"title": "x"})])
    with pytest.raises(InputError, match=r"point 99 .*'text' is missing.*rerank=False"):
        client.query_points("docs", query=doc(), limit=5)
    assert client.query_points("docs", query=doc(), limit=5, rerank=False).points


def test_text_field_option(client, reranker, embedder):
    client.upsert("docs", [models.PointStruct(id=i, vector=doc(r["text"]),
                                              payload={"body": r["text"]})
                           for i, r in enumerate(CORPUS)])
    client.set_reranker("docs", reranker, text_field="body")
    hits = client.query_points("docs", query=doc(), limit=5).points
    assert [h.id for h in hits] == brute_force(embedder, reranker, QUERY, ALL, 100, 5)[0]


def test_per_query_instruction_changes_the_query_vector(client, embedder):
    default = client.query_points("docs", query=doc(), limit=30, rerank=False).points
    custom = client.query_points("docs", query=doc(instruction=INSTRUCTION), limit=30,
                                 rerank=False).points
    expected = first_stage(embedder, QUERY, instruction=INSTRUCTION)
    got = {h.id: h.score for h in custom}
    np.testing.assert_allclose([got[i] for i in ALL], expected, atol=1e-5)
    assert not np.allclose([h.score for h in default], [h.score for h in custom])


def test_per_query_instruction_reaches_the_reranker(client, embedder, reranker):
    hits = client.query_points("docs", query=doc(instruction=INSTRUCTION), limit=5).points
    ids, scores = brute_force(embedder, reranker, QUERY, ALL, 100, 5, instruction=INSTRUCTION,
                              rerank_instruction=INSTRUCTION)
    assert [h.id for h in hits] == ids
    np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-5)


def test_set_reranker_instruction(client, embedder, reranker):
    client.set_reranker("docs", reranker, instruction=INSTRUCTION)
    hits = client.query_points("docs", query=doc(), limit=5).points
    ids, scores = brute_force(embedder, reranker, QUERY, ALL, 100, 5,
                              rerank_instruction=INSTRUCTION)
    np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-5)
    assert [h.id for h in hits] == ids


def test_collection_default_instruction(embedder, kind):
    register_embedder("instructed", embedder, instruction=INSTRUCTION)
    client = open_client(kind, ":memory:")
    make_collection(client, "c")
    client.upsert("c", points("instructed"))
    assert client.collection_models("c")[""].instruction == INSTRUCTION
    query = models.Document(text=QUERY, model="instructed")
    hits = client.query_points("c", query=query, limit=30).points
    expected = first_stage(embedder, QUERY, instruction=INSTRUCTION)
    np.testing.assert_allclose([{h.id: h.score for h in hits}[i] for i in ALL], expected,
                               atol=1e-5)
    client.set_instruction("c", "Find it")
    hits = client.query_points("c", query=query, limit=30).points
    expected = first_stage(embedder, QUERY, instruction="Find it")
    np.testing.assert_allclose([{h.id: h.score for h in hits}[i] for i in ALL], expected,
                               atol=1e-5)


def test_query_batch_points(client, embedder, reranker):
    requests = [models.QueryRequest(query=doc(), limit=4, with_payload=True),
                models.QueryRequest(query=doc("Who invented the printing press?"), limit=3),
                models.QueryRequest(query=models.NearestQuery(nearest=doc()), limit=2)]
    out = client.query_batch_points("docs", requests)
    assert [h.id for h in out[0].points] == brute_force(embedder, reranker, QUERY, ALL, 100, 4)[0]
    ids, scores = brute_force(embedder, reranker, "Who invented the printing press?", ALL, 100, 3)
    assert [h.id for h in out[1].points] == ids
    assert all(h.payload is None for h in out[1].points)  # QueryRequest's default
    np.testing.assert_allclose([h.score for h in out[1].points], scores, rtol=1e-5)
    assert [h.id for h in out[2].points] == [h.id for h in out[0].points][:2]
    plain = client.query_batch_points("docs", requests[:1], rerank=False)
    cos = first_stage(embedder, QUERY)
    assert [h.id for h in plain[0].points] == list(np.argsort(-cos)[:4])
