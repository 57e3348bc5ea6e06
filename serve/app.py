"""The ASGI application: routes, auth, errors, one log line and metrics per request."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from embedrank.errors import AuthError, InputError, OverloadedError
from embedrank.serve import endpoints
from embedrank.serve.batcher import Batcher
from embedrank.serve.engine import Engine
from embedrank.serve.metrics import CONTENT_TYPE, Metrics
from embedrank.serve.models import ModelSet
from embedrank.serve.settings import ServeOptions

log = logging.getLogger("embedrank.serve")

Handler = Callable[[Engine, Any], Awaitable[dict]]


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    return value[7:].strip() if value[:7].lower() == "bearer " else None


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class Server:
    """The app's state: options, models, batcher, metrics (and the proxy when --qdrant is set)."""

    def __init__(self, options: ServeOptions, served: ModelSet) -> None:
        self.options, self.served = options, served
        self.metrics = Metrics()
        self.batcher = Batcher(served.lanes(), self.metrics, options.batch_tokens, options.max_queue,
                               options.workers)
        self.engine = Engine(served, self.batcher, self.metrics)
        self.proxy = None

    def check_token(self, request: Request, body: Any = None) -> None:
        """With a token configured: the Authorization bearer or the body's ``token`` must match."""
        expected = self.options.token
        if expected is None:
            return
        body_token = body.get("token") if isinstance(body, dict) else None
        if not (_same(_bearer(request), expected) or
                _same(body_token if isinstance(body_token, str) else None, expected)):
            raise AuthError("missing or wrong token: send 'Authorization: Bearer <token>' (or the "
                               "body's \"token\", as Qdrant's inference hook does; set "
                               "QDRANT__INFERENCE__TOKEN to the server's token)")

    def json_route(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                body = json.loads(await request.body() or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                body = exc
            try:
                self.check_token(request, body)
                if isinstance(body, Exception):
                    raise InputError(f"the body is not valid JSON ({body})")
                return JSONResponse(await handler(self.engine, body))
            except AuthError as exc:
                return JSONResponse({"error": str(exc)}, status_code=401)
            except InputError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            except OverloadedError as exc:
                return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})
            except Exception as exc:  # e.g. the model failed: Qdrant reports a 500 as a service error
                log.exception("%s failed", request.url.path)
                return JSONResponse({"error": f"the server failed ({type(exc).__name__}: {exc}); "
                                              "see its log"}, status_code=500)
        return endpoint

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", **self.served.describe(),
                             "queue": {"inputs": self.batcher.queued, "max": self.batcher.max_queue}})

    async def metrics_page(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type=CONTENT_TYPE)


KNOWN_ROUTES = ("/qdrant/infer", "/v1/embeddings", "/rerank", "/health", "/metrics")


class RequestLog:
    """ASGI middleware: one info line per HTTP request, plus the request metrics."""

    def __init__(self, app, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"]
            route = path if path in KNOWN_ROUTES else "proxy"
            elapsed = time.perf_counter() - start
            m = self.server.metrics
            m.requests.inc(route, str(status[0]))
            m.latency.observe(route, value=elapsed)
            if status[0] >= 400:
                m.errors.inc(route, str(status[0]))
            log.info("%s %s %d %.1fms", scope["method"], path, status[0], elapsed * 1000)


def create_app(options: ServeOptions, served: ModelSet | None = None,
               upstream: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The Starlette app for ``options`` (models loaded from it unless ``served`` is given;
    ``upstream``: the transport to reach ``options.qdrant`` by, e.g. an in-process stand-in)."""
    options.check(models=served is None)
    served = served if served is not None else ModelSet.load(options)
    server = Server(options, served)
    routes = [
        Route("/qdrant/infer", server.json_route(endpoints.qdrant), methods=["POST"]),
        Route("/v1/embeddings", server.json_route(endpoints.embeddings), methods=["POST"]),
        Route("/rerank", server.json_route(endpoints.rerank), methods=["POST"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics_page, methods=["GET"]),
    ]
    if options.qdrant is not None:
        from embedrank.serve.proxy import Proxy

        server.proxy = Proxy(options.qdrant, server, upstream)
        routes.append(server.proxy.route())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await server.batcher.start()
        if server.proxy is not None:
            await server.proxy.start()
        try:
            yield
        finally:
            if server.proxy is not None:
                await server.proxy.stop()
            await server.batcher.stop()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = server
    app.add_middleware(RequestLog, server=server)
    return app


def run(options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Load the models and serve until interrupted (uvicorn; our own one-line request log)."""
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(options)
    log.info("serving %s on http://%s:%d", ", ".join(
        [*app.state.server.served.embedders, *app.state.server.served.rerankers]), host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
