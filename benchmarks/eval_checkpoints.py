"""Held-out nDCG@10 / MRR@10 of torch checkpoints on a BEIR folder: embedder alone, and
embedder + reranker (the reranker reorders the embedder's top ``--depth``).

    python benchmarks/eval_checkpoints.py --beir DIR --embedder CKPT [--pooling mean]
        [--reranker CKPT --depth 10] [--limit N]

Prints one JSON line per run. Used for docs/training.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beir", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--embedder", required=True, nargs="+")
    ap.add_argument("--pooling", choices=["last", "mean"], default="last")
    ap.add_argument("--reranker", nargs="*", default=[])
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--limit", type=int, default=None, help="First N queries only.")
    ap.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args()

    from embedrank.train import Embedder, Reranker
    from embedrank.train.data import EvalSet
    from embedrank.train.encoder import MeanPoolEmbedder
    from embedrank.train.evaluate import embedder_run, ranking_metrics, reranker_run, top_k

    data = EvalSet.from_beir(args.beir, args.split)
    if args.limit:
        keep = list(data.queries)[:args.limit]
        data = dataclasses.replace(data, queries={q: data.queries[q] for q in keep},
                                   qrels={q: data.qrels[q] for q in keep})
    cls = MeanPoolEmbedder if args.pooling == "mean" else Embedder
    torch.manual_seed(0)
    for emb_src in args.embedder:
        start = time.perf_counter()
        run = embedder_run(cls.from_pretrained(emb_src, max_length=args.max_length), data)
        print(json.dumps({"embedder": emb_src, **ranking_metrics(run, data.qrels),
                          "queries": len(data.queries), "docs": len(data.corpus),
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)
        candidates = top_k(run, args.depth)
        if args.reranker:  # the same candidates in the embedder's order: what reranking changes
            shallow = {q: {d: run[q][d] for d in docs} for q, docs in candidates.items()}
            print(json.dumps({"embedder": emb_src, "depth": args.depth,
                              **ranking_metrics(shallow, data.qrels)}), flush=True)
        for rr_src in args.reranker:
            start = time.perf_counter()
            reranker = Reranker.from_pretrained(rr_src, max_length=args.max_length)
            reranked = reranker_run(reranker, data, candidates)
            print(json.dumps({"embedder": emb_src, "reranker": rr_src, "depth": args.depth,
                              **ranking_metrics(reranked, data.qrels),
                              "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
