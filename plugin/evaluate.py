"""``embedrank eval``: retrieval quality of an exported embedder (and reranker) on a BEIR folder.

The corpus goes into Qdrant through the plugin (:func:`embedrank.plugin.ingest.ingest_records`:
deterministic point ids, the BEIR doc id kept in the payload under ``id``, the passage under
``text``). Every query asks for its top ``k`` with ``query_batch_points(rerank=False)``; with a
reranker, the same requests go through the client's rerank hook (``set_reranker(top_k=k)``),
which scores those same ``k`` candidates and reorders them. Metrics are
:func:`embedrank.metrics.evaluate` (trec_eval conventions, as BEIR reports them).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qdrant_client import models

from embedrank.beir import load_beir, passages
from embedrank.errors import InputError
from embedrank.metrics import evaluate
from embedrank.plugin.core import batches
from embedrank.plugin.ingest import ensure_collection, ingest_records, model_name, open_client
from embedrank.plugin.qdrant import QdrantClient
from embedrank.plugin.vectorizer import register_embedder
from embedrank.runtime import Reranker

STAGES = {"embed": "embed only", "rerank": "embed + rerank"}
NDCG_AT, MRR_AT = 10, 10  # cut to k when fewer candidates are retrieved; recall is @k
DOC_ID_FIELD = "id"
TEXT_FIELD = "text"

Run = dict[str, dict[str, float]]


@dataclass(frozen=True)
class EvalConfig:
    top_k: int = 100
    split: str = "test"
    instruction: str | None = None  # query (and rerank) instruction [default: the model's]
    batch_size: int = 64  # documents per upsert, queries per query_batch_points call
    collection: str = "embedrank-eval"
    progress: bool = True
    device: str = "cpu"  # where ONNX Runtime runs both models: cpu, cuda, cuda:N


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]]  # {"embed": {"ndcg@10": ..}, "rerank": {..}}
    runs: dict[str, Run]  # stage -> {qid: {docid: score}}
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def final_run(self) -> Run:
        """The ranking the user gets: reranked when there is a reranker."""
        return self.runs["rerank"] if "rerank" in self.runs else self.runs["embed"]


@contextmanager
def _bar(total: int, desc: str, unit: str, enabled: bool):
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False) as bar:
        yield bar


def index_corpus(client: QdrantClient, collection: str, texts: Mapping[str, str], model: str,
                 cfg: EvalConfig) -> None:
    """Embed and upsert the passages (ids already in the collection are skipped: a rerun resumes).

    Refuses a collection that holds points of another corpus, which would pollute the ranking.
    """
    ensure_collection(client, collection, model)
    def records():  # read twice by ingest_records
        return ((n, {DOC_ID_FIELD: docid, TEXT_FIELD: text})
                for n, (docid, text) in enumerate(texts.items(), 1))

    with _bar(len(texts), "indexing", "doc", cfg.progress) as bar:
        ingest_records(client, collection, records, model, text_field=TEXT_FIELD,
                       id_field=DOC_ID_FIELD, batch_size=cfg.batch_size, source="corpus",
                       progress=bar.update)
    count = client.count(collection, exact=True).count
    if count != len(texts):
        raise InputError(f"collection {collection!r} holds {count} points but the corpus has "
                         f"{len(texts)} passages: it was filled with other documents; evaluate "
                         "into a fresh collection (--collection NAME) or an in-memory database")


def retrieve(client: QdrantClient, collection: str, queries: Mapping[str, str], model: str,
             cfg: EvalConfig, rerank: bool) -> Run:
    """``{qid: {docid: score}}`` of each query's top ``k``; reranked through the hook if asked."""
    options = {"instruction": cfg.instruction} if cfg.instruction is not None else None
    run: Run = {}
    desc = "reranking" if rerank else "querying"
    with _bar(len(queries), desc, "query", cfg.progress) as bar:
        for chunk in batches(list(queries), cfg.batch_size):
            requests = [models.QueryRequest(
                query=models.Document(text=queries[qid], model=model, options=options),
                limit=cfg.top_k, with_payload=True) for qid in chunk]
            responses = client.query_batch_points(collection, requests, rerank=rerank)
            for qid, response in zip(chunk, responses, strict=True):
                run[qid] = {p.payload[DOC_ID_FIELD]: float(p.score) for p in response.points}
            bar.update(len(chunk))
    return run


def score(run: Run, qrels: Mapping[str, Mapping[str, int]], k: int = 100) -> dict[str, float]:
    """nDCG@10, recall@k and MRR@10 of a run of ``k`` candidates per query (the labels say the
    cutoffs used: with k < 10, nDCG@k and MRR@k)."""
    return evaluate(run, qrels, ndcg_at=(min(NDCG_AT, k),), recall_at=(k,), mrr_at=(min(MRR_AT, k),))


def _check(cfg: EvalConfig) -> None:
    for name in ("top_k", "batch_size"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")


def run_eval(data: str | os.PathLike, embedder: str | os.PathLike,
             reranker: str | os.PathLike | None = None, cfg: EvalConfig | None = None, *,
             path: str | None = None, url: str | None = None, api_key: str | None = None,
             log: Callable[[str], None] | None = None) -> EvalResult:
    """Index ``data``'s corpus, retrieve (and rerank) its queries, score both stages."""
    cfg = cfg or EvalConfig()
    _check(cfg)
    log = log or (lambda _: None)
    corpus, queries, qrels = load_beir(data, cfg.split)
    texts = passages(corpus)
    name = model_name(embedder)
    loaded = register_embedder(name, embedder, device=cfg.device)
    seconds: dict[str, float] = {}
    client = open_client(path, url, api_key)
    try:
        log(f"{len(texts)} passages, {len(queries)} queries ({cfg.split})")
        start = time.perf_counter()
        index_corpus(client, cfg.collection, texts, name, cfg)
        seconds["index"] = time.perf_counter() - start
        runs = {"embed": _timed(seconds, "embed", retrieve, client, cfg.collection, queries,
                                name, cfg, rerank=False)}
        if reranker is not None:
            model = Reranker.load(reranker, cfg.device)
            client.set_reranker(cfg.collection, model, text_field=TEXT_FIELD, top_k=cfg.top_k)
            runs["rerank"] = _timed(seconds, "rerank", retrieve, client, cfg.collection,
                                    queries, name, cfg, rerank=True)
    finally:
        client.close()
    info = {"data": str(data), "split": cfg.split, "passages": len(texts),
            "empty_passages_skipped": len(corpus) - len(texts), "queries": len(queries),
            "embedder": str(embedder), "embedder_source": loaded.manifest.source,
            "reranker": None if reranker is None else str(reranker), "dim": loaded.dim,
            "config": asdict(cfg), "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "device": cfg.device, "machine": machine(cfg.device)}
    return EvalResult({stage: score(run, qrels, cfg.top_k) for stage, run in runs.items()}, runs, info)


def _timed(seconds: dict[str, float], key: str, fn: Callable[..., Run], *args, **kwargs) -> Run:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds[key] = time.perf_counter() - start
    return out


def machine(device: str = "cpu") -> str:
    """A one-line description of where the figures were measured."""
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (f"{platform.system()} {cpu}, {os.cpu_count()} CPUs, onnxruntime "
            f"{onnxruntime.__version__} ({'CPU' if device == 'cpu' else device})")


def metric_names(metrics: Mapping[str, Mapping[str, float]]) -> list[str]:
    return list(next(iter(metrics.values())))


def table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """The metrics of each stage side by side, one metric per row."""
    stages = list(metrics)
    header = f"{'metric':<12}" + "".join(f"{STAGES.get(s, s):>16}" for s in stages)
    rows = [header] + [f"{m:<12}" + "".join(f"{metrics[s][m]:>16.4f}" for s in stages)
                       for m in metric_names(metrics)]
    return "\n".join(rows)


def dataset_name(data: str | os.PathLike) -> str:
    return Path(data).resolve().name
