"""A stand-in Qdrant server for tests: Qdrant's REST API over qdrant-client's local mode, with
Qdrant's inference hook. No Qdrant binary or Docker engine runs here; this is what the README's
"any language" examples and tests/test_serve_standin.py talk to instead.

The hook behaves as Qdrant v1.19.0's (read in its source, docs/serve.md): the address is read
from ``QDRANT__INFERENCE__ADDRESS`` (the full URL, no path added), the token from
``QDRANT__INFERENCE__TOKEN`` and the timeout from ``QDRANT__INFERENCE__TIMEOUT`` (seconds). Every
inference object (``{"text"|"image"|"object", "model", "options"?}``) of an upsert's vectors is
POSTed as ``{"inputs": [{"data", "data_type", "model", "options"}], "inference": "update",
"token"}``, of a query (query and prefetches) with ``"search"``; identical objects of one request
are sent once (here in first-seen order; Qdrant iterates a hash set); the vectors that come back
are stored or searched in their place. Stricter than Qdrant on one point: a reply whose vector
count differs from the inputs is an error, not paired.

    QDRANT__INFERENCE__ADDRESS=http://localhost:8000/qdrant/infer python tests/qdrant_standin.py --port 6333

Routes: GET /, /readyz, /collections; GET / PUT / PATCH / DELETE /collections/{name}; GET
/collections/{name}/exists; PUT /collections/{name}/points (upsert), POST .../points (retrieve),
POST .../points/query and .../points/query/batch. Anything else is a 404 naming the route.
``--record FILE`` appends every request received and every inference body sent, as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import httpx
import pydantic
import qdrant_client
from qdrant_client import models
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

VERSION = {"title": "qdrant - vector search engine", "version": "1.19.0",
           "commit": "74f3e85b9473c62560006c043e13737ce6b48412"}  # the protocol this one mimics
DATA_TYPES = {"text": "text", "image": "image", "object": "object"}  # Document, Image, InferenceObject
INSERT = pydantic.TypeAdapter(models.PointInsertOperations)


class QdrantError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def ok(result: Any, start: float, usage: dict | None = None) -> JSONResponse:
    body = {"result": result, "status": "ok", "time": time.perf_counter() - start}
    if usage:
        body["usage"] = {"hardware": None, "inference": usage}
    return JSONResponse(body)


def dump(obj: Any) -> Any:
    if isinstance(obj, list):
        return [dump(o) for o in obj]
    return obj.model_dump(mode="json", exclude_none=True)


def inference_object(value: Any) -> tuple[Any, str, str, Any] | None:
    """(data, data_type, model, options) when ``value`` is a Document / Image / InferenceObject."""
    if not isinstance(value, dict) or not isinstance(value.get("model"), str):
        return None
    kinds = [k for k in DATA_TYPES if k in value]
    if len(kinds) != 1 or set(value) - {kinds[0], "model", "options"}:
        return None
    return value[kinds[0]], DATA_TYPES[kinds[0]], value["model"], value.get("options")


def walk(value: Any, visit) -> Any:
    """``value`` with every inference object replaced by ``visit(object)``."""
    found = inference_object(value)
    if found is not None:
        return visit(found)
    if isinstance(value, dict):
        return {k: walk(v, visit) for k, v in value.items()}
    if isinstance(value, list):
        return [walk(v, visit) for v in value]
    return value


class Hook:
    """Qdrant's remote inference: one POST per user request, vectors back in input order."""

    def __init__(self, address: str | None, token: str | None = None, timeout: float = 600,
                 transport: httpx.AsyncBaseTransport | None = None, record=None) -> None:
        self.address, self.token, self.record = address, token, record
        self.http = httpx.AsyncClient(timeout=timeout, transport=transport)
        self.sent: list[bytes] = []

    @classmethod
    def from_env(cls, **kwargs) -> Hook:
        timeout = float(os.environ.get("QDRANT__INFERENCE__TIMEOUT") or 600)
        return cls(os.environ.get("QDRANT__INFERENCE__ADDRESS"),
                   os.environ.get("QDRANT__INFERENCE__TOKEN"), timeout, **kwargs)

    async def embed(self, parts: list[Any], mode: str) -> tuple[list[Any], dict | None]:
        """``parts`` with their inference objects replaced by vectors, and the usage."""
        keys: dict[str, tuple] = {}

        def collect(obj: tuple) -> None:
            keys.setdefault(json.dumps(obj, sort_keys=True), obj)

        for part in parts:
            walk(part, collect)
        if not keys:
            return parts, None
        vectors, usage = await self.post(list(keys.values()), mode)
        found = dict(zip(keys, vectors, strict=True))
        return [walk(p, lambda o: found[json.dumps(o, sort_keys=True)]) for p in parts], usage

    async def post(self, objects: list[tuple], mode: str) -> tuple[list[Any], dict | None]:
        if not self.address:
            raise QdrantError(400, "Inference is not configured (QDRANT__INFERENCE__ADDRESS), "
                                   "but the request holds inference objects")
        inputs = [{"data": d, "data_type": t, "model": m, "options": o} for d, t, m, o in objects]
        body = json.dumps({"inputs": inputs, "inference": mode, "token": self.token},
                          separators=(",", ":"), ensure_ascii=False).encode()
        self.sent.append(body)
        if self.record:
            self.record({"inference": json.loads(body)})
        try:
            r = await self.http.post(self.address, content=body,
                                     headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise QdrantError(500, f"Failed to send inference request: {exc!r}") from None
        if r.status_code != 200:
            raise answer_error(r)
        try:
            reply = r.json()
            vectors = reply["embeddings"]
        except (ValueError, KeyError, TypeError):
            raise QdrantError(500, "Failed to parse successful inference response") from None
        if not isinstance(vectors, list) or len(vectors) != len(inputs):
            raise QdrantError(500, f"stand-in: {len(inputs)} inputs sent, reply has "
                                   f"{len(vectors) if isinstance(vectors, list) else vectors!r} vectors")
        return vectors, reply.get("usage")


def answer_error(r: httpx.Response) -> QdrantError:
    """The inference service's non-200 answer as Qdrant v1.19 turns it into its own error."""
    code, text = r.status_code, r.text
    if code == 400:
        try:
            return QdrantError(400, f"Inference request validation failed: {r.json()['error']}")
        except (ValueError, KeyError, TypeError):
            return QdrantError(400, f"Invalid inference request: {text}")
    if code in (401, 403):
        return QdrantError(500, f"Authentication failed for inference service ({code}): {text}")
    if code == 429:
        return QdrantError(429, f"Too many requests: {text}")
    if code >= 500:
        return QdrantError(500, f"Inference service error ({code}): {text}")
    return QdrantError(400, f"Inference can't process request ({code}): {text}")


class StandIn:
    """The REST routes over ``client`` (qdrant-client local mode), inference through ``hook``."""

    def __init__(self, client: qdrant_client.QdrantClient | None = None, hook: Hook | None = None,
                 record=None) -> None:
        self.client = client or qdrant_client.QdrantClient(":memory:")
        self.hook = hook or Hook.from_env(record=record)
        self.record = record
        self.operation = 0
        c = "/collections/{name}"
        self.app = Starlette(routes=[
            Route("/", self.root, methods=["GET"]),
            Route("/readyz", self.ready, methods=["GET"]),
            Route("/collections", self.collections, methods=["GET"]),
            Route(c, self.collection, methods=["GET", "PUT", "PATCH", "DELETE"]),
            Route(c + "/exists", self.exists, methods=["GET"]),
            Route(c + "/points", self.points, methods=["PUT", "POST"]),
            Route(c + "/points/query", self.query, methods=["POST"]),
            Route(c + "/points/query/batch", self.query_batch, methods=["POST"]),
            Route("/{path:path}", self.unknown, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ], exception_handlers={QdrantError: self.error})

    async def error(self, request: Request, exc: QdrantError) -> JSONResponse:
        return JSONResponse({"status": {"error": str(exc)}, "time": 0.0}, status_code=exc.status)

    async def body(self, request: Request) -> Any:
        raw = await request.body()
        if self.record:
            self.record({"method": request.method, "path": request.url.path,
                         "query": request.url.query, "body": json.loads(raw) if raw else None})
        try:
            return json.loads(raw) if raw else {}
        except ValueError as exc:
            raise QdrantError(400, f"Format error in JSON body: {exc}") from None

    def name(self, request: Request, must_exist: bool = True) -> str:
        name = request.path_params["name"]
        if must_exist and not self.client.collection_exists(name):
            raise QdrantError(404, f"Not found: Collection `{name}` doesn't exist!")
        return name

    async def root(self, request: Request) -> JSONResponse:
        return JSONResponse(VERSION)

    async def ready(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("all shards are ready")

    async def collections(self, request: Request) -> JSONResponse:
        return ok(dump(self.client.get_collections()), time.perf_counter())

    async def exists(self, request: Request) -> JSONResponse:
        found = self.client.collection_exists(self.name(request, must_exist=False))
        return ok({"exists": found}, time.perf_counter())

    async def collection(self, request: Request) -> JSONResponse:
        start, body = time.perf_counter(), await self.body(request)
        name = self.name(request, must_exist=request.method != "PUT")
        if request.method == "GET":
            return ok(dump(self.client.get_collection(name)), start)
        if request.method == "DELETE":
            return ok(self.client.delete_collection(name), start)
        if request.method == "PUT":
            if self.client.collection_exists(name):
                raise QdrantError(409, f"Wrong input: Collection `{name}` already exists!")
            c = parse(models.CreateCollection, body)
            return ok(self.client.create_collection(name, vectors_config=c.vectors, metadata=c.metadata,
                                                    sparse_vectors_config=c.sparse_vectors), start)
        u = parse(models.UpdateCollection, body)
        return ok(self.client.update_collection(name, metadata=u.metadata), start)

    async def points(self, request: Request) -> JSONResponse:
        start, body = time.perf_counter(), await self.body(request)
        name = self.name(request)
        if request.method == "POST":  # retrieve
            r = parse(models.PointRequest, body)
            records = self.client.retrieve(name, r.ids, with_payload=r.with_payload is not False,
                                           with_vectors=r.with_vector or False)
            return ok(dump(records), start)
        key = "points" if "points" in body else "batch"
        vectors = [p.get("vector") for p in body["points"]] if key == "points" else [body[key]]
        vectors, usage = await self.hook.embed(vectors, "update")
        if key == "points":
            body = {**body, "points": [{**p, "vector": v} for p, v in zip(body["points"], vectors,
                                                                           strict=True)]}
        else:
            body = {**body, "batch": vectors[0]}
        ops = parse(INSERT, body)
        self.client.upsert(name, ops.points if key == "points" else ops.batch)
        self.operation += 1
        return ok({"operation_id": self.operation, "status": "completed"}, start, usage)

    async def searched(self, name: str, search: dict) -> tuple[models.QueryResponse, dict | None]:
        parts, usage = await self.hook.embed([search.get("query"), search.get("prefetch")], "search")
        r = parse(models.QueryRequest, {**search, "query": parts[0], "prefetch": parts[1]})
        found = self.client.query_points(
            name, query=r.query, using=r.using, prefetch=r.prefetch, query_filter=r.filter,
            search_params=r.params, limit=r.limit or 10, offset=r.offset,
            with_payload=r.with_payload or False, with_vectors=r.with_vector or False,
            score_threshold=r.score_threshold, lookup_from=r.lookup_from)
        return found, usage

    async def query(self, request: Request) -> JSONResponse:
        start, body = time.perf_counter(), await self.body(request)
        found, usage = await self.searched(self.name(request), body)
        return ok(dump(found), start, usage)

    async def query_batch(self, request: Request) -> JSONResponse:
        start, body = time.perf_counter(), await self.body(request)
        name = self.name(request)
        answers = [await self.searched(name, s) for s in body.get("searches", [])]
        usage = merge_usage([u for _, u in answers])
        return ok([dump(found) for found, _ in answers], start, usage)

    async def unknown(self, request: Request) -> JSONResponse:
        raise QdrantError(404, f"stand-in: {request.method} {request.url.path} is not implemented")


def parse(model, body: Any) -> Any:
    try:
        if isinstance(model, pydantic.TypeAdapter):
            return model.validate_python(body)
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        raise QdrantError(400, f"Format error in JSON body: {exc.errors()[0]['msg']}") from None


def merge_usage(usages: list[dict | None]) -> dict | None:
    """Tokens summed per model name, as Qdrant merges its inference calls' usage."""
    total: dict[str, dict[str, int]] = {}
    for usage in filter(None, usages):
        for model, u in (usage.get("models") or {}).items():
            total.setdefault(model, {"tokens": 0})["tokens"] += u.get("tokens", 0)
    return {"models": total} if total else None


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6333)
    parser.add_argument("--record", help="append received requests and inference bodies (JSON lines)")
    args = parser.parse_args()

    def record(entry: dict) -> None:
        with open(args.record, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    standin = StandIn(record=record if args.record else None)
    uvicorn.run(standin.app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
