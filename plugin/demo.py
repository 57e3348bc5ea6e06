"""``embedrank demo``: ingest a small corpus into Qdrant local mode, query without and with rerank."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from qdrant_client import models

from embedrank.plugin.demo_corpus import QUERIES, records
from embedrank.plugin.ingest import ingest_records, open_client, snippet
from embedrank.plugin.vectorizer import register_embedder

COLLECTION = "embedrank-demo"
DEMO_MODEL = "embedrank-demo-embedder"
DEGENERATE_COSINE = 0.95  # mean pairwise cosine of the corpus above which rankings mean nothing


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine over distinct pairs of L2-normalized rows."""
    n = len(vectors)
    if n < 2:
        return 0.0
    gram = vectors @ vectors.T
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))


def degenerate_warning(vectors: np.ndarray) -> str | None:
    """A warning when the embedder maps the corpus to nearly one direction (an untrained LM)."""
    mean = mean_pairwise_cosine(vectors)
    if mean <= DEGENERATE_COSINE:
        return None
    return (f"warning: the embedder maps the demo corpus to nearly one direction (mean pairwise "
            f"cosine {mean:.3f} > {DEGENERATE_COSINE}): it is not a retrieval model, so the rankings "
            "below mean nothing. Train it (`embedrank train embedder`) or export a retrieval model.")


def run_demo(embedder: str | os.PathLike, reranker: str | os.PathLike, path: str | None = None,
             limit: int = 3, echo: Callable[[str], None] = print) -> list[tuple[str, list, list]]:
    """Ingest the built-in corpus, answer the built-in queries; returns (query, plain, reranked)."""
    model = register_embedder(DEMO_MODEL, embedder)
    client = open_client(path=path)
    try:
        rows = records()
        warning = degenerate_warning(model.embed_documents([r["text"] for r in rows]))
        if warning:
            echo(warning)
        result = ingest_records(client, COLLECTION, enumerate(rows, 1), DEMO_MODEL,
                                source="demo corpus")
        echo(f"collection {COLLECTION!r}: {result.added} passages added, {result.skipped} "
             f"already there ({'in memory' if not path else path})")
        client.set_reranker(COLLECTION, reranker, top_k=len(rows))
        answers = []
        for query in QUERIES:
            doc = models.Document(text=query, model=DEMO_MODEL)
            plain = client.query_points(COLLECTION, query=doc, limit=limit, rerank=False).points
            reranked = client.query_points(COLLECTION, query=doc, limit=limit).points
            answers.append((query, plain, reranked))
            echo(side_by_side(query, plain, reranked))
        return answers
    finally:
        client.close()


def side_by_side(query: str, plain: list, reranked: list, width: int = 44) -> str:
    lines = [f"\nQ: {query}",
             f"   {'vector search (cosine)':<{width + 8}}  + rerank (P(yes))"]
    for rank in range(max(len(plain), len(reranked))):
        cells = []
        for hits in (plain, reranked):
            if rank < len(hits):
                hit = hits[rank]
                text = snippet(str((hit.payload or {}).get("text", "")), width)
                cells.append(f"{hit.score:6.3f}  {text:<{width}}")
            else:
                cells.append(" " * (width + 8))
        lines.append((f"{rank + 1:>2} " + "  ".join(cells)).rstrip())
    return "\n".join(lines)
