"""Dynamic batching: merged concurrent requests give the very bits of a serial run; a full queue
answers 503 and runs nothing of the refused request. Work is held with a gate, never a sleep."""

from __future__ import annotations

import asyncio
import json
import random

import numpy as np
import pytest
from serve_support import Gate, qdrant_infer_body, running

from embedrank.runtime import Embedder, Reranker
from embedrank.serve import ModelSet, ServeOptions, create_app
from embedrank.serve.batcher import bucket
from embedrank.serve.models import ServedEmbedder, ServedReranker

WORDS = "qdrant vector search rerank query document payload filter index shard cluster node".split()


def sentence(rng: random.Random, low: int = 1, high: int = 60) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


@pytest.fixture(scope="module")
def models(embedder_dir, reranker_dir):
    return Embedder.load(embedder_dir), Reranker.load(reranker_dir)


def gated(models, **options):
    embedder, reranker = models
    gate = Gate(embedder)
    served = ModelSet([ServedEmbedder("e", gate)], [ServedReranker("r", reranker)])
    return create_app(ServeOptions(**options), served), gate


def requests(n: int) -> list[tuple[str, bytes]]:
    """A mix of Qdrant searches / updates, OpenAI embeddings and reranks."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            body = qdrant_infer_body([(sentence(rng), "e", None)], "search")
        elif kind == 1:
            body = qdrant_infer_body([(sentence(rng), "e", None) for _ in range(rng.randint(1, 6))])
        elif kind == 2:
            body = json.dumps({"input": [sentence(rng) for _ in range(3)], "input_type": "query"}).encode()
        else:
            documents = [sentence(rng) for _ in range(5)]
            body = json.dumps({"query": sentence(rng, 1, 8), "documents": documents}).encode()
        out.append((["/qdrant/infer", "/qdrant/infer", "/v1/embeddings", "/rerank"][kind], body))
    return out


def inputs(path: str, body: bytes) -> int:
    data = json.loads(body)
    return len(data.get("inputs") or data.get("input") or data.get("documents"))


async def until(condition) -> None:
    """Yield to the event loop until ``condition()`` holds (work queued by other tasks)."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def test_bucket_widths():
    assert [bucket(n) for n in (1, 8, 9, 16, 17, 33, 64, 65, 100, 129, 5000)] == \
        [8, 8, 16, 16, 24, 40, 64, 80, 112, 160, 5120]
    assert all(0 <= bucket(n) - n <= max(7, n // 4) for n in range(1, 3000))  # <= 25% padding
    assert bucket(1000, limit=1024) == 1024 and bucket(1000, limit=1010) == 1010 and bucket(7, 5) == 7


async def test_64_concurrent_clients_get_the_bits_of_a_serial_run(models):
    work = requests(64)
    app, gate = gated(models)
    gate.open()
    async with running(app) as client:  # serial: one request at a time
        serial = [(await client.post(path, content=body)).json() for path, body in work]
    app, gate = gated(models)
    async with running(app) as client:
        tasks = [asyncio.create_task(client.post(path, content=body)) for path, body in work]
        embed_inputs = sum(inputs(p, b) for p, b in work if p != "/rerank")
        batcher = app.state.server.batcher
        await until(lambda: batcher.depth["embed:e"] == embed_inputs)  # all queued behind the gate
        gate.open()
        concurrent = [r.json() for r in await asyncio.gather(*tasks)]
    assert concurrent == serial  # values and order, bit for bit (JSON floats of float32)
    assert max(gate.calls) > 6  # passes merged rows of several requests
    assert app.state.server.metrics.batch_requests.count("embed:e") < 48  # fewer batches than requests


async def test_merged_results_equal_the_runtime(models):
    embedder, reranker = models
    work = requests(16)
    app, gate = gated(models)
    async with running(app) as client:
        tasks = [asyncio.create_task(client.post(path, content=body)) for path, body in work]
        await until(lambda: app.state.server.batcher.depth["embed:e"] > 0)
        gate.open()
        answers = [r.json() for r in await asyncio.gather(*tasks)]
    for (path, body), answer in zip(work, answers, strict=True):
        data = json.loads(body)
        if path == "/qdrant/infer":
            texts = [i["data"] for i in data["inputs"]]
            want = embedder.embed_queries(texts) if data["inference"] == "search" else \
                embedder.embed_documents(texts)
            np.testing.assert_allclose(answer["embeddings"], want, atol=1e-6)
        elif path == "/v1/embeddings":
            np.testing.assert_allclose([d["embedding"] for d in answer["data"]],
                                       embedder.embed_queries(data["input"]), atol=1e-6)
        else:
            scores = reranker.score(data["query"], data["documents"])
            got = {r["index"]: r["relevance_score"] for r in answer["results"]}
            np.testing.assert_allclose([got[i] for i in range(len(scores))], scores, atol=1e-6)


async def test_full_queue_is_a_503_and_runs_nothing_of_that_request(models):
    embedder = models[0]
    app, gate = gated(models, max_queue=10)
    first = qdrant_infer_body([(f"first {i}", "e", None) for i in range(6)])
    second = qdrant_infer_body([(f"second {i}", "e", None) for i in range(5)])
    third = qdrant_infer_body([(f"third {i}", "e", None) for i in range(4)])
    async with running(app) as client:
        server = app.state.server
        held = asyncio.create_task(client.post("/qdrant/infer", content=first))
        await until(lambda: server.batcher.queued == 6)
        refused = await client.post("/qdrant/infer", content=second)  # 6 + 5 > 10
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "--max-queue 10" in refused.json()["error"]
        fits = asyncio.create_task(client.post("/qdrant/infer", content=third))  # 6 + 4 = 10
        await until(lambda: server.batcher.queued == 10)
        too_big = await client.post("/v1/embeddings", json={"input": ["x"] * 11})
        assert too_big.status_code == 503
        gate.open()
        done = [(await held).json(), (await fits).json()]
        assert server.batcher.queued == 0 and server.metrics.rejected.value() == 2
        assert server.metrics.inputs.value("embed:e") == 10  # the refused requests never ran
    np.testing.assert_allclose(done[0]["embeddings"], embedder.embed_documents(
        [f"first {i}" for i in range(6)]), atol=1e-6)
    np.testing.assert_allclose(done[1]["embeddings"], embedder.embed_documents(
        [f"third {i}" for i in range(4)]), atol=1e-6)


async def test_a_failing_model_fails_its_requests_with_a_500(models):
    class Broken(Gate):
        def forward(self, seqs, width=None):
            raise RuntimeError("onnxruntime: out of memory")

    served = ModelSet([ServedEmbedder("e", Broken(models[0]))])
    app = create_app(ServeOptions(), served)
    async with running(app) as client:
        response = await client.post("/qdrant/infer", content=qdrant_infer_body([("x", "e", None)]))
        assert response.status_code == 500 and "out of memory" in response.json()["error"]
        assert app.state.server.batcher.queued == 0
