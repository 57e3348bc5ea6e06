"""`embedrank serve --qdrant URL`: the REST proxy forwards everything unchanged, except text
queries on collections with a stored reranker, which it answers as the Python client does.

Upstream is a stand-in Qdrant (tests/serve_support.py: qdrant-client local mode behind Qdrant's
REST routes); a live Qdrant server was not run here. The collection records its reranker at a
copy of the served directory: the server finds its own copy by fingerprint.
"""

from __future__ import annotations

import json
import shutil

import pytest
import qdrant_client
from qdrant_client import models
from qdrant_support import CORPUS, QUERY, brute_force, make_collection, points
from serve_support import StandInQdrant, running

from embedrank.plugin import QdrantClient
from embedrank.runtime import Embedder, Reranker
from embedrank.serve import ModelSet, ServeOptions, create_app
from embedrank.serve.models import ServedEmbedder, ServedReranker

ALL = list(range(len(CORPUS)))
MODEL = "proxy-embedder"
TOP_K = 12


@pytest.fixture(scope="module")
def embedder(embedder_dir):
    return Embedder.load(embedder_dir)


@pytest.fixture(scope="module")
def reranker(reranker_dir):
    return Reranker.load(reranker_dir)


@pytest.fixture(scope="module")
def served(embedder, reranker):
    return ModelSet.registered([ServedEmbedder(MODEL, embedder)],
                               [ServedReranker("proxy-reranker", reranker)])


@pytest.fixture(scope="module")
def elsewhere(reranker_dir, tmp_path_factory):
    """The reranker directory as a client on another machine has it: another path."""
    copy = tmp_path_factory.mktemp("client") / "reranker"
    shutil.copytree(reranker_dir, copy)
    return copy


@pytest.fixture
def local(served, elsewhere):
    client = QdrantClient(":memory:")
    for name in ("docs", "plain"):
        make_collection(client, name)
        client.upsert(name, points(MODEL))
    client.set_reranker("docs", str(elsewhere), top_k=TOP_K)  # stored in the collection
    yield client
    client.close()


@pytest.fixture
def qdrant(local):
    return StandInQdrant(local)


@pytest.fixture
def app(served, qdrant):
    return create_app(ServeOptions(qdrant="http://qdrant:6333"), served, upstream=qdrant.transport)


def text(query: str = QUERY, **options) -> dict:
    return {"text": query, "model": MODEL, **({"options": options} if options else {})}


def pairs(points_json) -> list[tuple]:
    return [(p["id"], p["score"]) for p in points_json]


async def test_reranked_top10_equals_brute_force_and_the_python_client(app, qdrant, local, embedder,
                                                                       reranker):
    body = {"query": {"nearest": text()}, "limit": 10, "with_payload": True}
    async with running(app) as client:
        response = await client.post("/collections/docs/points/query", json=body,
                                     headers={"api-key": "secret"})
    assert response.status_code == 200
    data = response.json()
    assert data["status"] == "ok" and set(data["result"]) == {"points"}
    got = data["result"]["points"]
    ids, scores = brute_force(embedder, reranker, QUERY, ALL, TOP_K, 10)
    assert [p["id"] for p in got] == ids
    assert [p["score"] for p in got] == pytest.approx(scores, abs=1e-6)
    assert all(p["payload"]["text"] == CORPUS[p["id"]]["text"] for p in got)
    python = local.query_points("docs", query=models.Document(**text()), limit=10).points
    assert pairs(got) == [(p.id, p.score) for p in python]  # the same functions: the same bits
    # what Qdrant saw: the collection read, then top_k candidates for the embedded query
    assert [(s["method"], s["path"]) for s in qdrant.seen] == [
        ("GET", "/collections/docs"), ("GET", "/collections/docs"),
        ("POST", "/collections/docs/points/query")]
    assert {s["headers"]["api-key"] for s in qdrant.seen} == {"secret"}
    sent = json.loads(qdrant.seen[-1]["body"])
    assert sent["limit"] == TOP_K and sent["with_payload"] is True and not sent.get("offset")
    vector = embedder.embed_queries([QUERY])[0].tolist()
    assert sent["query"]["nearest"] == pytest.approx(vector, abs=1e-6)


async def test_offset_payload_selection_and_the_bare_document_form(app, qdrant, embedder, reranker):
    async with running(app) as client:
        paged = (await client.post("/collections/docs/points/query", json={
            "query": text(), "limit": 4, "offset": 3})).json()["result"]["points"]
        chosen = (await client.post("/collections/docs/points/query", json={
            "query": {"nearest": text()}, "limit": 3, "with_payload": ["topic"]})).json()
    assert [p["id"] for p in paged] == brute_force(embedder, reranker, QUERY, ALL, TOP_K, 4, 3)[0]
    assert all("payload" not in p for p in paged)  # with_payload defaults to false in REST
    points = chosen["result"]["points"]
    assert [p["id"] for p in points] == brute_force(embedder, reranker, QUERY, ALL, TOP_K, 3)[0]
    assert [p["payload"] for p in points] == [{"topic": CORPUS[p["id"]]["topic"]} for p in points]
    reread = qdrant.seen[-1]
    assert reread["path"] == "/collections/docs/points"
    sent = json.loads(reread["body"])
    assert (sent["ids"], sent["with_payload"]) == ([p["id"] for p in points], ["topic"])


async def test_query_batch_reranks_text_queries_only(app, qdrant, embedder, reranker):
    vector = embedder.embed_queries(["Who invented the printing press?"])[0].tolist()
    body = {"searches": [{"query": {"nearest": text()}, "limit": 5, "with_payload": True},
                         {"query": vector, "limit": 3}]}
    async with running(app) as client:
        response = await client.post("/collections/docs/points/query/batch", json=body)
    first, second = response.json()["result"]
    ids, scores = brute_force(embedder, reranker, QUERY, ALL, TOP_K, 5)
    assert [p["id"] for p in first["points"]] == ids
    assert [p["score"] for p in first["points"]] == pytest.approx(scores, abs=1e-6)
    sent = json.loads(qdrant.seen[-1]["body"])["searches"]
    assert sent[0]["limit"] == TOP_K and sent[1]["limit"] == 3
    assert sent[1]["query"] == {"nearest": vector}  # as qdrant-client writes a vector query
    cosine = embedder.embed_documents([r["text"] for r in CORPUS]) @ vector
    assert [p["id"] for p in second["points"]] == sorted(ALL, key=lambda i: -cosine[i])[:3]


async def test_everything_else_is_forwarded_unchanged(app, qdrant):
    raw = b'{"points": [{"id": 1, "vector": {"text": "x", "model": "proxy-embedder"}}]}'
    unchanged = json.dumps({"query": {"nearest": text()}, "limit": 2}).encode()
    async with running(app) as client:
        put = await client.put("/collections/other/points?wait=true", content=raw,
                               headers={"api-key": "k1", "content-type": "application/json"})
        listed = await client.get("/collections", headers={"authorization": "Bearer jwt"})
        plain = await client.post("/collections/plain/points/query", content=unchanged,
                                  headers={"api-key": "k1"})
    assert put.status_code == 201 and put.headers["x-stand-in"] == "1"
    assert put.json()["result"]["echo"] == json.loads(raw)
    first = qdrant.seen[0]
    assert (first["method"], first["path"], first["query"], first["body"]) == (
        "PUT", "/collections/other/points", "wait=true", raw)
    assert first["headers"]["api-key"] == "k1"
    assert listed.status_code == 200 and qdrant.seen[1]["headers"]["authorization"] == "Bearer jwt"
    assert plain.status_code == 200  # no reranker on "plain": Qdrant (here: the stand-in) embeds
    assert qdrant.seen[-1]["path"] == "/collections/plain/points/query"
    assert qdrant.seen[-1]["body"] == unchanged  # byte for byte


async def test_errors_come_back_in_qdrants_shape(app, local, qdrant, elsewhere):
    local.set_reranker("docs", str(elsewhere), text_field="body")  # payloads hold "text"
    async with running(app) as client:
        missing = await client.post("/collections/docs/points/query", json={"query": text()})
        unknown = await client.post("/collections/nope/points/query", json={"query": text()})
    assert missing.status_code == 400
    assert "payload field 'body'" in missing.json()["status"]["error"]
    assert unknown.status_code == 404 and "doesn't exist" in unknown.json()["status"]["error"]


async def test_a_reranker_this_server_does_not_run(app, local):
    from dataclasses import asdict

    from embedrank.plugin.collections import RERANK_KEY, RerankConfig

    config = RerankConfig("/nowhere/reranker", "0" * 64, "text", 10, None)
    qdrant_client.QdrantClient.update_collection(local, "docs", metadata={RERANK_KEY: asdict(config)})
    async with running(app) as client:
        response = await client.post("/collections/docs/points/query", json={"query": text()})
    assert response.status_code == 400
    assert "/nowhere/reranker, which cannot be loaded here" in response.json()["status"]["error"]
