"""Destructive operations are guarded, and errors from outside embedrank are one line each.

- ``export --overwrite`` deletes only a directory embedrank exported; it never touches the source
  checkpoint (OUT == SRC, OUT inside SRC, SRC inside OUT are refused); merge and train refuse an
  output that is their source.
- A Qdrant server answering 401 / 403 / 404 / not-JSON, a malformed ``--url``, malformed input
  lines (deep nesting, huge numbers) and a ``--path`` database held by another process each give
  one ``error:`` line, exit code 1, no traceback, and never the URL's password or the API key.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from reliability_support import TALLY, FlakyQdrant, flaky_client

from embedrank.beir import load_beir
from embedrank.cli.main import main
from embedrank.errors import InputError
from embedrank.export import export_model
from embedrank.plugin.ingest import _checked, read_records
from embedrank.train.data import load_examples

pytestmark = pytest.mark.reliability

KEY = "sk-embedrank-SECRET-77d1"
PASSWORD = "hunter2-SECRET"


def run(*args, env: dict | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def one_line(result, *needles: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert KEY not in result.output and PASSWORD not in result.output
    return lines[0]


def digest(directory: Path) -> str:
    h = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(directory)).encode() + file.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------ destructive


def test_overwrite_deletes_only_what_embedrank_wrote(tiny_ckpt, embedder_dir, tmp_path):
    src = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    before = digest(src)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    (tmp_path / "link").symlink_to(embedder_dir, target_is_directory=True)
    cases = {
        "OUT is not an export": (src, tmp_path / "mine", "is not a model directory embedrank "
                                                          "exported"),
        "OUT == SRC": (src, src, "is the source checkpoint"),
        "OUT inside SRC": (src, src / "onnx", "is inside the source checkpoint"),
        "SRC inside OUT": (src, tmp_path, "the source checkpoint"),
        "OUT is a symlink to an export": (src, tmp_path / "link", "is a symbolic link"),
    }
    for kind, (source, out, message) in cases.items():
        one_line(run("export", "embedder", source, out, "--overwrite"), message)
        assert digest(src) == before, kind
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"
    assert not (src / "onnx").exists() and (embedder_dir / "embedrank.json").is_file()
    TALLY.add("destructive", "`export --overwrite` onto a foreign dir, SRC, inside / around SRC, "
              "a symlink", len(cases), len(cases), 0, "refused, nothing deleted")


def test_overwrite_replaces_an_earlier_export(tiny_ckpt, tmp_path):
    out = export_model("embedder", str(tiny_ckpt), tmp_path / "out", verify=False).out
    (out / "stale.txt").write_text("from an earlier export")
    with pytest.raises(InputError, match="not empty; pass --overwrite"):
        export_model("embedder", str(tiny_ckpt), out, verify=False)
    export_model("embedder", str(tiny_ckpt), out, verify=False, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "embedrank.json").is_file()


def test_merge_and_train_refuse_their_source_as_output(tiny_ckpt, tmp_path):
    from embedrank.train.merge import merge_checkpoints
    from embedrank.train.trainer import TrainConfig, train

    src = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    before = digest(src)
    with pytest.raises(InputError, match="is the source checkpoint"):
        merge_checkpoints([src, tiny_ckpt], src)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"query": "q", "pos": ["p"], "neg": ["n"]}) + "\n")
    for out in (src, src / "finetuned"):
        with pytest.raises(InputError, match="source checkpoint"):
            train("embedder", TrainConfig(model=str(src), data=str(data), out=str(out)))
    assert digest(src) == before
    TALLY.add("destructive", "merge / train with the output on the source checkpoint", 3, 3, 0,
              "refused, source intact")


# ------------------------------------------------------------------------------ errors


def server(status: int, body: bytes | dict):
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, dict):
            return httpx.Response(status, json=body)
        return httpx.Response(status, content=body)
    return handler


ANSWERS = {
    "HTTP 401": (server(401, b"Must provide an API key"), "HTTP 401 Unauthorized",
                 "pass --api-key or set QDRANT_API_KEY"),
    "HTTP 403": (server(403, {"status": {"error": "read-only key"}}),
                 "HTTP 403 Forbidden: read-only key", "check --api-key"),
    "HTTP 404": (server(404, b"<html>nginx</html>"), "HTTP 404 Not Found",
                 "REST address of a Qdrant server"),
    "not JSON": (server(200, b"<html>welcome to nginx</html>"),
                 "did not answer as a Qdrant server does", "REST address"),
    "JSON, not Qdrant's": (server(200, {"hello": "world"}), "did not answer as a Qdrant server",
                           "--url"),
}


@pytest.mark.parametrize("command", ["ingest", "query", "eval"])
def test_server_answers_are_one_line_without_credentials(command, embedder_dir, tmp_path,
                                                         monkeypatch):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a line"}\n')
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d", "text": "a line"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q", "text": "a query"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td\t1\n")
    url = f"http://admin:{PASSWORD}@qdrant.example:6333"
    args = {"ingest": ("ingest", "docs", data, "--embedder", embedder_dir, "--attempts", 1),
            "query": ("query", "docs", "q", "--embedder", embedder_dir, "--attempts", 1),
            "eval": ("eval", "--data", beir, "--embedder", embedder_dir, "--quiet")}[command]
    for kind, (handler, *needles) in ANSWERS.items():
        flaky = FlakyQdrant()
        monkeypatch.setattr(flaky, "serve", handler)
        for module in ("embedrank.plugin.ingest", "embedrank.plugin.evaluate"):
            monkeypatch.setattr(f"{module}.open_client", lambda path, url, api_key=None, f=flaky:
                                flaky_client(f, api_key=api_key))
        line = one_line(run(*args, "--url", url, "--api-key", KEY), *needles)
        assert "admin" not in line, kind
    TALLY.add("errors", f"`embedrank {command}`: server answers 401 / 403 / 404 / not JSON / "
              "other JSON", len(ANSWERS), len(ANSWERS), 0, "one line, no credential")


def test_malformed_urls_are_one_line(embedder_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a line"}\n')
    urls = {
        f"http://u:{PASSWORD}@localhost:99999": "has no valid port",
        "http://localhost:abc": "has no valid port",
        "http://localhost:0": "port 0 is not a port",
        "localhost:6333": "must start with http:// or https://",
        "ftp://localhost:6333": "must start with http:// or https://",
        f"http://u:{PASSWORD}@:6333": "has no valid host name",
        "http://not a host:6333": "has no valid host name",
    }
    for url, message in urls.items():
        for args in (("ingest", "docs", data), ("query", "docs", "q")):
            line = one_line(run(*args, "--embedder", embedder_dir, "--url", url), message)
            assert "--url" in line
    one_line(run("ingest", "docs", data, "--embedder", embedder_dir, "--attempts", 1,
                 "--url", f"http://u:{PASSWORD}@127.0.0.1:9"), "failed 1 times")
    TALLY.add("errors", "malformed --url (port, scheme, host; password inside)", len(urls),
              len(urls), 0, "one line, password masked")


DEEP = '{"text": "x", "a": ' + "[" * 100_000 + "]" * 100_000 + "}"
BAD_LINES = {
    "deeply nested JSON": (DEEP, "nested too deeply"),
    "a 5,000-digit integer": ('{"text": "x", "n": ' + "9" * 5000 + "}", "a number with 5000 digits"),
    "1e999": ('{"text": "x", "n": 1e999}', "too large for a float"),
    "NaN": ('{"text": "x", "n": NaN}', "NaN is not a JSON number"),
    "Infinity": ('{"text": "x", "n": -Infinity}', "-Infinity is not a JSON number"),
}


def test_malformed_lines_name_file_and_line(embedder_dir, tmp_path):
    data, beir, train = tmp_path / "d.jsonl", tmp_path / "beir", tmp_path / "train.jsonl"
    beir.mkdir()
    for kind, (line, message) in BAD_LINES.items():
        data.write_text('{"text": "fine"}\n' + line + "\n")
        if kind == "deeply nested JSON":  # through the CLI once; the rest through its reader
            one_line(run("ingest", "docs", data, "--embedder", embedder_dir, "--path",
                         tmp_path / "db"), "d.jsonl:2: ", message)
        with pytest.raises(InputError, match=f"d.jsonl:2: .*{re.escape(message)}"):
            for number, record in read_records(data):
                _checked(data, number, record, "text")
        (beir / "corpus.jsonl").write_text(line.replace('"text"', '"_id": "1", "text"') + "\n")
        with pytest.raises(InputError, match=f"corpus.jsonl:1: .*{re.escape(message)}"):
            load_beir(beir)
        train.write_text('{"query": "q", "pos": ["p"]}\n' + line.replace('"text"', '"query"') + "\n")
        with pytest.raises(InputError, match=f"train.jsonl:2: .*{re.escape(message)}"):
            load_examples(train)
    TALLY.add("bad input", "malformed lines: deep nesting, huge numbers, NaN / Infinity "
              "(ingest, BEIR, train data)", len(BAD_LINES), len(BAD_LINES), 0, "FILE:LINE error")


def test_a_database_held_by_another_process(embedder_dir, tmp_path):
    db = tmp_path / "db"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, qdrant_client; c = qdrant_client.QdrantClient(path="
         f"{str(db)!r}); print('open', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        data = tmp_path / "d.jsonl"
        data.write_text('{"text": "a line"}\n')
        one_line(run("ingest", "docs", data, "--embedder", embedder_dir, "--path", db),
                 "the --path database is locked by another process")
        one_line(run("query", "docs", "q", "--embedder", embedder_dir, "--path", db),
                 "locked by another process")
    finally:
        holder.communicate("", timeout=60)
    assert run("ingest", "docs", data, "--embedder", embedder_dir, "--path", db).exit_code == 0
    TALLY.add("errors", "two processes on one --path (ingest, query)", 2, 2, 0,
              "one line: locked by another process")

