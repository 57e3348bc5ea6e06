"""`embedrank eval`: tiny end-to-end runs on CPU, checked against a brute-force numpy ranking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from embedrank.beir import document_text, load_beir, read_trec_run
from embedrank.cli.main import main
from embedrank.errors import InputError
from embedrank.metrics import evaluate
from embedrank.plugin.evaluate import EvalConfig, run_eval
from embedrank.runtime import Embedder, Reranker

TOPICS = ["cooking pasta", "training a dog", "fixing a bicycle", "planting tomatoes",
          "learning the piano", "saving money", "running a marathon", "painting a wall"]


def write_beir(out: Path, corpus: list[dict], queries: dict[str, str],
               qrels: list[tuple[str, str, int]]) -> Path:
    (out / "qrels").mkdir(parents=True)
    with (out / "corpus.jsonl").open("w") as fh:
        fh.writelines(json.dumps(d) + "\n" for d in corpus)
    with (out / "queries.jsonl").open("w") as fh:
        fh.writelines(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items())
    with (out / "qrels" / "test.tsv").open("w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        fh.writelines(f"{q}\t{d}\t{r}\n" for q, d, r in qrels)
    return out


@pytest.fixture()
def small_beir(tmp_path: Path) -> Path:
    """8 topics x 3 passages (some titled), one empty passage, graded qrels."""
    corpus, qrels = [], []
    for i, topic in enumerate(TOPICS):
        for j in range(3):
            doc = {"_id": f"d{i}-{j}", "text": f"Notes {j} on {topic}: step {j + 1} of the guide."}
            if j == 0:
                doc["title"] = topic.title()
            corpus.append(doc)
            qrels.append((f"q{i}", f"d{i}-{j}", 2 if j == 0 else 1))
    corpus.append({"_id": "empty", "title": "", "text": "   "})
    queries = {f"q{i}": f"how do I get started with {t}?" for i, t in enumerate(TOPICS)}
    return write_beir(tmp_path / "small", corpus, queries, qrels)


@pytest.fixture()
def chatterbot_slice(tmp_path: Path) -> Path:
    """The test split's first 12 queries against their answers plus 40 other passages."""
    pytest.importorskip("yaml")
    from embedrank.datasets import chatterbot_to_beir

    chatterbot_to_beir(tmp_path / "full")
    corpus, queries, qrels = load_beir(tmp_path / "full")
    keep_q = sorted(qrels)[:12]
    keep_d = {d for q in keep_q for d in qrels[q]} | set(sorted(corpus)[:40])
    return write_beir(tmp_path / "slice",
                      [{"_id": d, **corpus[d]} for d in sorted(keep_d)],
                      {q: queries[q] for q in keep_q},
                      [(q, d, r) for q in keep_q for d, r in qrels[q].items()])


def brute_force(data: Path, embedder_dir: Path, reranker_dir: Path | None, top_k: int,
                instruction: str | None = None) -> dict[str, dict]:
    """Exact top-k by numpy dot products of Embedder vectors; rerank of those candidates."""
    corpus, queries, _ = load_beir(data)
    ids = [d for d, doc in corpus.items() if doc["text"].strip()]
    texts = [(corpus[d]["title"] + " " + corpus[d]["text"]).strip() for d in ids]
    embedder = Embedder.load(embedder_dir)
    docs = embedder.embed_documents(texts)
    qids = list(queries)
    scores = embedder.embed_queries([queries[q] for q in qids], instruction) @ docs.T
    runs: dict[str, dict] = {"embed": {}, "rerank": {}}
    reranker = Reranker.load(reranker_dir) if reranker_dir else None
    for qid, row in zip(qids, scores, strict=True):
        top = np.argsort(-row, kind="stable")[:top_k]
        runs["embed"][qid] = {ids[i]: float(row[i]) for i in top}
        if reranker is not None:
            rr = reranker.score(queries[qid], [texts[i] for i in top], instruction)
            runs["rerank"][qid] = {ids[i]: float(s) for i, s in zip(top, rr, strict=True)}
    return runs


def test_document_text_joins_title_as_beir() -> None:
    assert document_text({"title": "Title", "text": "body "}) == "Title body"
    assert document_text({"title": "", "text": " body"}) == "body"
    assert document_text({"text": "body"}) == "body"


def test_metrics_equal_brute_force(small_beir, embedder_dir, reranker_dir) -> None:
    cfg = EvalConfig(top_k=5, batch_size=7, progress=False, instruction="Find the guide")
    result = run_eval(small_beir, embedder_dir, reranker_dir, cfg)
    _, _, qrels = load_beir(small_beir)
    expected = brute_force(small_beir, embedder_dir, reranker_dir, 5, "Find the guide")
    assert result.info["passages"] == 24 and result.info["empty_passages_skipped"] == 1
    for stage in ("embed", "rerank"):
        assert result.metrics[stage] == evaluate(expected[stage], qrels, (5,), (5,), (5,))
        assert result.runs[stage].keys() == expected[stage].keys()
        for qid, docs in expected[stage].items():
            assert result.runs[stage][qid].keys() == docs.keys()  # the same candidates
            np.testing.assert_allclose([result.runs[stage][qid][d] for d in docs],
                                       list(docs.values()), atol=1e-5)
    assert list(result.metrics["embed"]) == ["ndcg@5", "recall@5", "mrr@5"]  # cut at --top-k 5


def test_cli_on_chatterbot_slice(chatterbot_slice, embedder_dir, reranker_dir,
                                 tmp_path) -> None:
    out = tmp_path / "out"
    args = ["eval", "--data", str(chatterbot_slice), "--embedder", str(embedder_dir),
            "--reranker", str(reranker_dir), "--top-k", "20", "--quiet",
            "--json", str(out / "m.json"), "--run-out", str(out / "run.trec"),
            "--report", str(out / "report")]
    out.mkdir()
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "embed + rerank" in res.output and "ndcg@10" in res.output
    metrics = json.loads((out / "m.json").read_text())
    assert list(metrics) == ["embed", "rerank"]
    assert all(list(m) == ["ndcg@10", "recall@20", "mrr@10"] for m in metrics.values())
    assert "recall@20" in res.output and "recall@100" not in res.output
    _, _, qrels = load_beir(chatterbot_slice)
    expected = brute_force(chatterbot_slice, embedder_dir, reranker_dir, 20)
    at = ((10,), (20,), (10,))
    assert metrics == {stage: evaluate(expected[stage], qrels, *at) for stage in metrics}
    run = read_trec_run(out / "run.trec")  # the final (reranked) ranking
    assert {q: set(d) for q, d in run.items()} == {q: set(d) for q, d in expected["rerank"].items()}
    assert evaluate(run, qrels, *at) == metrics["rerank"]
    assert (out / "run.trec").read_text().split("\n")[0].endswith(" embedrank-rerank")
    report = out / "report"
    assert (report / "metrics.png").stat().st_size > 1000
    text = (report / "eval.md").read_text()
    assert "| ndcg@10 |" in text and "metrics.png" in text


def test_embed_only_json_has_no_rerank_and_path_rerun_resumes(small_beir, embedder_dir,
                                                              tmp_path) -> None:
    db = tmp_path / "db"
    args = ["eval", "--data", str(small_beir), "--embedder", str(embedder_dir), "--quiet",
            "--path", str(db), "--top-k", "3"]
    first, second = tmp_path / "1.json", tmp_path / "2.json"
    for out in (first, second):  # the second run finds every passage indexed already
        res = CliRunner().invoke(main, args + ["--json", str(out)])
        assert res.exit_code == 0, res.output
    assert list(json.loads(first.read_text())) == ["embed"]
    assert first.read_text() == second.read_text()


def test_polluted_collection_is_refused(small_beir, embedder_dir, tmp_path) -> None:
    db = str(tmp_path / "db")
    cfg = EvalConfig(progress=False)
    run_eval(small_beir, embedder_dir, None, cfg, path=db)
    other = tmp_path / "other"
    write_beir(other, [{"_id": "x", "text": "another corpus"}], {"q": "anything"}, [("q", "x", 1)])
    with pytest.raises(InputError, match="fresh collection"):
        run_eval(other, embedder_dir, None, cfg, path=db)


def test_bad_options_fail_with_a_message(small_beir, embedder_dir) -> None:
    res = CliRunner().invoke(main, ["eval", "--data", str(small_beir), "--embedder",
                                    str(embedder_dir), "--top-k", "0"])
    assert res.exit_code == 1 and "--top-k must be a positive integer" in res.output


def test_device_option_reaches_both_models(small_beir, embedder_dir, reranker_dir,
                                           monkeypatch) -> None:
    import onnxruntime

    from embedrank.plugin import evaluate as ev

    loaded = []
    real_load = ev.Reranker.load
    monkeypatch.setattr(ev.Reranker, "load", classmethod(
        lambda cls, path, device="cpu", **kw: loaded.append(device) or real_load(path, device)))
    result = run_eval(small_beir, embedder_dir, reranker_dir,
                      EvalConfig(top_k=5, progress=False, device="cpu"))
    assert loaded == ["cpu"] and result.info["device"] == "cpu"
    assert result.info["machine"].endswith("(CPU)")
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: --device cuda would run")
    res = CliRunner().invoke(main, ["eval", "--data", str(small_beir), "--embedder",
                                    str(embedder_dir), "--device", "cuda"])
    last = res.output.strip().splitlines()[-1]
    assert res.exit_code == 1 and last.startswith("error: ") and "onnxruntime-gpu" in last
