"""The sync and async clients run one core: the same inputs give the same results, the same
refusals (type and message) and the same stored points; lists are checked whole, then embedded
in chunks, by both."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import models
from qdrant_support import CORPUS, QUERY, TEXTS, make_collection, open_client, other_fingerprint_dir

from embedrank.errors import InputError
from embedrank.plugin import Embedder, Reranker, register_embedder
from embedrank.plugin.core import UPLOAD_EMBED_BATCH


@pytest.fixture(scope="module")
def embedder(embedder_dir):
    embedder = Embedder.load(embedder_dir)
    register_embedder("par", embedder)
    register_embedder("par32", Embedder.load(embedder_dir, dim=32))
    return embedder


@pytest.fixture(scope="module")
def reranker(reranker_dir):
    return Reranker.load(reranker_dir)


@pytest.fixture(scope="module")
def other(embedder_dir, tmp_path_factory):
    register_embedder("par-other", other_fingerprint_dir(embedder_dir,
                                                         tmp_path_factory.mktemp("o") / "other"))
    return "par-other"


def doc(text=QUERY, model="par"):
    return models.Document(text=text, model=model)


def point(i, text, model="par"):
    return models.PointStruct(id=i, vector=doc(text, model), payload={"text": text, "n": i})


def hits(points):
    return [(p.id, round(p.score, 5), p.payload) for p in points]


def scenarios(reranker, other):
    """name -> fn(client) returning something comparable (or raising)."""
    good = [point(100 + i, f"passage {i} about tides") for i in range(3)]
    return {
        "reranked query": lambda c: (c.set_reranker("docs", reranker, top_k=5), hits(
            c.query_points("docs", query=doc(), limit=3).points)),
        "first stage with a filter": lambda c: hits(c.query_points(
            "docs", doc(), limit=4, rerank=False, with_payload=["n"],
            query_filter=models.Filter(must_not=[models.HasIdCondition(has_id=[0])])).points),
        "batch of queries": lambda c: [hits(r.points) for r in c.query_batch_points("docs", [
            models.QueryRequest(query=doc(), limit=2, with_payload=True),
            models.QueryRequest(query=doc("Who painted it?"), limit=3)])],
        "groups": lambda c: [(g.id, [h.id for h in g.hits]) for g in c.query_points_groups(
            "docs", "n", query=doc(), limit=3, group_size=1).groups],
        "upsert, a NUL byte": lambda c: c.upsert("docs", good + [point(9, "a\x00b")]),
        "upsert, another fingerprint": lambda c: c.upsert("docs", [point(9, "x", other)]),
        "upsert, a 32-d model": lambda c: c.upsert("docs", [point(9, "x", "par32")]),
        "upsert, two embedders in one request": lambda c: (make_collection(c, "fresh"), c.upsert(
            "fresh", [point(1, "x"), point(2, "y", other)])),
        "upload_points list, bad last item": lambda c: c.upload_points(
            "docs", good + [point(9, " ")]),
        "upload_points iterator, bad item": lambda c: c.upload_points(
            "docs", iter(good + [point(9, " ")]), batch_size=2),
        "upload_points, 70 points": lambda c: c.upload_points(
            "docs", [point(200 + i, f"line {i} on salt") for i in range(70)]),
        "upload_collection": lambda c: c.upload_collection(
            "docs", [doc(t) for t in TEXTS[:3]], ids=[300, 301, 302]),
        "update_vectors": lambda c: c.update_vectors("docs", [models.PointVectors(
            id=1, vector=doc("volcanoes"))]),
        "batch_update_points, another fingerprint": lambda c: c.batch_update_points("docs", [
            models.UpsertOperation(upsert=models.PointsList(points=[point(9, "x", other)]))]),
        "query, another fingerprint": lambda c: c.query_points("docs", doc(model=other)),
        "query, a bad prefetch": lambda c: c.query_points("docs", [0.1] * 64, prefetch=(
            models.Prefetch(query=doc("\ud800")))),
        "query, rerank='yes'": lambda c: c.query_points("docs", doc(), rerank="yes"),
        "query, missing collection": lambda c: c.query_points("nope", doc()),
        "set_instruction, no record yet": lambda c: (make_collection(c, "empty"),
                                                      c.set_instruction("empty", "Find")),
        "set_reranker, top_k=0": lambda c: c.set_reranker("docs", reranker, top_k=0),
        "check_embedder, another fingerprint": lambda c: c.check_embedder("docs", other),
        "models recorded": lambda c: c.collection_models("docs"),
    }


def outcome(fn, client):
    try:
        return "ok", fn(client)
    except Exception as exc:  # noqa: BLE001 - the refusal itself is compared
        return "refused", type(exc).__name__, str(exc)


def stored(client, name="docs"):
    records, _ = client.scroll(name, limit=1000, with_payload=True, with_vectors=True)
    return {r.id: (np.round(r.vector, 6).tolist(), r.payload) for r in records}


def test_both_clients_answer_and_refuse_alike(embedder, reranker, other):
    results = {}
    for kind in ("sync", "async"):
        client = open_client(kind, ":memory:")
        make_collection(client)
        client.upsert("docs", [point(i, r["text"]) for i, r in enumerate(CORPUS[:8])])
        results[kind] = {name: (outcome(fn, client), client.count("docs").count)
                         for name, fn in scenarios(reranker, other).items()}
        results[kind]["stored"] = stored(client)
        client.close()
    for name in results["sync"]:
        assert results["sync"][name] == results["async"][name], name
    answered = {n for n, v in results["sync"].items() if n != "stored" and v[0][0] == "ok"}
    assert answered == {"reranked query", "first stage with a filter", "batch of queries", "groups",
                        "upload_points, 70 points", "upload_collection", "update_vectors",
                        "models recorded"}
    counts = [v[1] for n, v in results["sync"].items() if n != "stored"]
    for (name, value), before in zip(list(results["sync"].items())[1:-1], counts, strict=False):
        if value[0][0] == "refused":
            assert value[1] == before, f"{name} wrote something before it was refused"
    assert len(results["sync"]["stored"]) == 8 + 70 + 3


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_lists_are_checked_whole_then_embedded_in_chunks(embedder, kind, monkeypatch):
    sizes = []
    original = embedder.embed_documents

    def spy(texts, **kwargs):
        sizes.append(len(texts))
        return original(texts, **kwargs)

    monkeypatch.setattr(embedder, "embed_documents", spy)
    client = open_client(kind, ":memory:")
    make_collection(client)
    n = 2 * UPLOAD_EMBED_BATCH + 2
    batch = [point(i, f"note {i} about maps") for i in range(n)]
    with pytest.raises(InputError, match=f"point {n}: "):
        client.upload_points("docs", batch + [point(n, "")])
    assert sizes == [] and client.count("docs").count == 0  # refused before any embedding
    client.upload_points("docs", batch, batch_size=50)
    assert sizes == [UPLOAD_EMBED_BATCH, UPLOAD_EMBED_BATCH, 2]
    got = stored(client)
    np.testing.assert_allclose([got[i][0] for i in range(n)], original(
        [f"note {i} about maps" for i in range(n)]), atol=1e-5)
    client.close()
