"""Held-out ranking quality of the torch modules: nDCG@10 / Recall@100 / MRR@10 over an :class:`EvalSet`.

The metric math is :mod:`embedrank.metrics` (torch-free, trec_eval conventions); this
module only produces runs ``{qid: {docid: score}}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from embedrank.metrics import evaluate
from embedrank.train.data import EvalSet
from embedrank.train.modeling import Embedder, Reranker


def autocast(device: torch.device):
    """bf16 autocast on CUDA, a no-op elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def _encode(model: Embedder, seqs: Sequence[Sequence[int]], batch_size: int) -> torch.Tensor:
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # less padding
    out = torch.empty(len(seqs), model.dim)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        with autocast(model.device):
            emb = model(**model.batch([seqs[i] for i in rows]))
        out[rows] = emb.float().cpu()
    return out


def embed_queries(model: Embedder, queries: Mapping[str, tuple[str, str | None]],
                  batch_size: int = 32) -> torch.Tensor:
    seqs = [model.tokenize_queries([text], instruction)[0] for text, instruction in
            queries.values()]
    return _encode(model, seqs, batch_size)


def embedder_run(model: Embedder, data: EvalSet, batch_size: int = 32,
                 depth: int = 100) -> dict[str, dict[str, float]]:
    """Top ``depth`` documents per query by cosine, over every document of the eval set."""
    was_training = model.training
    model.eval()
    q = embed_queries(model, data.queries, batch_size)
    docids = list(data.corpus)
    d = _encode(model, model.tokenize_documents(list(data.corpus.values())), batch_size)
    model.train(was_training)
    scores = q @ d.T
    top = scores.topk(min(depth, len(docids)), dim=1)
    rows = zip(data.queries, top.values.tolist(), top.indices.tolist(), strict=True)
    return {qid: {docids[j]: s for s, j in zip(vals, idx, strict=True)} for qid, vals, idx in rows}


@torch.no_grad()
def reranker_run(model: Reranker, data: EvalSet,
                 candidates: Mapping[str, Sequence[str]] | None = None,
                 batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Rerank ``candidates[qid]`` (docids; default: every document) with the yes-no logit."""
    was_training = model.training
    model.eval()
    run = {}
    for qid, (text, instruction) in data.queries.items():
        docids = list(candidates[qid]) if candidates is not None else list(data.corpus)
        seqs = model.tokenize(text, [data.corpus[d] for d in docids], instruction)
        logits = []
        for start in range(0, len(seqs), batch_size):
            with autocast(model.device):
                logits += model(**model.batch(seqs[start:start + batch_size])).float().tolist()
        run[qid] = dict(zip(docids, logits, strict=True))
    model.train(was_training)
    return run


def top_k(run: Mapping[str, Mapping[str, float]], k: int) -> dict[str, list[str]]:
    """Each query's ``k`` best docids (for reranking a first-stage run)."""
    return {qid: sorted(scores, key=scores.get, reverse=True)[:k] for qid, scores in run.items()}


def ranking_metrics(run, qrels) -> dict[str, float]:
    """``{"ndcg@10": .., "recall@100": .., "mrr@10": ..}`` (means over the queries), the
    figures ``embedrank eval`` reports."""
    return evaluate(run, qrels, ndcg_at=(10,), recall_at=(100,), mrr_at=(10,))
