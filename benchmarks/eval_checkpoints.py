"""Held-out nDCG@10 / Recall@100 / MRR@10 of torch checkpoints on a BEIR folder: embedder alone,
and embedder + reranker (the reranker reorders the embedder's top ``--depth``).

    python benchmarks/eval_checkpoints.py --beir DIR --embedder CKPT [CKPT ...] [--pooling mean]
        [--reranker CKPT --depth 100] [--limit N] [--device cuda] [--out results.jsonl]

The same metrics as ``embedrank eval`` (embedrank.metrics, trec_eval conventions) on the torch
modules instead of exported graphs, so checkpoints can be compared before any export; on CUDA
under bf16 autocast. Prints (and appends to ``--out``) one JSON line per run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch


def _emit(record: dict, out: str | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beir", required=True, help="BEIR folder.")
    ap.add_argument("--split", default="test", help="Qrels split, ranked against the whole corpus.")
    ap.add_argument("--embedder", required=True, nargs="+", help="Embedder checkpoints.")
    ap.add_argument("--pooling", choices=["last", "mean"], default="last")
    ap.add_argument("--reranker", nargs="*", default=[], help="Reranker checkpoints.")
    ap.add_argument("--depth", type=int, default=100, help="Embedder candidates reranked.")
    ap.add_argument("--limit", type=int, default=None, help="First N queries only.")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64, help="Sequences per forward pass.")
    ap.add_argument("--device", default=None, help="cpu or cuda [cuda when available].")
    ap.add_argument("--out", default=None, help="Also append the JSON lines to this file.")
    args = ap.parse_args()

    from embedrank.train import Embedder, Reranker
    from embedrank.train.data import EvalSet
    from embedrank.train.encoder import MeanPoolEmbedder
    from embedrank.train.evaluate import embedder_run, ranking_metrics, reranker_run, top_k

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = EvalSet.from_beir(args.beir, args.split)
    if args.limit:
        keep = list(data.queries)[:args.limit]
        data = dataclasses.replace(data, queries={q: data.queries[q] for q in keep},
                                   qrels={q: data.qrels[q] for q in keep})
    cls = MeanPoolEmbedder if args.pooling == "mean" else Embedder
    size = {"queries": len(data.queries), "docs": len(data.corpus), "device": str(device)}
    torch.manual_seed(0)
    for emb_src in args.embedder:
        start = time.perf_counter()
        model = cls.from_pretrained(emb_src, max_length=args.max_length, device=device)
        run = embedder_run(model, data, batch_size=args.batch_size)
        del model
        _emit({"embedder": emb_src, **ranking_metrics(run, data.qrels), **size,
               "seconds": round(time.perf_counter() - start, 1)}, args.out)
        candidates = top_k(run, args.depth)
        for rr_src in args.reranker:
            start = time.perf_counter()
            reranker = Reranker.from_pretrained(rr_src, max_length=args.max_length, device=device)
            reranked = reranker_run(reranker, data, candidates, batch_size=args.batch_size)
            del reranker
            _emit({"embedder": emb_src, "reranker": rr_src, "depth": args.depth,
                   **ranking_metrics(reranked, data.qrels), **size,
                   "seconds": round(time.perf_counter() - start, 1)}, args.out)


if __name__ == "__main__":
    main()
