"""Retries for calls to Qdrant: exponential backoff with jitter, transient errors only.

A transient error is one a later attempt may not meet: the connection was refused or reset,
a timeout, HTTP 408/429/5xx, gRPC UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED /
ABORTED. Anything else (a bad request, a missing collection, an embedrank error) is raised at
once. Writes retried this way must be idempotent: ingest upserts deterministic ids, so a write
that landed but whose answer was lost is simply written again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from embedrank.errors import EmbedrankError, ServiceError

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
TRANSIENT_GRPC = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"})


@dataclass(frozen=True)
class Backoff:
    """``attempts`` tries in all; delay k (from 0) is ``min(cap, base * 2**k)``, jittered."""

    attempts: int = 6
    base: float = 0.2
    cap: float = 10.0
    jitter: float = 0.5  # the delay is drawn from [(1 - jitter) * d, d]

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        full = min(self.cap, self.base * 2 ** retry)
        return full * (1 - self.jitter * (rng or random).random())


def is_transient(exc: BaseException) -> bool:
    """True for errors worth another attempt (network, timeouts, overload), False otherwise."""
    if isinstance(exc, EmbedrankError):
        return False
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, ResponseHandlingException):  # no answer: refused, reset, timed out
        return True
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in TRANSIENT_HTTP
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):
            return True
    except ImportError:  # pragma: no cover - httpx comes with qdrant-client
        pass
    code = getattr(exc, "code", None)
    if callable(code):  # grpc.RpcError
        try:
            return getattr(code(), "name", "") in TRANSIENT_GRPC
        except Exception:  # noqa: BLE001 - a code() that fails is not a gRPC error
            return False
    return False


def retry_call(fn: Callable[..., T], *args: Any, what: str = "the Qdrant call",
               backoff: Backoff | None = None, sleep: Callable[[float], None] = time.sleep,
               rng: random.Random | None = None, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried on transient errors; :class:`ServiceError` at the end."""
    backoff = backoff or Backoff()
    if backoff.attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {backoff.attempts}")
    for attempt in range(backoff.attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt + 1 == backoff.attempts:
                raise ServiceError(
                    f"{what} failed {backoff.attempts} times in a row (last: {describe(exc)}); "
                    "check that Qdrant is up and reachable, then rerun (ingest resumes where "
                    "it stopped)") from exc
            delay = backoff.delay(attempt, rng)
            log.warning("%s failed (%s); retry %d/%d in %.2fs", what, describe(exc), attempt + 1,
                        backoff.attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def describe(exc: BaseException, limit: int = 200) -> str:
    """A short one-line account of an error: its type and the start of its message."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, ResponseHandlingException) and exc.source is not None:
        exc = exc.source
    if isinstance(exc, UnexpectedResponse):
        text = f"HTTP {exc.status_code} {exc.reason_phrase}"
    else:
        text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:limit]}"
