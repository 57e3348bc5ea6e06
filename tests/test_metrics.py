"""Retrieval metrics against hand-computed values (arithmetic in the comments) and trec_eval."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from embedrank.beir import load_beir, read_trec_run, write_trec_run
from embedrank.errors import InputError
from embedrank.metrics import evaluate, mrr_at_k, ndcg_at_k, per_query, rank, recall_at_k

L3 = math.log2(3)  # discount at rank 2

# rels [0, 2, 1] at ranks 1..3
GRADED_RUN = {"q": {"d1": 0.9, "d2": 0.8, "d3": 0.7}}
GRADED_QRELS = {"q": {"d1": 0, "d2": 2, "d3": 1}}


def test_ndcg_graded_linear_gain() -> None:
    # DCG = 0/log2(2) + 2/log2(3) + 1/log2(4) = 1.26186 + 0.5 = 1.76186
    # IDCG = ideal rels [2, 1]: 2/log2(2) + 1/log2(3) = 2 + 0.63093 = 2.63093
    expected = (2 / L3 + 1 / 2) / (2 + 1 / L3)
    assert ndcg_at_k(GRADED_RUN, GRADED_QRELS, k=10) == pytest.approx(expected)
    assert expected == pytest.approx(0.669672, abs=1e-6)  # 1.76186 / 2.63093


def test_ndcg_cutoffs() -> None:
    # k=2: DCG = 2/log2(3); IDCG = 2 + 1/log2(3) (both relevant docs fit in 2 slots)
    assert ndcg_at_k(GRADED_RUN, GRADED_QRELS, k=2) == pytest.approx((2 / L3) / (2 + 1 / L3))
    # k=1: the top doc d1 has rel 0 -> DCG = 0
    assert ndcg_at_k(GRADED_RUN, GRADED_QRELS, k=1) == 0.0


def test_idcg_truncated_at_k() -> None:
    run = {"q": {"a": 3.0, "x": 2.0, "y": 1.0}}
    qrels = {"q": {"a": 1, "b": 1, "c": 1}}
    # k=1: DCG = 1, IDCG = 1 (only one ideal slot) -> 1.0
    assert ndcg_at_k(run, qrels, k=1) == pytest.approx(1.0)
    # k=3: DCG = 1, IDCG = 1 + 1/log2(3) + 1/log2(4) = 2.13093
    assert ndcg_at_k(run, qrels, k=3) == pytest.approx(1 / (1 + 1 / L3 + 0.5))


def test_ties_break_by_docid_descending() -> None:
    run = {"q": {"a": 1.0, "b": 1.0, "c": 0.5}}
    # trec_eval comp_sim_docno: equal scores -> strcmp(ptr2, ptr1) -> "b" before "a"
    assert rank(run["q"]) == ["b", "a", "c"]
    qrels = {"q": {"a": 1}}
    # relevant "a" lands at rank 2: RR = 1/2; nDCG@1 = 0; nDCG@10 = (1/log2(3)) / 1
    assert mrr_at_k(run, qrels, k=10) == pytest.approx(0.5)
    assert ndcg_at_k(run, qrels, k=1) == 0.0
    assert ndcg_at_k(run, qrels, k=10) == pytest.approx(1 / L3)


def test_ties_compare_code_points_not_numbers() -> None:
    # string order, as strcmp: "9" > "10" because '9' > '1'
    assert rank({"10": 0.0, "9": 0.0, "2": 0.0}) == ["9", "2", "10"]


def test_mrr_first_relevant_at_rank_3() -> None:
    run = {"q": {"x": 0.9, "y": 0.8, "z": 0.7, "w": 0.6}}
    qrels = {"q": {"z": 1, "w": 2}}
    assert mrr_at_k(run, qrels, k=10) == pytest.approx(1 / 3)  # first relevant: rank 3
    assert mrr_at_k(run, qrels, k=3) == pytest.approx(1 / 3)
    assert mrr_at_k(run, qrels, k=2) == 0.0  # outside the cutoff


def test_non_positive_relevance_is_not_relevant() -> None:
    run = {"q": {"x": 0.9, "y": 0.8, "z": 0.7}}
    qrels = {"q": {"x": 0, "y": -1, "z": 1}}
    assert recall_at_k(run, qrels, k=100) == 1.0  # 1 relevant (z) of 1
    assert mrr_at_k(run, qrels, k=10) == pytest.approx(1 / 3)
    # DCG = 1/log2(4) = 0.5; IDCG = 1/log2(2) = 1
    assert ndcg_at_k(run, qrels, k=10) == pytest.approx(0.5)


def test_recall_with_fewer_than_k_results() -> None:
    run = {"q": {"a": 0.9, "x": 0.1}}
    qrels = {"q": {"a": 1, "b": 1, "c": 2, "d": 1}}
    # 1 relevant retrieved / 4 relevant judged; the short run is not rescaled
    assert recall_at_k(run, qrels, k=100) == pytest.approx(0.25)
    assert recall_at_k(run, qrels, k=1) == pytest.approx(0.25)


def test_empty_results_score_zero() -> None:
    qrels = {"q": {"a": 1}}
    assert evaluate({"q": {}}, qrels) == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    assert per_query({"q": {}}, qrels) == {"q": {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}}


def test_query_sets_follow_trec_eval() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": {"a": 1.0}, "q3": {"c": 1.0}}  # q2 not retrieved, q3 not judged
    # default: mean over run ∩ qrels = {q1} -> 1.0
    assert per_query(run, qrels).keys() == {"q1"}
    assert ndcg_at_k(run, qrels) == 1.0
    # complete=True (trec_eval -c): q2 counts as 0 -> (1 + 0) / 2
    assert ndcg_at_k(run, qrels, complete=True) == pytest.approx(0.5)
    assert evaluate({}, qrels) == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}


def test_query_without_relevant_docs_counts_as_zero() -> None:
    # trec_eval evaluates judged queries even when no judgment is positive
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}}
    run = {"q1": {"a": 1.0}, "q2": {"b": 1.0}}
    assert evaluate(run, qrels) == {
        "ndcg@10": pytest.approx(0.5),  # (1 + 0) / 2
        "recall@100": pytest.approx(0.5),
        "mrr@10": pytest.approx(0.5),
    }


def test_evaluate_names_and_several_cutoffs() -> None:
    out = evaluate(GRADED_RUN, GRADED_QRELS, ndcg_at=(1, 3), recall_at=(1, 2), mrr_at=(1,))
    assert list(out) == ["ndcg@1", "ndcg@3", "recall@1", "recall@2", "mrr@1"]
    assert out["recall@1"] == 0.0 and out["recall@2"] == pytest.approx(0.5)


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_cutoff(k: object) -> None:
    with pytest.raises(InputError, match="positive integer"):
        evaluate(GRADED_RUN, GRADED_QRELS, ndcg_at=(k,))  # type: ignore[arg-type]


def test_nan_score_rejected() -> None:
    with pytest.raises(InputError, match="real numbers"):
        ndcg_at_k({"q": {"a": float("nan")}}, {"q": {"a": 1}})


def test_matches_pytrec_eval_on_random_runs() -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = random.Random(7)
    for _ in range(100):
        # ties (0.5, 1.0), negative and zero grades, empty and missing queries all occur
        run = {
            f"q{q}": {
                f"d{rng.randint(0, 20)}": rng.choice([0.5, 1.0, rng.random()])
                for _ in range(rng.randint(0, 15))
            }
            for q in range(4)
            if rng.random() < 0.8
        }
        qrels = {
            f"q{q}": {
                f"d{rng.randint(0, 20)}": rng.choice([-1, 0, 1, 1, 2, 3])
                for _ in range(rng.randint(1, 6))
            }
            for q in range(4)
        }
        ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.3,10", "recall.5"}).evaluate(run)
        mine = per_query(run, qrels, ndcg_at=(3, 10), recall_at=(5,), mrr_at=())
        assert mine.keys() == ref.keys()
        for q in ref:
            assert mine[q]["ndcg@3"] == pytest.approx(ref[q]["ndcg_cut_3"], abs=1e-12)
            assert mine[q]["ndcg@10"] == pytest.approx(ref[q]["ndcg_cut_10"], abs=1e-12)
            assert mine[q]["recall@5"] == pytest.approx(ref[q]["recall_5"], abs=1e-12)


# ---------------------------------------------------------------- TREC run files


def test_trec_run_round_trip(tmp_path: Path) -> None:
    run = {"q1": {"a": 1.0, "b": 1.0, "c": 0.1 + 0.2}, "q2": {"x": -3.5e-7}}
    path = tmp_path / "run.trec"
    write_trec_run(run, path, tag="mine")
    assert path.read_text().splitlines() == [
        "q1 Q0 b 1 1.0 mine",  # tie with "a": docid descending
        "q1 Q0 a 2 1.0 mine",
        "q1 Q0 c 3 0.30000000000000004 mine",  # repr: exact float round trip
        "q2 Q0 x 1 -3.5e-07 mine",
    ]
    assert read_trec_run(path) == run


def test_trec_run_rejects_whitespace_ids(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="whitespace"):
        write_trec_run({"q 1": {"a": 1.0}}, tmp_path / "r")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("q1 Q0 b 2 0.5", "expected 6 fields"),
        ("q1 Q0 b 2 high tag", "not a number"),
        ("q1 Q0 a 2 0.5 tag", "listed twice"),
    ],
)
def test_read_trec_run_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "run.trec"
    path.write_text(f"q1 Q0 a 1 0.9 tag\n\n{line}\n")
    with pytest.raises(InputError, match=rf"run\.trec:3: .*{message}"):
        read_trec_run(path)


# ---------------------------------------------------------------- BEIR folders


def _beir(root: Path, corpus: list[str], queries: list[str], qrels: list[str]) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(line + "\n" for line in corpus))
    (root / "queries.jsonl").write_text("".join(line + "\n" for line in queries))
    (root / "qrels" / "test.tsv").write_text("".join(line + "\n" for line in qrels))
    return root


CORPUS = [
    json.dumps({"_id": "d1", "title": "T", "text": "one"}),
    json.dumps({"_id": "d2", "text": "two"}),
]
QUERIES = [
    json.dumps({"_id": "q1", "text": "first?"}),
    json.dumps({"_id": "q2", "text": "unjudged"}),
]
QRELS = ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\td2\t0"]


def test_load_beir(tmp_path: Path) -> None:
    corpus, queries, qrels = load_beir(_beir(tmp_path, CORPUS, QUERIES, QRELS))
    assert corpus == {"d1": {"title": "T", "text": "one"}, "d2": {"title": "", "text": "two"}}
    assert queries == {"q1": "first?"}  # restricted to judged queries, as BEIR does
    assert qrels == {"q1": {"d1": 1, "d2": 0}}


@pytest.mark.parametrize(
    ("which", "lines", "pattern"),
    [
        ("corpus", [CORPUS[0], "{not json"],
         r"corpus\.jsonl:2: invalid JSON \(Expecting property name .* at column 2\)"),
        ("corpus", [CORPUS[0], json.dumps({"text": "x"})], r"corpus\.jsonl:2: missing '_id'"),
        ("corpus", [CORPUS[0], CORPUS[0]], r"corpus\.jsonl:2: duplicate _id"),
        ("queries", [json.dumps({"_id": "q1", "text": 3})], r"queries\.jsonl:1: field 'text'"),
        ("qrels", QRELS[:2] + ["q1\td2\thigh"], r"test\.tsv:3: score 'high' is not an integer"),
        ("qrels", QRELS[:2] + ["q1\td2"], r"test\.tsv:3: expected 3 tab-separated fields"),
        ("qrels", QRELS[:2] + ["q9\td2\t1"], r"test\.tsv: 1 query ids have no entry"),
    ],
)
def test_load_beir_errors(tmp_path: Path, which: str, lines: list[str], pattern: str) -> None:
    parts = {"corpus": CORPUS, "queries": QUERIES, "qrels": QRELS, which: lines}
    root = _beir(tmp_path, parts["corpus"], parts["queries"], parts["qrels"])
    with pytest.raises(InputError, match=pattern):
        load_beir(root)


def test_load_beir_missing_split(tmp_path: Path) -> None:
    root = _beir(tmp_path, CORPUS, QUERIES, QRELS)
    with pytest.raises(InputError, match=r"dev\.tsv not found"):
        load_beir(root, split="dev")
