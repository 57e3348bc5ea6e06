"""The stand-in Qdrant (tests/qdrant_standin.py) in front of `embedrank serve`'s hook, driven by
qdrant-client with ``cloud_inference=True``: what it sends to the hook is what Qdrant v1.19 sends
(tests/serve_support.py builds those bytes), and what it stores and finds are embedrank's vectors.
The README test runs the same stand-in as a process, with curl, Python and JavaScript clients.
"""

from __future__ import annotations

import contextlib

import httpx
import numpy as np
import pytest
import qdrant_client
from qdrant_client import models
from qdrant_client.http.exceptions import UnexpectedResponse
from qdrant_standin import Hook, StandIn
from serve_support import DOCS, INSTRUCTION, qdrant_infer_body

from embedrank.runtime import Embedder
from embedrank.serve import ModelSet, ServeOptions, create_app
from embedrank.serve.models import ServedEmbedder

MODEL = "Qwen3-Tiny"


@pytest.fixture(scope="module")
def embedder(embedder_dir):
    return Embedder.load(embedder_dir)


@contextlib.asynccontextmanager
async def stand_in(embedder, address: str | None = "http://serve/qdrant/infer"):
    """(stand-in, client): qdrant-client -> stand-in Qdrant -> embedrank serve, all in-process."""
    app = create_app(ServeOptions(embedders=()), ModelSet.registered([ServedEmbedder(MODEL, embedder)]))
    async with app.router.lifespan_context(app):
        standin = StandIn(hook=Hook(address, transport=httpx.ASGITransport(app=app)))
        client = qdrant_client.AsyncQdrantClient(url="http://qdrant:6333", cloud_inference=True,
                                                 check_compatibility=False,  # its probe skips transport
                                                 transport=httpx.ASGITransport(app=standin.app))
        await client.create_collection("docs", vectors_config=models.VectorParams(
            size=embedder.dim, distance=models.Distance.COSINE))
        yield standin, client
        await client.close()


def doc(text: str, **options) -> models.Document:
    return models.Document(text=text, model=MODEL, options=options or None)


async def test_upsert_sends_each_document_once_and_stores_embedranks_vectors(embedder):
    async with stand_in(embedder) as (standin, client):
        await client.upsert("docs", [models.PointStruct(id=i, vector=doc(t), payload={"text": t})
                                     for i, t in enumerate(DOCS)])
        await client.upsert("docs", [models.PointStruct(id=10, vector=doc(DOCS[0])),
                                     models.PointStruct(id=11, vector=doc(DOCS[0]))])  # one input
        stored = await client.retrieve("docs", [0, 1, 2, 3, 10, 11], with_vectors=True)
    assert standin.hook.sent == [qdrant_infer_body([(t, MODEL, None) for t in DOCS], "update"),
                                 qdrant_infer_body([(DOCS[0], MODEL, None)], "update")]
    want = embedder.embed_documents(DOCS)
    got = np.array([p.vector for p in stored])
    np.testing.assert_allclose(got, np.vstack([want, want[0], want[0]]), atol=1e-6)


async def test_query_embeds_with_search_and_the_instruction_and_ranks_by_cosine(embedder):
    query = "what runs the graph?"
    async with stand_in(embedder) as (standin, client):
        await client.upsert("docs", [models.PointStruct(id=i, vector=doc(t)) for i, t in enumerate(DOCS)])
        hits = (await client.query_points("docs", query=doc(query, instruction=INSTRUCTION),
                                          limit=4)).points
        batch = await client.query_batch_points("docs", [models.QueryRequest(
            query=models.NearestQuery(nearest=doc(query)), limit=2)])
    instructed = [(query, MODEL, {"instruction": INSTRUCTION})]
    assert standin.hook.sent[1:] == [qdrant_infer_body(instructed, "search"),
                                     qdrant_infer_body([(query, MODEL, None)], "search")]
    cosines = embedder.embed_documents(DOCS) @ embedder.embed_queries([query], instruction=INSTRUCTION)[0]
    assert [h.id for h in hits] == list(np.argsort(-cosines))
    np.testing.assert_allclose([h.score for h in hits], np.sort(cosines)[::-1], atol=1e-5)
    default = embedder.embed_documents(DOCS) @ embedder.embed_queries([query])[0]
    assert [h.id for h in batch[0].points] == list(np.argsort(-default)[:2])


async def test_hook_errors_come_back_as_qdrant_errors(embedder):
    async with stand_in(embedder) as (standin, client):
        with pytest.raises(UnexpectedResponse) as bad_model:
            await client.upsert("docs", [models.PointStruct(id=1, vector=models.Document(
                text="x", model="no-such-model"))])
    assert bad_model.value.status_code == 400
    assert "Inference request validation failed: inputs[0]" in bad_model.value.content.decode()
    async with stand_in(embedder, address=None) as (standin, client):
        with pytest.raises(UnexpectedResponse) as unset:
            await client.query_points("docs", query=doc("x"))
    assert unset.value.status_code == 400 and "QDRANT__INFERENCE__ADDRESS" in unset.value.content.decode()
