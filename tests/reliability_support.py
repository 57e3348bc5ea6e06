"""The reliability suite's helpers: a flaky Qdrant behind a fake HTTP transport, and the tally.

:class:`FlakyQdrant` is an ``httpx.MockTransport`` handler that serves qdrant-client's REST
calls from a real local-mode (in-memory) Qdrant, and fails a seeded random share of them the
way a network does: connection refused or 503 *before* the call reaches the database, or a read
timeout *after* a write was applied (the client cannot tell whether it landed). A client is the
plugin's own ``QdrantClient(url=..., transport=httpx.MockTransport(flaky))``: the remote code
path, retries included, with no server and no private attribute touched.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import qdrant_client
from qdrant_client import models

T = TypeVar("T")


def size(ci: T, full: T) -> T:
    """Reduced sizes in CI; ``EMBEDRANK_RELIABILITY_FULL=1`` (or ``--reliability-full``) for all."""
    return full if os.environ.get("EMBEDRANK_RELIABILITY_FULL") == "1" else ci


# ------------------------------------------------------------------------------ the tally


@dataclass
class Row:
    area: str
    tried: str
    count: int
    survived: int
    lost: int
    note: str = ""


@dataclass
class Tally:
    rows: list[Row] = field(default_factory=list)

    def add(self, area: str, tried: str, count: int, survived: int, lost: int = 0,
            note: str = "") -> None:
        self.rows.append(Row(area, tried, count, survived, lost, note))

    def table(self) -> str:
        head = ("area", "what was tried", "count", "survived", "lost", "note")
        rows = [head] + [(r.area, r.tried, str(r.count), str(r.survived), str(r.lost), r.note)
                         for r in self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
                 for r in rows]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)


TALLY = Tally()


# ------------------------------------------------------------------------------ flaky Qdrant

_COLLECTION = re.compile(r"^/collections/(?P<name>[^/]+)(?P<rest>/.*)?$")


@dataclass
class FlakyQdrant:
    """A fake transport over a real local-mode Qdrant that fails a share ``p`` of its calls."""

    p: float = 0.0
    seed: int = 0
    backend: qdrant_client.QdrantClient = field(
        default_factory=lambda: qdrant_client.QdrantClient(":memory:"))
    failures: int = 0
    calls: int = 0
    seen_headers: list[httpx.Headers] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.lock = threading.Lock()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.calls += 1
            self.seen_headers.append(request.headers)
            fault = self.rng.random() < self.p
            kind = self.rng.choice(("refused", "503", "lost-ack")) if fault else None
            if kind is not None:
                self.failures += 1
            if kind == "refused":
                raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
            if kind == "503":
                return httpx.Response(503, json={"status": {"error": "overloaded"}})
            response = self.serve(request)
            if kind == "lost-ack":  # applied, but the answer never arrives
                raise httpx.ReadTimeout("timed out", request=request)
            return response

    def serve(self, request: httpx.Request) -> httpx.Response:
        match = _COLLECTION.match(request.url.path)
        if match is None:
            return httpx.Response(404, json={"status": {"error": f"no route {request.url.path}"}})
        name, rest, method = match["name"], match["rest"] or "", request.method
        body = json.loads(request.content) if request.content else {}
        db = self.backend
        if (method, rest) == ("GET", "/exists"):
            return ok({"exists": db.collection_exists(name)})
        if not db.collection_exists(name) and (method, rest) != ("PUT", ""):
            return httpx.Response(404, json={"status": {"error": f"Collection `{name}` not found"}})
        if (method, rest) == ("GET", ""):
            return ok(db.get_collection(name).model_dump(mode="json"))
        if (method, rest) == ("PUT", ""):
            spec = models.CreateCollection.model_validate(body)
            return ok(db.create_collection(name, vectors_config=spec.vectors,
                                           metadata=spec.metadata))
        if (method, rest) == ("DELETE", ""):
            return ok(db.delete_collection(name))
        if (method, rest) == ("PATCH", ""):
            return ok(db.update_collection(name, metadata=body.get("metadata")))
        if (method, rest) == ("POST", "/points"):
            req = models.PointRequest.model_validate(body)
            records = db.retrieve(name, req.ids, with_payload=req.with_payload,
                                  with_vectors=req.with_vector or False)
            return ok([r.model_dump(mode="json") for r in records])
        if (method, rest) == ("PUT", "/points"):
            points = models.PointsList.model_validate(body).points
            db.upsert(name, points)
            return ok({"operation_id": 0, "status": "completed"})
        return httpx.Response(404, json={"status": {"error": f"no route {method} {rest}"}})


def ok(result) -> httpx.Response:
    return httpx.Response(200, json={"result": result, "status": "ok", "time": 0.0})


def flaky_client(flaky: FlakyQdrant, **kwargs):
    """The plugin's ``QdrantClient`` talking REST to ``flaky``."""
    from embedrank.plugin import QdrantClient

    return QdrantClient(url="http://flaky.invalid:6333", transport=flaky.transport(),
                        check_compatibility=False, **kwargs)


# ------------------------------------------------------------------------------ checks


def contents(client, collection: str) -> dict[str, tuple]:
    """Every point as id -> (vector, payload), read through scroll (duplicates would show)."""
    out: dict[str, tuple] = {}
    offset = None
    while True:
        records, offset = client.scroll(collection, limit=1000, offset=offset, with_payload=True,
                                        with_vectors=True)
        for r in records:
            assert str(r.id) not in out, f"point {r.id} returned twice"
            out[str(r.id)] = (r.vector, r.payload)
        if offset is None:
            return out
