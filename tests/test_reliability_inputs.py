"""Bad inputs through every public entry point: refused with an EmbedrankError naming the item
(or a documented valid result), and nothing written for a refused batch.

Documented valid results: an empty list embeds to a (0, d) array and reranks to (0,); a 1 MB
text is truncated to the model's max_length; ``upload_points([])`` writes nothing. qdrant-client's
own ``models.Document`` refuses non-str text (pydantic ``ValidationError``) before embedrank sees
it, except bytes, which pydantic decodes to str.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import ValidationError
from qdrant_client import models
from reliability_support import TALLY

from embedrank.cli.main import main
from embedrank.errors import EmbedrankError, InputError, ManifestError, ModelDirError
from embedrank.plugin import (
    AsyncQdrantClient,
    Embedder,
    QdrantClient,
    Reranker,
    register_embedder,
)
from embedrank.plugin.ingest import ingest_records, model_name, read_records
from embedrank.plugin.vectorizer import registration

pytestmark = pytest.mark.reliability

BAD_TEXTS = {
    "empty string": "",
    "whitespace only": " \t\n ",
    "lone surrogate": "abc\ud800def",
    "NUL byte": "abc\x00def",
    "None": None,
    "int": 42,
    "float": 0.5,
}
STR_BAD = {k: v for k, v in BAD_TEXTS.items() if isinstance(v, str)}
MEGABYTE = "lorem ipsum " * 87_382  # 1 MB


def refused(fn, *args, match: str | None = None, **kwargs) -> bool:
    with pytest.raises(EmbedrankError, match=match):
        fn(*args, **kwargs)
    return True


def tally(entry: str, kinds: list[str], ok: int) -> None:
    """One table row per entry point; the kinds tried are listed in docs/reliability.md."""
    TALLY.add("bad input", entry, len(kinds), ok, len(kinds) - ok, "refused or valid")


# ------------------------------------------------------------------------------ Python API


@pytest.fixture(scope="module")
def embedder(embedder_dir):
    return Embedder.load(embedder_dir)


@pytest.fixture(scope="module")
def reranker(reranker_dir):
    return Reranker.load(reranker_dir)


def test_embedder(embedder):
    ok = 0
    for _kind, bad in BAD_TEXTS.items():
        for fn, what in ((embedder.embed_documents, "documents"), (embedder.embed_queries,
                                                                   "queries")):
            refused(fn, ["good", bad, "fine"], match=rf"{what}\[1\]")
        ok += 1
    big = embedder.embed_documents([MEGABYTE, "short"])
    assert big.shape == (2, 64) and np.isfinite(big).all()
    assert embedder.embed_documents([]).shape == (0, 64)
    assert refused(embedder.embed_documents, b"raw bytes", match="string or a list")
    tally("Embedder.embed_documents / embed_queries", [*BAD_TEXTS, "1 MB text (valid: "
          "truncated)", "empty list (valid: (0, d))", "bytes batch"], ok + 3)


def test_reranker(reranker):
    ok = 0
    for _kind, bad in BAD_TEXTS.items():
        refused(reranker.score, bad, ["doc"], match="query")
        refused(reranker.score, "query", ["doc", bad], match=r"documents\[1\]")
        ok += 1
    refused(reranker.score, "word " * 5000, ["doc"], match="query and instruction take")
    refused(reranker.score, "q", ["doc"], instruction=7, match="instruction")
    assert reranker.score("q", []).shape == (0,)
    assert reranker.score("q", [MEGABYTE]).shape == (1,)
    tally("Reranker.score (query and documents)", [*BAD_TEXTS, "over-long query",
          "non-str instruction", "empty list (valid)", "1 MB document (valid)"], ok + 4)


@pytest.fixture
def client(embedder_dir):
    register_embedder("tiny", embedder_dir)
    client = QdrantClient(":memory:")
    client.create_collection("docs", vectors_config=models.VectorParams(
        size=64, distance=models.Distance.COSINE))
    client.upsert("docs", [point(i, f"good text {i}") for i in range(5)])
    return client


def point(pid, text) -> models.PointStruct:
    return models.PointStruct(id=pid, vector=models.Document(text=text, model="tiny"),
                              payload={"text": text})


def count(client, name="docs") -> int:
    return client.count(name, exact=True).count


def test_qdrant_client_writes_and_queries(client):
    ok = 0
    for _kind, bad in STR_BAD.items():
        batch = [point(10, "fine"), point(11, bad), point(12, "also fine")]
        refused(client.upsert, "docs", batch, match=r"point 11: models\.Document")
        refused(client.upload_points, "docs", batch, match="point 11")
        refused(client.upload_points, "docs", iter(batch), match="point 11")
        refused(client.query_points, "docs", query=models.Document(text=bad, model="tiny"))
        refused(client.query_points, "docs", query=[0.1] * 64, prefetch=models.Prefetch(
            query=models.Document(text=bad, model="tiny")))
        assert count(client) == 5
        ok += 1
    for bad in (None, 42, 0.5):
        with pytest.raises(ValidationError):
            models.Document(text=bad, model="tiny")
    client.upload_points("docs", [])
    with pytest.raises(ValueError, match="Empty update request"):  # qdrant-client's own check
        client.upsert("docs", [])
    client.upsert("docs", [point(99, MEGABYTE)])
    assert count(client) == 6
    tally("QdrantClient upsert / upload_points / query_points (+prefetch)",
          [*STR_BAD, "non-str (pydantic refuses)", "empty list", "1 MB text (valid)"], ok + 3)


async def test_async_client_writes(embedder_dir):
    register_embedder("tiny", embedder_dir)
    client = AsyncQdrantClient(":memory:")
    await client.create_collection("docs", vectors_config=models.VectorParams(
        size=64, distance=models.Distance.COSINE))
    ok = 0
    for _kind, bad in STR_BAD.items():
        with pytest.raises(InputError, match="point 11"):
            await client.upsert("docs", [point(10, "fine"), point(11, bad)])
        with pytest.raises(InputError):
            await client.query_points("docs", query=models.Document(text=bad, model="tiny"))
        assert (await client.count("docs")).count == 0
        ok += 1
    tally("AsyncQdrantClient upsert / query_points", list(STR_BAD), ok)


def test_register_embedder_and_set_reranker(embedder_dir, reranker_dir, tmp_path, client):
    cases = {
        "empty name": lambda: register_embedder("", embedder_dir),
        "whitespace name": lambda: register_embedder("  ", embedder_dir),
        "None name": lambda: register_embedder(None, embedder_dir),
        "missing dir": lambda: register_embedder("x", tmp_path / "nope"),
        "reranker dir": lambda: register_embedder("x", reranker_dir),
        "dim out of range": lambda: register_embedder("x", embedder_dir, dim=16),
        "non-str instruction": lambda: register_embedder("x", embedder_dir, instruction=3),
        "reranker: missing dir": lambda: client.set_reranker("docs", tmp_path / "nope"),
        "reranker: embedder dir": lambda: client.set_reranker("docs", embedder_dir),
        "top_k=0": lambda: client.set_reranker("docs", reranker_dir, top_k=0),
        "top_k='5'": lambda: client.set_reranker("docs", reranker_dir, top_k="5"),
        "empty text_field": lambda: client.set_reranker("docs", reranker_dir, text_field=""),
        "rerank instruction=3": lambda: client.set_reranker("docs", reranker_dir, instruction=3),
    }
    expected = {"missing dir": ModelDirError, "reranker dir": ManifestError,
                "reranker: missing dir": ModelDirError, "reranker: embedder dir": ManifestError}
    for kind, call in cases.items():
        with pytest.raises(expected.get(kind, InputError)):
            call()
    client.set_reranker("docs", reranker_dir, text_field="body")  # payloads hold "text"
    refused(client.query_points, "docs", query=models.Document(text="q", model="tiny"),
            match="payload field 'body' is missing")
    tally("register_embedder / set_reranker", [*cases, "payload without the text field"],
          len(cases) + 1)


# ------------------------------------------------------------------------------ CLI


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


JSONL_BAD = {
    "empty text": json.dumps({"id": "b", "text": ""}).encode(),
    "whitespace text": json.dumps({"id": "b", "text": "  \t"}).encode(),
    "null text": json.dumps({"id": "b", "text": None}).encode(),
    "numeric text": json.dumps({"id": "b", "text": 12}).encode(),
    "NUL byte": json.dumps({"id": "b", "text": "a\x00b"}).encode(),
    "lone surrogate": b'{"id": "b", "text": "a\\ud800b"}',
    "invalid UTF-8": b'{"id": "b", "text": "caf\xe9"}',
    "malformed JSON": b'{"id": "b", "text": ',
    "not an object": b"[1, 2]",
    "no text field": json.dumps({"id": "b", "body": "x"}).encode(),
}
CSV_BAD = {
    "CSV too many fields": b"b,text,extra",
    "CSV invalid UTF-8": b"b,caf\xe9",
    "CSV empty text": b"b,",
    "CSV missing field": b"b",
}
ERROR_WORDS = {"invalid UTF-8": "not valid UTF-8", "CSV invalid UTF-8": "not valid UTF-8",
               "malformed JSON": "invalid JSON", "lone surrogate": "lone surrogate",
               "NUL byte": "NUL byte", "CSV too many fields": "too many fields",
               "not an object": "expected a JSON object"}


def good_lines(csv_rows: bool, start: int) -> list[bytes]:
    if csv_rows:
        return [f"g{start + i},good line {start + i}".encode() for i in range(3)]
    return [json.dumps({"id": f"g{start + i}", "text": f"good line {start + i}"}).encode()
            for i in range(3)]


@pytest.fixture(scope="module")
def db(tmp_path_factory, embedder_dir):
    db = tmp_path_factory.mktemp("cli") / "db"
    seed = db.parent / "seed.jsonl"
    seed.write_bytes(b"\n".join(good_lines(False, 0)) + b"\n")
    assert run("ingest", "docs", seed, "--embedder", embedder_dir, "--path", db).exit_code == 0
    return db


def stored_count(db) -> int:
    client = QdrantClient(path=str(db))
    try:
        return count(client)
    finally:
        client.close()


THROUGH_CLI = {"invalid UTF-8", "malformed JSON", "CSV too many fields", "NUL byte"}


def ingest_file(file, db, embedder_dir, cli: bool) -> tuple[int, str]:
    """(exit code, output) of `embedrank ingest`; or of the same library calls in-process
    (each CLI run loads the model again: the CLI runs only a few kinds)."""
    if cli:
        out = run("ingest", "docs", file, "--embedder", embedder_dir, "--path", db)
        return out.exit_code, out.output
    name = model_name(embedder_dir)
    if registration(name) is None:
        register_embedder(name, embedder_dir)
    client = QdrantClient(path=str(db))
    try:
        result = ingest_records(client, "docs", read_records(file), name, source=file)
        return 0, f"{result.added} added"
    except EmbedrankError as exc:
        return 1, f"error: {exc}"
    finally:
        client.close()


def test_cli_ingest_refuses_bad_lines_and_writes_nothing_of_their_batch(db, embedder_dir):
    ok = 0
    for kind, line in {**JSONL_BAD, **CSV_BAD}.items():
        is_csv = kind.startswith("CSV")
        file = db.parent / ("bad.csv" if is_csv else "bad.jsonl")
        header = [b"id,text"] if is_csv else []
        lines = header + good_lines(is_csv, 10) + [line] + good_lines(is_csv, 20)
        file.write_bytes(b"\n".join(lines) + b"\n")
        code, output = ingest_file(file, db, embedder_dir, kind in THROUGH_CLI)
        bad_line = len(header) + 4
        assert code == 1 and f"{file.name}:{bad_line}" in output, (kind, output)
        assert ERROR_WORDS.get(kind, "text") in output, (kind, output)
        assert "Traceback" not in output and stored_count(db) == 3, kind
        ok += 1
    big = db.parent / "big.jsonl"
    big.write_text(json.dumps({"id": "mb", "text": MEGABYTE}) + "\n", encoding="utf-8")
    big_csv = db.parent / "big.csv"
    with open(big_csv, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["id", "text"], ["mb-csv", MEGABYTE]])
    for file in (big, big_csv):
        code, output = ingest_file(file, db, embedder_dir, file is big)
        assert code == 0 and "1 added" in output, output
    assert stored_count(db) == 5
    tally("`embedrank ingest` (JSONL, CSV)", [*JSONL_BAD, *CSV_BAD, "1 MB text (valid)"],
          ok + 1)


def test_cli_query_export_verify(db, embedder_dir, tmp_path):
    before = stored_count(db)
    cases = {
        "empty query": ("query", "docs", "", "--embedder", embedder_dir, "--path", db),
        "whitespace query": ("query", "docs", "   ", "--embedder", embedder_dir, "--path", db),
        "undecodable argv": ("query", "docs", "caf\udce9", "--embedder", embedder_dir,
                             "--path", db),
        "missing collection": ("query", "nope", "q", "--embedder", embedder_dir, "--path", db),
        "export: missing source": ("export", "embedder", tmp_path / "nope", tmp_path / "out"),
        "verify: missing model dir": ("verify", tmp_path / "nope", "--against", tmp_path),
        "verify: not a model dir": ("verify", tmp_path, "--against", tmp_path),
        "ingest: --batch-size 0": ("ingest", "docs", db.parent / "seed.jsonl", "--embedder",
                                   embedder_dir, "--path", db, "--batch-size", "0"),
    }
    for kind, args in cases.items():
        out = run(*args)
        assert out.exit_code == 1 and out.output.count("error: ") == 1, (kind, out.output)
        assert "Traceback" not in out.output, kind
    assert "does not exist" in run(*cases["missing collection"]).output
    assert stored_count(db) == before
    tally("`embedrank query / export / verify`", list(cases), len(cases))
