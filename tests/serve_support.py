"""Test helpers for `embedrank serve`: the app running in-process, and a stand-in Qdrant server.

A Qdrant binary is not available here. This stand-in (the proxy's tests) answers the REST routes
the proxy uses with qdrant-client's local mode (through our client, ``rerank=False``: it only
searches) and its REST models, and records every request it receives, so a test can see what was
forwarded. tests/qdrant_standin.py is the fuller one: it plays Qdrant's inference hook too, and
runs as a process (the README test).
"""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

import httpx
from qdrant_client import models
from qdrant_standin import dump
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


@contextlib.asynccontextmanager
async def running(app):
    """``app`` with its lifespan entered (batcher started), and an httpx client talking to it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            yield client


DOCS = ["Qdrant stores vectors and payloads.", "The reranker scores query-document pairs.",
        "ONNX Runtime runs the exported graph on the CPU.", "Short one."]
INSTRUCTION = "Given a question, find the sentence that answers it"


def qdrant_infer_body(inputs: list[tuple[str, str, dict | None]], inference: str = "update",
                      token: str | None = None) -> bytes:
    """The body Qdrant v1.19 POSTs to ``inference.address``, byte for byte as serde writes it
    (field order of ``InferenceRequest`` / ``InferenceInput``, ``null`` for absent options/token)."""
    items = [{"data": text, "data_type": "text", "model": model, "options": options}
             for text, model, options in inputs]
    body = {"inputs": items, "inference": inference, "token": token}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class Gate:
    """A model whose ``forward`` waits until ``open()``: holds work in the queue, no sleeps."""

    def __init__(self, model) -> None:
        self.model = model
        self.event = threading.Event()
        self.calls: list[int] = []  # rows per forward pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def forward(self, seqs, width=None):
        self.event.wait(timeout=60)
        self.calls.append(len(seqs))
        return self.model.forward(seqs, width)

    def open(self) -> None:
        self.event.set()


def _ok(result: Any) -> JSONResponse:
    return JSONResponse({"result": result, "status": "ok", "time": 0.001})


class StandInQdrant:
    """Qdrant's REST API for GET collection, query, query batch and retrieve, over a local client;
    any other request is echoed back (``{"result": {"echo": body}}``, header ``x-stand-in``)."""

    def __init__(self, client) -> None:
        self.client = client  # embedrank.plugin.QdrantClient(":memory:"), queried with rerank=False
        self.seen: list[dict] = []
        self.app = Starlette(routes=[
            Route("/collections/{name}", self.collection, methods=["GET"]),
            Route("/collections/{name}/points/query", self.query, methods=["POST"]),
            Route("/collections/{name}/points/query/batch", self.query_batch, methods=["POST"]),
            Route("/collections/{name}/points", self.retrieve, methods=["POST"]),
            Route("/{path:path}", self.echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ])
        self.transport = httpx.ASGITransport(app=self.app)

    async def _record(self, request: Request) -> Any:
        body = await request.body()
        self.seen.append({"method": request.method, "path": request.url.path,
                          "query": request.url.query, "headers": dict(request.headers), "body": body})
        return json.loads(body) if body else None

    def _missing(self, request: Request) -> JSONResponse | None:
        """Qdrant's 404 for an unknown collection."""
        name = request.path_params["name"]
        if self.client.collection_exists(name):
            return None
        return JSONResponse({"status": {"error": f"Not found: Collection `{name}` doesn't exist!"},
                             "time": 0.0}, status_code=404)

    async def collection(self, request: Request) -> JSONResponse:
        await self._record(request)
        return self._missing(request) or _ok(dump(self.client.get_collection(request.path_params["name"])))

    def _query(self, name: str, body: dict) -> models.QueryResponse:
        r = models.QueryRequest.model_validate(body)
        return self.client.query_points(
            name, query=r.query, using=r.using, prefetch=r.prefetch, query_filter=r.filter,
            limit=r.limit or 10, offset=r.offset, with_payload=r.with_payload or False,
            with_vectors=r.with_vector or False, score_threshold=r.score_threshold, rerank=False)

    async def query(self, request: Request) -> JSONResponse:
        body = await self._record(request)
        return self._missing(request) or _ok(dump(self._query(request.path_params["name"], body)))

    async def query_batch(self, request: Request) -> JSONResponse:
        body = await self._record(request)
        name = request.path_params["name"]
        return _ok([dump(self._query(name, s)) for s in body["searches"]])

    async def retrieve(self, request: Request) -> JSONResponse:
        body = await self._record(request)
        records = self.client.retrieve(request.path_params["name"], body["ids"],
                                       with_payload=body.get("with_payload", True))
        return _ok(dump(records))

    async def echo(self, request: Request) -> JSONResponse:
        body = await self._record(request)
        return JSONResponse({"result": {"echo": body}, "status": "ok", "time": 0.0},
                            status_code=201 if request.method == "PUT" else 200,
                            headers={"x-stand-in": "1"})
