"""``embedrank demo``: ingest a small corpus into Qdrant local mode, query without and with rerank."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from qdrant_client import models

from embedrank.errors import EmbedrankError, ModelDirError
from embedrank.manifest import read_manifest
from embedrank.plugin.demo_corpus import QUERIES, records
from embedrank.plugin.ingest import ingest_records, open_client, snippet
from embedrank.plugin.vectorizer import register_embedder

HUB_MODELS = {"embedder": "Qwen/Qwen3-Embedding-0.6B", "reranker": "Qwen/Qwen3-Reranker-0.6B"}
COLLECTION = "embedrank-demo"
DEMO_MODEL = "embedrank-demo-embedder"


def cache_dir() -> Path:
    return Path(os.environ.get("EMBEDRANK_CACHE", Path.home() / ".cache" / "embedrank"))


def default_model(kind: str, echo: Callable[[str], None] = print) -> Path:
    """The exported hub model for ``kind`` from the cache, exporting it on first use."""
    out = cache_dir() / "demo" / HUB_MODELS[kind].split("/")[-1]
    try:
        read_manifest(out)
        return out
    except ModelDirError:
        pass
    echo(f"exporting {HUB_MODELS[kind]} to {out} (first run only) ...")
    try:
        from embedrank.export import export_model

        return export_model(kind, HUB_MODELS[kind], out, overwrite=True).out
    except Exception as exc:  # offline hub, missing torch extra, disk...: all end the same way
        raise EmbedrankError(
            f"cannot export {HUB_MODELS[kind]} from the Hugging Face hub ({type(exc).__name__}: "
            f"{first_line(exc)}). Pass exported model directories instead: embedrank demo "
            "--embedder DIR --reranker DIR (make them with `embedrank export embedder|reranker "
            "SRC OUT`)") from None


def run_demo(embedder: str | os.PathLike | None = None, reranker: str | os.PathLike | None = None,
             path: str | None = None, limit: int = 3,
             echo: Callable[[str], None] = print) -> list[tuple[str, list, list]]:
    """Ingest the built-in corpus, answer the built-in queries; returns (query, plain, reranked)."""
    embedder = embedder or default_model("embedder", echo)
    reranker = reranker or default_model("reranker", echo)
    register_embedder(DEMO_MODEL, embedder)
    client = open_client(path=path)
    try:
        rows = records()
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


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:160]
