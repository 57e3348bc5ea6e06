"""``--qdrant URL``: a Qdrant REST proxy that reranks text queries for every client.

Every request is forwarded unchanged (method, path, query string, headers such as ``api-key``,
body) and Qdrant's answer streamed back unchanged, with one exception: ``POST
/collections/{name}/points/query`` and ``.../points/query/batch`` whose query is a text
``Document`` of an embedder this server runs, on a collection whose metadata holds a reranker
(``set_reranker``). Those are answered as :class:`embedrank.plugin.QdrantClient` answers them,
with its own functions: the collection state read from the same metadata
(``CollectionState.from_info``), the query embedded with the same instruction, max(top_k,
offset + limit) candidates fetched with their payload, scored by the same ``Reranker.score``
(P(yes)), cut to offset/limit, and returned in Qdrant's response shape.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import anyio
import httpx
from qdrant_client import models
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from embedrank.errors import EmbedrankError, InputError, OverloadedError
from embedrank.plugin.collections import CollectionState
from embedrank.plugin.qdrant import query_vectors, rerank_plan, reranked, widened
from embedrank.plugin.rerank import RerankPlan, RerankSpec, spec_for

QUERY_PATH = re.compile(r"/collections/([^/]+)/points/query(/batch)?")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
KNOWN = set(models.QueryRequest.model_fields)


def end_to_end(headers) -> dict[str, str]:
    """Headers without the hop-by-hop ones (and the length, recomputed by whoever sends)."""
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


def qdrant_error(message: str, status: int, start: float) -> JSONResponse:
    """An error in Qdrant's own shape, so Qdrant clients raise their usual exception."""
    return JSONResponse({"status": {"error": message}, "time": time.perf_counter() - start},
                        status_code=status)


def text_query(search: Any) -> dict | None:
    """The Document of a query request body (bare or under ``nearest``), or None."""
    query = search.get("query") if isinstance(search, dict) else None
    if isinstance(query, dict) and isinstance(query.get("nearest"), dict):
        query = query["nearest"]
    ok = isinstance(query, dict) and isinstance(query.get("model"), str) and "text" in query
    return query if ok else None


class Proxy:
    def __init__(self, upstream: str, server, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.server = server
        self.transport = transport  # tests: an in-process stand-in Qdrant
        self.client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self.client = httpx.AsyncClient(base_url=self.upstream, timeout=None, transport=self.transport)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def route(self) -> Route:
        return Route("/{path:path}", self.handle, methods=METHODS)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        match = QUERY_PATH.fullmatch(request.url.path)
        if request.method == "POST" and match:
            answered = await self.query(request, match.group(1), bool(match.group(2)), body)
            if answered is not None:
                return answered
        return await self.forward(request, body)

    async def forward(self, request: Request, body: bytes) -> Response:
        upstream = self.client.build_request(
            request.method, request.url.path, params=request.url.query or None,
            headers=end_to_end(request.headers), content=body)
        response = await self.client.send(upstream, stream=True)
        headers = {k: v for k, v in response.headers.items()
                   if k.lower() not in HOP_BY_HOP - {"content-length"}}  # raw bytes: same length
        return StreamingResponse(response.aiter_raw(), status_code=response.status_code,
                                 headers=headers, background=response.aclose)

    # ------------------------------------------------------------------ reranked queries

    async def query(self, request: Request, name: str, batch: bool, body: bytes) -> Response | None:
        """Qdrant's answer reranked, or None when this request is not one to rerank."""
        start = time.perf_counter()
        try:
            data = json.loads(body)
            searches = data["searches"] if batch else [data]
            ours = [text_query(s) for s in searches]
            if not any(q is not None and q["model"].lower() in self.server.served.embedders
                       for q in ours):
                return None
            requests = [models.QueryRequest.model_validate({k: v for k, v in s.items() if k in KNOWN})
                        for s in searches]
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # Qdrant answers bodies it cannot read itself
        headers = end_to_end(request.headers)
        info = await self.client.get(f"/collections/{name}", headers=headers)
        if info.status_code != 200:
            return None
        try:
            state = CollectionState.from_info(name, models.CollectionInfo.model_validate(
                info.json()["result"]))
            spec = await run_in_threadpool(spec_for, state.reranker)
            if spec is None:
                return None
            return await self._reranked(request, name, batch, searches, requests, state, spec, start)
        except OverloadedError as exc:
            return qdrant_error(str(exc), 503, start)
        except EmbedrankError as exc:  # InputError, CollectionMismatchError: the caller's to fix
            return qdrant_error(str(exc), 400, start)

    async def _reranked(self, request: Request, name: str, batch: bool, searches: list[dict],
                        requests: list[models.QueryRequest], state: CollectionState,
                        spec: RerankSpec, start: float) -> Response:
        headers = end_to_end(request.headers)
        plans = [rerank_plan(state, spec, r.query, r.using, r.limit or 10, r.offset,
                             False if r.with_payload is None else r.with_payload) for r in requests]
        wide = [widened(r, p) if p else r for r, p in zip(requests, plans, strict=True)]
        embedded = await run_in_threadpool(query_vectors, state, wide)
        sent = [{**{k: v for k, v in s.items() if k not in KNOWN},
                 **r.model_dump(mode="json", exclude_none=True)} for s, r in zip(searches, embedded,
                                                                                  strict=True)]
        answer = await self.client.post(request.url.path, params=request.url.query or None,
                                        headers=headers, json={"searches": sent} if batch else sent[0])
        if answer.status_code != 200:
            return Response(answer.content, answer.status_code, headers=end_to_end(answer.headers))
        data = answer.json()
        results = data["result"] if batch else [data["result"]]
        out = [await self._answer(name, headers, result, p) if p else result
               for result, p in zip(results, plans, strict=True)]
        data["result"] = out if batch else out[0]
        data["time"] = time.perf_counter() - start
        return JSONResponse(data)

    async def _answer(self, name: str, headers: dict, result: dict, p: RerankPlan) -> dict:
        """One query's candidates reranked, cut and given the payload asked for."""
        points = [models.ScoredPoint.model_validate(x) for x in result["points"]]
        with self.server.batcher.reserved(len(points)):  # counted against --max-queue
            points = await run_in_threadpool(reranked, p, points, self._retriever(name, headers))
        return {**result, "points": [x.model_dump(mode="json", exclude_none=True) for x in points]}

    def _retriever(self, name: str, headers: dict):
        """``retrieve(ids, with_payload) -> {id: payload}`` over HTTP, called from a worker thread."""
        def retrieve(ids: list, with_payload: Any) -> dict:
            selector = with_payload.model_dump(mode="json", exclude_none=True) if isinstance(
                with_payload, models.BaseModel) else with_payload
            response = anyio.from_thread.run(lambda: self.client.post(
                f"/collections/{name}/points", headers=headers,
                json={"ids": ids, "with_payload": selector}))
            if response.status_code != 200:
                raise InputError(f"Qdrant refused to re-read the payloads ({response.status_code}): "
                                 f"{response.text[:300]}")
            return {r["id"]: r.get("payload") for r in response.json()["result"]}
        return retrieve
