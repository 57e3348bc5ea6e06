"""The retry helper: exponential backoff with jitter, transient errors only, capped attempts."""

import random

import httpx
import pytest
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from embedrank.errors import InputError, ServiceError
from embedrank.plugin.retry import Backoff, is_transient, retry_call

pytestmark = pytest.mark.reliability


def unexpected(status: int) -> UnexpectedResponse:
    return UnexpectedResponse(status, "reason", b"{}", httpx.Headers())


class FakeRpcError(Exception):
    def __init__(self, name: str) -> None:
        self.name = name

    def code(self):
        return type("Code", (), {"name": self.name})()


def flaky(failures: list[Exception], result="done"):
    calls = []

    def fn(*args, **kwargs):
        calls.append((args, kwargs))
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return result

    return fn, calls


@pytest.mark.parametrize("exc, transient", [
    (ResponseHandlingException(httpx.ConnectError("refused")), True),
    (unexpected(503), True), (unexpected(429), True), (unexpected(504), True),
    (unexpected(400), False), (unexpected(404), False), (unexpected(409), False),
    (httpx.ReadTimeout("slow"), True), (ConnectionResetError(), True), (TimeoutError(), True),
    (FakeRpcError("UNAVAILABLE"), True), (FakeRpcError("INVALID_ARGUMENT"), False),
    (InputError("bad text"), False), (ValueError("Collection x not found"), False),
])
def test_only_transient_errors_are_retried(exc, transient):
    assert is_transient(exc) is transient


def test_backoff_grows_exponentially_with_bounded_jitter_and_a_cap():
    b = Backoff(attempts=10, base=0.1, cap=1.0, jitter=0.5)
    rng = random.Random(0)
    for k in range(10):
        full = min(1.0, 0.1 * 2 ** k)
        for _ in range(50):
            assert full / 2 <= b.delay(k, rng) <= full
    assert Backoff(jitter=0).delay(3) == pytest.approx(0.2 * 8)


def test_retries_then_succeeds_with_arguments_passed_through():
    fn, calls = flaky([unexpected(503), ResponseHandlingException(httpx.ConnectError("x"))])
    slept = []
    out = retry_call(fn, 1, 2, key="v", backoff=Backoff(attempts=3, base=1, jitter=0),
                     sleep=slept.append)
    assert out == "done" and calls == [((1, 2), {"key": "v"})] * 3 and slept == [1, 2]


def test_a_permanent_error_is_raised_at_once():
    fn, calls = flaky([unexpected(400)])
    with pytest.raises(UnexpectedResponse):
        retry_call(fn, sleep=lambda s: pytest.fail("slept"))
    assert len(calls) == 1


def test_after_the_last_attempt_a_service_error_says_what_failed_and_what_to_do():
    fn, calls = flaky([unexpected(503)] * 5)
    with pytest.raises(ServiceError, match=r"writing docs.jsonl:1-64 failed 4 times.*HTTP 503"
                                           r".*rerun") as info:
        retry_call(fn, what="writing docs.jsonl:1-64", backoff=Backoff(attempts=4),
                   sleep=lambda s: None)
    assert len(calls) == 4 and isinstance(info.value.__cause__, UnexpectedResponse)


def test_attempts_must_be_positive():
    with pytest.raises(ValueError):
        retry_call(lambda: 1, backoff=Backoff(attempts=0))
