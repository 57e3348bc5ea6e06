"""POST /v1/embeddings (OpenAI shape), POST /rerank (Jina / Cohere v2 shape), /health, /metrics."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from serve_support import running

from embedrank.runtime import Embedder, Reranker
from embedrank.serve import ModelSet, ServeOptions, create_app
from embedrank.serve.models import ServedEmbedder, ServedReranker

TEXTS = ["Qdrant stores vectors and payloads.", "A reranker scores pairs.", "short",
         "ONNX Runtime runs the exported graph on the CPU, one batch at a time."]
QUERY = "what scores pairs?"


@pytest.fixture(scope="module")
def embedder(embedder_dir):
    return Embedder.load(embedder_dir)


@pytest.fixture(scope="module")
def reranker(reranker_dir):
    return Reranker.load(reranker_dir)


@pytest.fixture(scope="module")
def served(embedder, reranker):
    return ModelSet.registered([ServedEmbedder("emb", embedder)], [ServedReranker("rr", reranker)])


@pytest.fixture
def app(served):
    return create_app(ServeOptions(token="t0k"), served)


AUTH = {"authorization": "Bearer t0k"}


async def post(client, path: str, body) -> tuple[int, dict]:
    response = await client.post(path, json=body, headers=AUTH)
    return response.status_code, response.json()


async def test_embeddings_openai_shape_and_values(app, embedder):
    async with running(app) as client:
        status, out = await post(client, "/v1/embeddings", {"input": TEXTS, "model": "emb"})
        _, one = await post(client, "/v1/embeddings", {"input": TEXTS[0], "model": "emb"})
    assert status == 200 and out["object"] == "list" and out["model"] == "emb"
    assert [d["index"] for d in out["data"]] == [0, 1, 2, 3]
    assert {d["object"] for d in out["data"]} == {"embedding"}
    got = np.array([d["embedding"] for d in out["data"]])
    np.testing.assert_allclose(got, embedder.embed_documents(TEXTS), atol=1e-6)
    tokens = sum(len(s) for s in embedder.encode_documents(TEXTS))
    assert out["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    np.testing.assert_allclose(one["data"][0]["embedding"], got[0], atol=1e-6)


async def test_embeddings_queries_dimensions_and_base64(app, embedder, embedder_dir):
    instruction = "Given a question, find the answer"
    async with running(app) as client:
        _, queries = await post(client, "/v1/embeddings", {
            "input": TEXTS, "model": "emb", "input_type": "query", "instruction": instruction})
        _, default = await post(client, "/v1/embeddings", {"input": TEXTS, "input_type": "query"})
        _, small = await post(client, "/v1/embeddings", {"input": TEXTS, "dimensions": 32})
        _, packed = await post(client, "/v1/embeddings", {"input": TEXTS, "encoding_format": "base64"})
    vectors = lambda out: np.array([d["embedding"] for d in out["data"]])  # noqa: E731
    np.testing.assert_allclose(vectors(queries), embedder.embed_queries(TEXTS, instruction), atol=1e-6)
    np.testing.assert_allclose(vectors(default), embedder.embed_queries(TEXTS), atol=1e-6)
    np.testing.assert_allclose(vectors(small), Embedder.load(embedder_dir, dim=32).embed_documents(TEXTS),
                               atol=1e-6)
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                        for d in packed["data"]])
    np.testing.assert_allclose(decoded, embedder.embed_documents(TEXTS), atol=1e-6)


async def test_rerank_equals_reranker_score(app, reranker):
    instruction = "Judge whether the sentence answers the question"
    async with running(app) as client:
        status, out = await post(client, "/rerank", {"query": QUERY, "documents": TEXTS})
        _, top = await post(client, "/rerank", {"query": QUERY, "documents": [{"text": t} for t in TEXTS],
                                                "model": "rr", "top_n": 2, "return_documents": True,
                                                "instruction": instruction})
    assert status == 200 and out["model"] == "rr"
    scores = reranker.score(QUERY, TEXTS)
    order = sorted(range(len(TEXTS)), key=lambda i: -scores[i])
    assert [r["index"] for r in out["results"]] == order
    np.testing.assert_allclose([r["relevance_score"] for r in out["results"]], scores[order], atol=1e-6)
    assert all(r["score"] == r["relevance_score"] for r in out["results"])
    assert out["usage"]["total_tokens"] == sum(len(s) for s in reranker.encode(QUERY, TEXTS))
    scored = reranker.score(QUERY, TEXTS, instruction)
    best = sorted(range(len(TEXTS)), key=lambda i: -scored[i])[:2]
    assert [(r["index"], r["document"]["text"]) for r in top["results"]] == [(i, TEXTS[i]) for i in best]
    np.testing.assert_allclose([r["relevance_score"] for r in top["results"]], scored[best], atol=1e-6)


@pytest.mark.parametrize("path, body, message", [
    ("/v1/embeddings", {"input": [], "model": "emb"}, "'input' must be"),
    ("/v1/embeddings", {"input": ["ok", ""], "model": "emb"}, "input[1]: the text is empty"),
    ("/v1/embeddings", {"input": "x", "model": "gpt"}, "'model' 'gpt' is not one of the embedders"),
    ("/v1/embeddings", {"input": "x", "dimensions": 4096}, "dim=4096"),
    ("/v1/embeddings", {"input": "x", "instruction": "i"}, "'instruction' applies to queries"),
    ("/v1/embeddings", {"input": "x", "input_type": "passage"}, "'input_type'"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, "'encoding_format'"),
    ("/rerank", {"query": "q", "documents": ["a", None]}, "documents[1]: the text must be a str"),
    ("/rerank", {"query": "", "documents": ["a"]}, "'query': the text is empty"),
    ("/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, "'top_n'"),
    ("/rerank", {"query": "q", "documents": ["a"], "model": "emb"},
     "'model' 'emb' is not one of the rerankers"),
])
async def test_bad_requests_are_400_and_nothing_runs(app, path, body, message):
    async with running(app) as client:
        status, out = await post(client, path, body)
    assert status == 400 and out["error"].startswith(message), out
    server = app.state.server
    assert server.batcher.queued == 0 and server.metrics.batch_inputs.count("embed:emb") == 0


async def test_auth_health_and_metrics(app, embedder):
    async with running(app) as client:
        assert (await client.post("/v1/embeddings", json={"input": "x"})).status_code == 401
        assert (await client.post("/rerank", json={"query": "q", "documents": ["a"]})).status_code == 401
        await post(client, "/v1/embeddings", {"input": TEXTS})
        health = (await client.get("/health")).json()
        text = (await client.get("/metrics")).text
    assert health["status"] == "ok" and health["embedders"]["emb"]["dim"] == 64
    served = app.state.server.served
    assert health["rerankers"]["rr"]["fingerprint"] == served.rerankers["rr"].reranker.fingerprint
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    tokens = sum(len(s) for s in embedder.encode_documents(TEXTS))
    assert lines['embedrank_requests_total{route="/v1/embeddings",status="200"}'] == "1"
    assert lines['embedrank_requests_total{route="/v1/embeddings",status="401"}'] == "1"
    assert lines['embedrank_request_errors_total{route="/rerank",status="401"}'] == "1"
    assert lines['embedrank_tokens_total{model="embed:emb"}'] == str(tokens)
    assert lines['embedrank_inputs_total{model="embed:emb"}'] == "4"
    assert lines['embedrank_batch_size_count{model="embed:emb"}'] == "1"
    assert lines['embedrank_batch_size_bucket{model="embed:emb",le="4"}'] == "1"
    assert lines['embedrank_batch_size_bucket{model="embed:emb",le="2"}'] == "0"
    assert lines['embedrank_queue_depth{model="embed:emb"}'] == "0"
    assert lines['embedrank_request_duration_seconds_count{route="/v1/embeddings"}'] == "2"
    assert "# TYPE embedrank_batch_tokens histogram" in text
