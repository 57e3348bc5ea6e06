"""POST /qdrant/infer: Qdrant's inference protocol, with bodies as Qdrant v1.19's source builds them.

Request (src/common/inference/service.rs ``InferenceRequest``, inference_input.rs
``InferenceInput``): ``{"inputs": [{"data", "data_type", "model", "options"}], "inference",
"token"}``; response ``{"embeddings": [...], "usage": {"models": {name: {"tokens": n}}}}``
(lib/api/src/rest/models.rs ``InferenceUsage`` / ``ModelUsage``). docs/serve.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from serve_support import DOCS, INSTRUCTION, qdrant_infer_body, running

from embedrank.runtime import Embedder
from embedrank.serve import ModelSet, ServeOptions, create_app
from embedrank.serve.models import ServedEmbedder

QUERY = "what runs the graph?"


@pytest.fixture(scope="module")
def embedder(embedder_dir):
    return Embedder.load(embedder_dir)


@pytest.fixture(scope="module")
def small(embedder_dir):
    return Embedder.load(embedder_dir, dim=32)


@pytest.fixture(scope="module")
def served(embedder, small):
    return ModelSet.registered([ServedEmbedder("Qwen3-Tiny", embedder), ServedEmbedder("tiny-32", small)])


def app(served, **options):
    return create_app(ServeOptions(embedders=(), **options), served)


async def infer(client, body: bytes, **headers):
    response = await client.post("/qdrant/infer", content=body,
                                 headers={"content-type": "application/json", **headers})
    return response.status_code, response.json()


async def test_update_embeds_documents_in_input_order(served, embedder, small):
    inputs = [(DOCS[0], "Qwen3-Tiny", None), (DOCS[1], "tiny-32", None), (DOCS[2], "Qwen3-Tiny", None)]
    async with running(app(served)) as client:
        status, body = await infer(client, qdrant_infer_body(inputs, "update"))
    assert status == 200 and set(body) == {"embeddings", "usage"}
    got = body["embeddings"]
    assert [len(v) for v in got] == [64, 32, 64]  # one dense vector per input, in order
    np.testing.assert_allclose(got[0], embedder.embed_documents([DOCS[0]])[0], atol=1e-6)
    np.testing.assert_allclose(got[1], small.embed_documents([DOCS[1]])[0], atol=1e-6)
    np.testing.assert_allclose(got[2], embedder.embed_documents([DOCS[2]])[0], atol=1e-6)
    tokens = {"Qwen3-Tiny": sum(len(s) for s in embedder.encode_documents([DOCS[0], DOCS[2]])),
              "tiny-32": len(small.encode_documents([DOCS[1]])[0])}
    assert body["usage"] == {"models": {name: {"tokens": n} for name, n in tokens.items()}}


async def test_search_embeds_queries_with_their_instruction(served, embedder):
    inputs = [(QUERY, "Qwen3-Tiny", None), (QUERY, "Qwen3-Tiny", {"instruction": INSTRUCTION}),
              (DOCS[3], "qwen3-tiny", {"instruction": INSTRUCTION})]  # names are case-insensitive
    async with running(app(served)) as client:
        status, body = await infer(client, qdrant_infer_body(inputs, "search"))
        _, update = await infer(client, qdrant_infer_body(inputs, "update"))
    assert status == 200
    got = np.array(body["embeddings"])
    np.testing.assert_allclose(got[0], embedder.embed_queries([QUERY])[0], atol=1e-6)  # default
    np.testing.assert_allclose(got[1], embedder.embed_queries([QUERY], INSTRUCTION)[0], atol=1e-6)
    np.testing.assert_allclose(got[2], embedder.embed_queries([DOCS[3]], INSTRUCTION)[0], atol=1e-6)
    assert not np.allclose(got[0], got[1])
    # "update" embeds documents: an instruction option is accepted and not applied
    np.testing.assert_allclose(update["embeddings"][1], embedder.embed_documents([QUERY])[0], atol=1e-6)
    assert set(body["usage"]["models"]) == {"Qwen3-Tiny", "qwen3-tiny"}  # keyed by the name sent


async def test_unknown_fields_are_accepted(served, embedder):
    body = json.loads(qdrant_infer_body([(DOCS[0], "Qwen3-Tiny", None)], "update"))
    body.update(timeout=30, provider_keys={"openai-api-key": "x"}, trace_id="abc")
    body["inputs"][0]["priority"] = 1
    async with running(app(served)) as client:
        status, out = await infer(client, json.dumps(body).encode(), **{"openai-api-key": "x"})
        _, minimal = await infer(client, json.dumps(
            {"inputs": [{"data": DOCS[0], "model": "Qwen3-Tiny"}]}).encode())  # defaults: text, update
    assert status == 200
    np.testing.assert_allclose(out["embeddings"][0], embedder.embed_documents([DOCS[0]])[0], atol=1e-6)
    assert minimal["embeddings"] == out["embeddings"]


@pytest.mark.parametrize("bad, message", [
    ({"data": "x", "data_type": "text", "model": "nope", "options": None}, "inputs[1]: model 'nope'"),
    ({"data": "aGk=", "data_type": "image", "model": "Qwen3-Tiny", "options": None},
     "inputs[1]: data_type 'image'"),
    ({"data": "x", "data_type": "text", "model": "Qwen3-Tiny", "options": {"truncate": True}},
     "inputs[1]: options ['truncate']"),
    ({"data": "  ", "data_type": "text", "model": "Qwen3-Tiny", "options": None},
     "inputs[1]: the text is empty"),
    ({"data": {"t": 1}, "data_type": "text", "model": "Qwen3-Tiny", "options": None},
     "inputs[1]: the text must be a str"),
    ({"data": "x", "data_type": "text", "model": "Qwen3-Tiny", "options": {"instruction": 5}},
     "inputs[1]: options.instruction"),
])
async def test_bad_input_is_a_400_naming_it_and_nothing_runs(served, bad, message):
    body = json.loads(qdrant_infer_body([(DOCS[0], "Qwen3-Tiny", None)], "update"))
    body["inputs"].append(bad)
    application = app(served)
    async with running(application) as client:
        status, out = await infer(client, json.dumps(body).encode())
        server = application.state.server
        assert status == 400 and set(out) == {"error"} and out["error"].startswith(message), out
        assert server.metrics.inputs.value("embed:Qwen3-Tiny") == 0  # all or nothing: nothing embedded
        assert server.batcher.queued == 0


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"inputs": 3}',
                                  b'{"inputs": [], "inference": "x"}'])
async def test_malformed_requests(served, body):
    async with running(app(served)) as client:
        status, out = await infer(client, body)
    assert status == 400 and "error" in out


async def test_token_in_the_body_or_as_a_bearer(served):
    body = qdrant_infer_body([(DOCS[0], "Qwen3-Tiny", None)], "update", token="s3cret")
    async with running(app(served, token="s3cret")) as client:
        assert (await infer(client, body))[0] == 200  # as Qdrant sends QDRANT__INFERENCE__TOKEN
        status, out = await infer(client, qdrant_infer_body([(DOCS[0], "Qwen3-Tiny", None)]))
        assert status == 401 and "QDRANT__INFERENCE__TOKEN" in out["error"]
        plain = qdrant_infer_body([(DOCS[0], "Qwen3-Tiny", None)])
        assert (await infer(client, qdrant_infer_body([(DOCS[0], "Qwen3-Tiny", None)], token="x")))[0] == 401
        assert (await infer(client, plain, authorization="Bearer s3cret"))[0] == 200
        assert (await infer(client, plain, authorization="Bearer nope"))[0] == 401
        assert (await client.get("/health")).status_code == 200  # probes need no token
