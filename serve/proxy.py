"""``--qdrant URL``: a Qdrant REST proxy that reranks text queries for every client.

Every request is forwarded unchanged (method, path, query string, headers such as ``api-key``,
body) and Qdrant's answer streamed back unchanged, with one exception: ``POST
/collections/{name}/points/query`` and ``.../points/query/batch`` whose query is a text
``Document`` of an embedder this server runs, on a collection whose metadata holds a reranker
(read by :func:`embedrank.plugin.collections.reranker_config`, as the Python clients read it).
Those run the Python client's own operations (:func:`embedrank.plugin.core.query_points` /
``query_batch_points``) against Qdrant, through qdrant-client with the caller's credentials:
the query embedded with the same instruction, max(top_k, offset + limit) candidates fetched with
their payload, scored with ``Reranker.score`` (P(yes)), cut to offset / limit, and returned in
Qdrant's response shape.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import OrderedDict
from typing import Any

import httpx
import qdrant_client
from qdrant_client import models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from embedrank.errors import EmbedrankError, OverloadedError
from embedrank.plugin import core, drivers
from embedrank.plugin.collections import RerankConfig, reranker_config

QUERY_PATH = re.compile(r"/collections/([^/]+)/points/query(/batch)?")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
CREDENTIALS = ("api-key", "authorization")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
CLIENTS = 32  # qdrant-client instances kept, one per set of credentials


def end_to_end(headers) -> dict[str, str]:
    """Headers without the hop-by-hop ones (and the length, recomputed by whoever sends)."""
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


def qdrant_error(message: str, status: int, start: float) -> JSONResponse:
    """An error in Qdrant's own shape, so Qdrant clients raise their usual exception."""
    return JSONResponse({"status": {"error": message}, "time": time.perf_counter() - start},
                        status_code=status)


def text_model(search: Any) -> str | None:
    """The model of a query body's text Document (bare or under ``nearest``), or None."""
    query = search.get("query") if isinstance(search, dict) else None
    if isinstance(query, dict) and isinstance(query.get("nearest"), dict):
        query = query["nearest"]
    ok = isinstance(query, dict) and isinstance(query.get("model"), str) and "text" in query
    return query["model"] if ok else None


def query_kwargs(request: models.QueryRequest, params: dict[str, str]) -> dict[str, Any]:
    """A REST query body as ``QdrantClient.query_points`` arguments (REST defaults kept)."""
    kwargs = {"query": request.query, "using": request.using, "prefetch": request.prefetch,
              "query_filter": request.filter, "search_params": request.params,
              "limit": request.limit or 10, "offset": request.offset,
              "with_payload": False if request.with_payload is None else request.with_payload,
              "with_vectors": request.with_vector or False, "score_threshold": request.score_threshold,
              "lookup_from": request.lookup_from, "shard_key_selector": request.shard_key}
    return {**kwargs, **_url_params(params)}


def _url_params(params: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "consistency" in params:
        value = params["consistency"]
        out["consistency"] = int(value) if value.isdigit() else value
    if "timeout" in params:
        out["timeout"] = int(params["timeout"])
    return out


class Proxy:
    def __init__(self, upstream: str, server, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.server = server
        self.transport = transport  # tests: an in-process stand-in Qdrant
        self.http: httpx.AsyncClient | None = None
        self.clients: OrderedDict[tuple, qdrant_client.AsyncQdrantClient] = OrderedDict()
        self.locks = drivers.LockTable(lambda: None)  # queries take no lock

    async def start(self) -> None:
        self.http = httpx.AsyncClient(base_url=self.upstream, timeout=None, transport=self.transport)

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        for client in self.clients.values():
            await client.close()

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
        upstream = self.http.build_request(
            request.method, request.url.path, params=request.url.query or None,
            headers=end_to_end(request.headers), content=body)
        response = await self.http.send(upstream, stream=True)
        headers = {k: v for k, v in response.headers.items()
                   if k.lower() not in HOP_BY_HOP - {"content-length"}}  # raw bytes: same length
        return StreamingResponse(response.aiter_raw(), status_code=response.status_code,
                                 headers=headers, background=response.aclose)

    # ------------------------------------------------------------------ reranked queries

    def client(self, request: Request) -> qdrant_client.AsyncQdrantClient:
        """qdrant-client for the upstream, sending the caller's credentials (kept per set)."""
        credentials = tuple(sorted((k.lower(), v) for k, v in request.headers.items()
                                   if k.lower() in CREDENTIALS))
        client = self.clients.pop(credentials, None)
        if client is None:
            extra = {"transport": self.transport} if self.transport is not None else {}
            client = qdrant_client.AsyncQdrantClient(
                url=self.upstream, headers=dict(credentials), check_compatibility=False,
                cloud_inference=True, timeout=600, **extra)  # other Documents: Qdrant's hook
        self.clients[credentials] = client
        while len(self.clients) > CLIENTS:
            self.clients.popitem(last=False)  # dropped, not closed: a request may still use it
        return client

    async def query(self, request: Request, name: str, batch: bool, body: bytes) -> Response | None:
        """Qdrant's answer reranked, or None when this request is not one to rerank."""
        start = time.perf_counter()
        try:
            data = json.loads(body)
            searches = data["searches"] if batch else [data]
            models_named = {m.lower() for m in map(text_model, searches) if m is not None}
            if not models_named & set(self.server.served.embedders):
                return None
            requests = [models.QueryRequest.model_validate(s) for s in searches]
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # Qdrant answers what it cannot read itself (or fields new to qdrant-client)
        client = self.client(request)
        try:
            info = await client.get_collection(name)
            config = reranker_config(info.config.metadata, name)
            if config is None:
                return None
            with self.server.batcher.reserved(config.top_k * len(requests)):  # --max-queue
                result = await self._run(client, name, batch, requests, self._served(config),
                                         dict(request.query_params))
        except UnexpectedResponse as exc:  # Qdrant's own error: passed on as it came
            return Response(exc.content, exc.status_code, media_type="application/json")
        except ResponseHandlingException as exc:
            return qdrant_error(f"Qdrant at {self.upstream} did not answer: {exc}", 502, start)
        except OverloadedError as exc:
            return qdrant_error(str(exc), 503, start)
        except EmbedrankError as exc:  # InputError, CollectionMismatchError, ModelDirError
            return qdrant_error(str(exc), 400, start)
        dumped = [r.model_dump(mode="json", exclude_none=True) for r in result]
        return JSONResponse({"result": dumped if batch else dumped[0], "status": "ok",
                             "time": time.perf_counter() - start})

    def _served(self, config: RerankConfig) -> RerankConfig:
        """The config pointing at this server's copy of the recorded reranker (same fingerprint,
        wherever the writer kept its directory); unchanged when this server has none."""
        for served in self.server.served.rerankers.values():
            if served.reranker.fingerprint == config.fingerprint:
                return dataclasses.replace(config, model_dir=str(served.reranker.path.resolve()))
        return config

    async def _run(self, client: qdrant_client.AsyncQdrantClient, name: str, batch: bool,
                   requests: list[models.QueryRequest], config: RerankConfig,
                   params: dict[str, str]) -> list:
        async def call(c: core.Call) -> Any:
            return await getattr(client, c.method)(**c.kwargs)

        if batch:
            op = core.query_batch_points(name, (), {"requests": requests, **_url_params(params)},
                                         config)
            return await drivers.arun(op, call, self.locks)
        op = core.query_points(name, (), query_kwargs(requests[0], params), config)
        return [await drivers.arun(op, call, self.locks)]
