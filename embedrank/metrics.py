"""Retrieval metrics that reproduce ``trec_eval`` (as BEIR reports it through pytrec_eval).

Pure Python, no torch. A *run* is ``{qid: {docid: score}}``; *qrels* are
``{qid: {docid: relevance}}`` with integer, graded relevance.

Conventions, taken from trec_eval 9.x (``form_res_rels.c``, ``m_ndcg_cut.c``, ``m_recall.c``):

* The run's own order and rank column are ignored: each query's documents are sorted by score
  descending, ties broken by docid **descending** (``comp_sim_docno`` is
  ``strcmp(ptr2->docno, ptr1->docno)``). Python compares ``str`` by code point, which is the
  same order as ``strcmp`` on UTF-8 bytes.
* nDCG@k: linear gain (the qrels value), ``DCG = sum(rel_i / log2(rank_i + 1))`` over the top
  k with ranks from 1, only ``rel > 0`` counts; IDCG is the DCG of the qrels' positive
  relevances sorted descending, truncated at k. IDCG = 0 gives 0.
* recall@k and MRR@k: relevant means ``rel >= 1``; ``relevance <= 0`` is non-relevant.
  recall@k = relevant in top k / all relevant in the qrels (0 when there are none), so a run
  shorter than k is not rescaled. MRR@k = 1 / rank of the first relevant doc in the top k.
  (trec_eval's ``recip_rank`` has no cutoff; BEIR's own MRR@k truncates at k as we do.)
* Which queries count: like trec_eval without ``-c``, the mean is over queries present in both
  the run and the qrels. A query in the qrels but absent from the run is ignored, unless
  ``complete=True`` (trec_eval ``-c``), which scores it 0. A query present in the run with an
  empty result dict counts, with score 0. A query whose qrels hold no relevant document is *not*
  skipped: trec_eval scores it 0 on every measure (its CHANGELOG: only queries with no relevance
  information at all are ignored).

TREC run files and BEIR folders are read and written by :mod:`embedrank.beir`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from embedrank.errors import InputError

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def rank(scores: Mapping[str, float]) -> list[str]:
    """Docids in trec_eval order: score descending, ties by docid descending."""
    for docid, score in scores.items():
        if not isinstance(score, (int, float)) or math.isnan(score):
            raise InputError(f"score of doc {docid!r} is {score!r}; scores must be real numbers")
    return sorted(scores, key=lambda d: (scores[d], d), reverse=True)


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"cutoff k must be a positive integer, got {k!r}")


def _ndcg(ranked: list[str], judged: Mapping[str, int], k: int) -> float:
    dcg = sum(
        judged.get(d, 0) / math.log2(i + 2)
        for i, d in enumerate(ranked[:k])
        if judged.get(d, 0) > 0
    )
    ideal = sorted((r for r in judged.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def _recall(ranked: list[str], judged: Mapping[str, int], k: int) -> float:
    n_rel = sum(1 for r in judged.values() if r >= 1)
    if n_rel == 0:
        return 0.0
    return sum(1 for d in ranked[:k] if judged.get(d, 0) >= 1) / n_rel


def _rr(ranked: list[str], judged: Mapping[str, int], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if judged.get(d, 0) >= 1:
            return 1.0 / (i + 1)
    return 0.0


_MEASURES = {"ndcg": _ndcg, "recall": _recall, "mrr": _rr}


def _evaluated_queries(run: Run, qrels: Qrels, complete: bool) -> list[str]:
    if complete:
        return list(qrels)
    return [q for q in qrels if q in run]


def _wanted(ndcg_at: Iterable[int], recall_at: Iterable[int], mrr_at: Iterable[int]) -> list[tuple[str, int]]:
    """(measure, k) pairs in report order: nDCG, recall, MRR."""
    return [(name, k) for name, ks in (("ndcg", ndcg_at), ("recall", recall_at), ("mrr", mrr_at))
            for k in ks]


def per_query(
    run: Run,
    qrels: Qrels,
    ndcg_at: Iterable[int] = (10,),
    recall_at: Iterable[int] = (100,),
    mrr_at: Iterable[int] = (10,),
    complete: bool = False,
) -> dict[str, dict[str, float]]:
    """``{qid: {"ndcg@10": .., ...}}`` for every evaluated query (see the module docstring)."""
    wanted = _wanted(ndcg_at, recall_at, mrr_at)
    for _, k in wanted:
        _check_k(k)
    out: dict[str, dict[str, float]] = {}
    for qid in _evaluated_queries(run, qrels, complete):
        ranked = rank(run.get(qid, {}))
        judged = qrels[qid]
        out[qid] = {f"{name}@{k}": _MEASURES[name](ranked, judged, k) for name, k in wanted}
    return out


def evaluate(run: Run, qrels: Qrels, ndcg_at: Iterable[int] = (10,), recall_at: Iterable[int] = (100,),
             mrr_at: Iterable[int] = (10,), complete: bool = False) -> dict[str, float]:
    """Mean of each metric over the evaluated queries: ``{"ndcg@10": .., "recall@100": ..}``.

    Returns 0.0 for every metric when no query is evaluated (trec_eval prints nothing then).
    """
    ndcg_at, recall_at, mrr_at = tuple(ndcg_at), tuple(recall_at), tuple(mrr_at)
    names = [f"{name}@{k}" for name, k in _wanted(ndcg_at, recall_at, mrr_at)]
    scores = per_query(run, qrels, ndcg_at, recall_at, mrr_at, complete)
    n = len(scores)
    return {m: (sum(s[m] for s in scores.values()) / n if n else 0.0) for m in names}


def ndcg_at_k(run: Run, qrels: Qrels, k: int = 10, complete: bool = False) -> float:
    """Mean nDCG@k (trec_eval ``ndcg_cut.k``)."""
    return evaluate(run, qrels, (k,), (), (), complete)[f"ndcg@{k}"]


def recall_at_k(run: Run, qrels: Qrels, k: int = 100, complete: bool = False) -> float:
    """Mean recall@k (trec_eval ``recall.k``)."""
    return evaluate(run, qrels, (), (k,), (), complete)[f"recall@{k}"]


def mrr_at_k(run: Run, qrels: Qrels, k: int = 10, complete: bool = False) -> float:
    """Mean reciprocal rank of the first relevant doc within the top k."""
    return evaluate(run, qrels, (), (), (k,), complete)[f"mrr@{k}"]
