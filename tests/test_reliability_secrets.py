"""Secrets: the Qdrant API key and TLS options reach qdrant-client untouched, and the key never
shows in logs, warnings, error messages or CLI output."""

from __future__ import annotations

import logging
import ssl
import warnings

import httpx
import pytest
from click.testing import CliRunner
from reliability_support import TALLY, FlakyQdrant, flaky_client

from embedrank.cli.main import main
from embedrank.errors import InputError, ServiceError
from embedrank.plugin import AsyncQdrantClient, QdrantClient, register_embedder
from embedrank.plugin.ingest import ingest_records, open_client
from embedrank.plugin.retry import Backoff

pytestmark = pytest.mark.reliability

KEY = "sk-embedrank-SECRET-3f9a1c"
CLOSED = "http://127.0.0.1:9"  # the discard port: connection refused at once


class Recorder:
    """A fake transport: answers "collection does not exist" and keeps every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json={"result": {"exists": False}, "status": "ok", "time": 0})


async def test_api_key_and_tls_options_reach_qdrant_client_untouched():
    ctx = ssl.create_default_context()
    sync_seen, async_seen = Recorder(), Recorder()
    common = dict(url="https://qdrant.example:6333", api_key=KEY, https=True, verify=ctx,
                  check_compatibility=False)
    client = QdrantClient(**common, transport=httpx.MockTransport(sync_seen))
    aclient = AsyncQdrantClient(**common, transport=httpx.MockTransport(async_seen))
    assert client.collection_exists("docs") is False
    assert await aclient.collection_exists("docs") is False
    for c in (client, aclient):
        options = c.init_options
        assert options["api_key"] == KEY and options["https"] is True and options["verify"] is ctx
    for seen in (sync_seen, async_seen):
        (request,) = seen.requests
        assert request.headers["api-key"] == KEY and request.url.scheme == "https"
    grpc = QdrantClient(url="https://qdrant.example:6334", api_key=KEY, prefer_grpc=True,
                        check_compatibility=False)
    assert grpc.init_options["api_key"] == KEY and grpc.init_options["prefer_grpc"] is True
    with pytest.raises(InputError, match="--api-key is for a Qdrant server"):
        open_client(path="db", api_key=KEY)
    TALLY.add("secrets", "api_key / https / verify reach qdrant-client (sync, async, gRPC)", 3,
              3, 0, "header sent as given")


def test_the_key_never_shows_in_errors_or_logs(embedder_dir, caplog):
    caplog.set_level(logging.DEBUG)
    register_embedder("tiny", embedder_dir)
    flaky = FlakyQdrant(p=1.0)  # every call fails
    client = flaky_client(flaky, api_key=KEY)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ServiceError) as info:
        warnings.simplefilter("always")
        ingest_records(client, "docs", [(1, {"text": "a line"})], "tiny",
                       backoff=Backoff(attempts=3, base=0.01))
    assert flaky.seen_headers[0]["api-key"] == KEY  # it was sent...
    texts = [str(info.value), repr(info.value), str(info.value.__cause__), caplog.text,
             *(str(w.message) for w in caught)]
    assert caplog.text and not any(KEY in t for t in texts)  # ...and never shown
    TALLY.add("secrets", "key in errors / logs / warnings after failed retries", 1, 1, 0,
              "never shown")


def test_the_cli_never_prints_the_key(embedder_dir, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a line"}\n')
    runs = {
        "ingest --api-key": ["ingest", "docs", str(data), "--embedder", str(embedder_dir),
                             "--url", CLOSED, "--api-key", KEY, "--attempts", "2"],
        "query with QDRANT_API_KEY": ["query", "docs", "q", "--embedder", str(embedder_dir),
                                      "--url", CLOSED, "--attempts", "2"],
        "ingest --help": ["ingest", "--help"],
    }
    monkeypatch.setenv("QDRANT_API_KEY", KEY)
    for kind, args in runs.items():
        out = CliRunner().invoke(main, args)
        assert KEY not in out.output and KEY not in caplog.text, kind
        if kind != "ingest --help":
            assert out.exit_code == 1 and "error: " in out.output, (kind, out.output)
            assert "failed 2 times" in out.output and "Traceback" not in out.output, kind
    TALLY.add("secrets", "CLI with a bogus --url and --api-key / QDRANT_API_KEY", len(runs),
              len(runs), 0, "exit 1, key never printed")


def test_api_key_reaches_the_server_from_the_cli(embedder_dir, tmp_path, monkeypatch):
    flaky = FlakyQdrant()
    made = []

    def open_flaky(path, url, api_key=None):
        made.append((url, api_key))
        return flaky_client(flaky, api_key=api_key)

    monkeypatch.setattr("embedrank.plugin.ingest.open_client", open_flaky)
    monkeypatch.setenv("QDRANT_API_KEY", KEY)
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a line"}\n')
    out = CliRunner().invoke(main, ["ingest", "docs", str(data), "--embedder", str(embedder_dir),
                                    "--url", "https://q.example"])
    assert out.exit_code == 0, out.output
    assert made == [("https://q.example", KEY)]
    assert {h["api-key"] for h in flaky.seen_headers} == {KEY}
    assert flaky.backend.count("docs").count == 1
