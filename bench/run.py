"""``embedrank bench``: throughput and latency of the ONNX runtime, with PyTorch side by side.

Torch-free: the PyTorch rows (``--against``, :data:`embedrank.bench.rows.TORCH_ROWS`) and the
random-weight models (``--random-arch``) live in :mod:`embedrank.bench.torch_backend`, imported
only then.

Inputs are realistic variable-length documents: lengths drawn uniformly from a range (seeded),
texts built from whole-word vocabulary tokens so that a text of ``n - 1`` words is ``n`` tokens
with the end-of-text token. Every backend gets the same texts and makes the same batches
(token budget, longest first), so the figures compare engines, not batching.

Each measurement: ``warmup`` untimed calls, then ``repeats`` timed passes over every call; the
throughput is that of the median pass, p50 / p99 are over every timed call. Every row has the
whole call's wall-clock time; the PyTorch rows also their forward passes alone (CUDA events on
CUDA), and each row is divided by the strongest PyTorch row of the same run
(:mod:`embedrank.bench.rows`).
"""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embedrank.bench.rows import TORCH_ROWS, compile_shapes, describe, ratios
from embedrank.bench.rows import baseline as strongest
from embedrank.bench.timing import Timing, time_calls
from embedrank.errors import InputError
from embedrank.formats import encode_embedding_inputs, encode_rerank_inputs, plan_batches
from embedrank.hub import check_source
from embedrank.manifest import read_manifest
from embedrank.runtime import DEFAULT_MAX_BATCH, DEFAULT_TOKEN_BUDGET, Embedder, Reranker

BACKENDS = ("onnx", *TORCH_ROWS)
COLLECTION = "embedrank-bench"


@dataclass(frozen=True)
class BenchConfig:
    device: str = "cpu"
    lengths: tuple[int, int] = (32, 512)  # document lengths in tokens, drawn uniformly
    batch_size: int = 64  # documents per embedding call
    docs: int = 1024  # documents embedded per backend (and ingested)
    rerank_calls: int = 20  # one query + ``rerank_docs`` documents each
    rerank_docs: int = 100
    queries: int = 20  # embed + search + rerank round trips
    warmup: int = 2  # untimed calls before each measurement
    repeats: int = 3  # timed passes over every call; the median pass is reported
    sweep_points: int = 5  # fixed lengths for the throughput-vs-length curve
    sweep_repeats: int = 3
    seed: int = 0
    against: tuple[str, ...] = ()  # keys of rows.TORCH_ROWS (rows.resolve_against expands "all")

    def __post_init__(self) -> None:
        lo, hi = self.lengths
        if not 2 <= lo <= hi:
            raise InputError(f"lengths must satisfy 2 <= min <= max, got {lo}:{hi}")
        for name in ("batch_size", "docs", "rerank_calls", "rerank_docs", "queries", "repeats"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        unknown = set(self.against) - set(BACKENDS[1:])
        if unknown:
            raise InputError(f"--against takes {(*BACKENDS[1:], 'all')}, got {sorted(unknown)}")


def parse_lengths(text: str) -> tuple[int, int]:
    """'32:512' -> (32, 512); '256' -> (256, 256)."""
    try:
        lo, _, hi = text.partition(":")
        return int(lo), int(hi or lo)
    except ValueError:
        raise InputError(f"lengths must look like MIN:MAX (e.g. 32:512), got {text!r}") from None


# ---------------------------------------------------------------- inputs
def word_pool(tokenizer) -> list[str]:
    """Lower-case ASCII words that are one vocabulary token each with their leading space."""
    words = sorted(t[1:] for t in tokenizer.get_vocab() if t.startswith("Ġ") and
                   t[1:].isascii() and t[1:].isalpha() and t[1:].islower() and 3 <= len(t) <= 11)
    if len(words) < 100:
        raise InputError("the tokenizer has too few whole-word tokens to build benchmark texts")
    return words


def make_texts(words: Sequence[str], lengths: Sequence[int], rng: np.random.Generator) -> list[str]:
    """One text per length: ``n - 1`` words (+ the end-of-text token = ``n`` tokens)."""
    return ["".join(" " + w for w in rng.choice(words, size=max(1, n - 1))) for n in lengths]


def draw_lengths(cfg: BenchConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(cfg.lengths[0], cfg.lengths[1] + 1, size=n)


def sweep_lengths(cfg: BenchConfig) -> list[int]:
    lo, hi = cfg.lengths
    points = np.geomspace(lo, hi, max(1, cfg.sweep_points)) if hi > lo else [lo]
    return sorted({int(round(p)) for p in points})


def padding_waste(lengths: Sequence[int], batch_size: int) -> dict[str, float]:
    """Share of padded tokens: arrival-order batches vs the runtime's length-sorted plan."""
    lengths = list(lengths)

    def waste(batches: list[list[int]]) -> float:
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        return 1.0 - sum(lengths) / padded

    fixed = [list(range(i, min(i + batch_size, len(lengths))))
             for i in range(0, len(lengths), batch_size)]
    planned = [[c[i] for i in b] for c in fixed
               for b in plan_batches([lengths[i] for i in c], DEFAULT_TOKEN_BUDGET, DEFAULT_MAX_BATCH)]
    return {"unsorted": waste(fixed), "runtime_plan": waste(planned)}


class Workload:
    """The seeded texts every backend sees, with their token counts (from the ONNX tokenizer)."""

    def __init__(self, cfg: BenchConfig, embedder: Embedder) -> None:
        rng = np.random.default_rng(cfg.seed)
        self.cfg = cfg
        self.tokenizer = embedder.tokenizer
        self.prompts = embedder.manifest.prompts
        self.max_length = embedder.max_length
        self.words = word_pool(self.tokenizer)
        self.docs = make_texts(self.words, draw_lengths(cfg, cfg.docs, rng), rng)
        self.chunks = [self.docs[i:i + cfg.batch_size] for i in range(0, cfg.docs, cfg.batch_size)]
        self.chunk_lengths = [[len(s) for s in self.encode(c)] for c in self.chunks]
        self.chunk_tokens = [sum(n) for n in self.chunk_lengths]
        self.queries = make_texts(self.words, rng.integers(8, 33, size=cfg.queries), rng)
        self.rerank_sets = [
            (q, make_texts(self.words, draw_lengths(cfg, cfg.rerank_docs, rng), rng))
            for q in make_texts(self.words, rng.integers(8, 33, size=cfg.rerank_calls), rng)]
        self.sweep = {n: make_texts(self.words, [n] * cfg.batch_size, rng) for n in sweep_lengths(cfg)}

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return encode_embedding_inputs(self.tokenizer, texts, self.max_length, self.prompts.eot_token)

    def rerank_lengths(self, query: str, docs: Sequence[str], max_length: int) -> list[int]:
        seqs = encode_rerank_inputs(self.tokenizer, self.prompts, query, docs, None, max_length)
        return [len(s) for s in seqs]

    def embed_shapes(self) -> set[tuple[int, int]]:
        """Every (batch, length) the embedding measurements run (chunks and sweep)."""
        calls = self.chunk_lengths + [[len(s) for s in self.encode(t)] for t in self.sweep.values()]
        return batch_shapes(calls)


def batch_shapes(calls: Sequence[Sequence[int]]) -> set[tuple[int, int]]:
    """The padded (batch, length) shapes of the runtime's batch plan over each call's lengths."""
    return {(len(b), max(lengths[i] for i in b)) for lengths in calls
            for b in plan_batches(list(lengths), DEFAULT_TOKEN_BUDGET, DEFAULT_MAX_BATCH)}


# ---------------------------------------------------------------- backends
class OnnxBackend:
    """The runtime's models; ``forward_ms``: the last call's time in ONNX Runtime runs (each
    model's one-batch ``_infer``, timed by wrapping it: padded ids in, the graph, output out)."""

    def __init__(self, embedder: Embedder | None, reranker: Reranker | None) -> None:
        self.embedder, self.reranker = embedder, reranker
        self.forward_ms, self._runs_ms = 0.0, 0.0
        for model in (embedder, reranker):
            if model is not None:
                model._infer = self._timed(model._infer)

    def _timed(self, infer: Callable) -> Callable:
        def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            start = time.perf_counter()
            out = infer(ids, mask)  # on the host when it returns: the device work is done
            self._runs_ms += (time.perf_counter() - start) * 1e3
            return out
        return run

    def _call(self, fn: Callable, *args) -> np.ndarray:
        self._runs_ms = 0.0
        out = fn(*args)
        self.forward_ms = self._runs_ms
        return out

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._call(self.embedder.embed_documents, texts)

    def rerank(self, query: str, documents: list[str]) -> np.ndarray:
        return self._call(self.reranker.score, query, documents)


def _backend(name: str, kind: str, source: str | None, onnx: OnnxBackend, device: str,
             dynamic: bool = True):
    if name == "onnx":
        return onnx
    from embedrank.bench.torch_backend import TorchBackend

    return TorchBackend(kind, source, device, variant=name, dynamic=dynamic)


def _forward_reader(backend) -> Callable[[], float] | None:
    return (lambda: backend.forward_ms) if hasattr(backend, "forward_ms") else None


def torch_sources(embedder_dir, reranker_dir, sources: dict[str, str] | None = None) -> dict[str, str]:
    """The PyTorch checkpoint of each model for ``--against``: ``sources[kind]`` when given
    (``--source`` / ``--reranker-source``), else the source its manifest records; checked at once
    (a missing directory, or a hub id with no hub, is one line, not minutes of retries)."""
    sources = sources or {}
    out = {}
    for kind, model_dir in (("embedder", embedder_dir), ("reranker", reranker_dir)):
        if not model_dir:
            continue
        option = "--source" if kind == "embedder" else "--reranker-source"
        src = sources.get(kind) or read_manifest(model_dir).source
        if not src:
            raise InputError(f"{str(model_dir)!r} records no source checkpoint in its manifest; "
                             f"pass the PyTorch checkpoint with {option} DIR")
        check_source(src, hint=f"pass the {kind}'s PyTorch checkpoint with {option} DIR")
        out[kind] = str(src)
    return out


def _release(name: str) -> None:
    """Free a PyTorch backend's memory (the caller has dropped its reference)."""
    if name == "onnx":
        return
    gc.collect()
    from embedrank.bench.torch_backend import free_device_memory

    free_device_memory()


def bench_embed(backend, work: Workload) -> tuple[Timing, dict[int, float], dict[int, float]]:
    """The chunks, then the sweep: tokens/s per length of the whole call and of the forward
    (ONNX: its runs), each the median of ``sweep_repeats`` calls after one untimed call."""
    cfg, reader = work.cfg, _forward_reader(backend)
    timing = time_calls(backend.embed, [(c,) for c in work.chunks], [len(c) for c in work.chunks],
                        work.chunk_tokens, cfg.warmup, cfg.repeats, reader)
    sweep, sweep_forward = {}, {}
    for n, texts in work.sweep.items():
        tokens = sum(map(len, work.encode(texts)))
        t = time_calls(backend.embed, [(texts,)], [len(texts)], [tokens], 1,
                       max(1, cfg.sweep_repeats), reader).summary()
        sweep[n] = t["tokens_per_s"]
        if "forward" in t:
            sweep_forward[n] = t["forward"]["tokens_per_s"]
    return timing, sweep, sweep_forward


def bench_rerank(backend, work: Workload, max_length: int) -> Timing:
    sets = work.rerank_sets
    return time_calls(backend.rerank, sets, [len(d) for _, d in sets],
                      [sum(work.rerank_lengths(q, d, max_length)) for q, d in sets], work.cfg.warmup,
                      work.cfg.repeats, _forward_reader(backend))


# ---------------------------------------------------------------- ingest and query
def bench_ingest_query(embedder: Embedder, reranker: Reranker | None, work: Workload,
                       top_k: int = 100) -> tuple[dict, Timing]:
    """Through the plugin's Qdrant client (in-memory local mode): upserts of
    ``models.Document`` points (auto-embedded) vs raw ``embed_documents`` docs/s; then text
    queries (embed + search + rerank of the top ``top_k``)."""
    from qdrant_client import models

    from embedrank.plugin import QdrantClient, register_embedder

    register_embedder(COLLECTION, embedder)
    client = QdrantClient(":memory:")
    client.create_collection(COLLECTION, vectors_config=models.VectorParams(
        size=embedder.dim, distance=models.Distance.COSINE))
    start, next_id = time.perf_counter(), 0
    for chunk in work.chunks:
        client.upsert(COLLECTION, points=[
            models.PointStruct(id=next_id + i, payload={"text": text},
                               vector=models.Document(text=text, model=COLLECTION))
            for i, text in enumerate(chunk)], wait=True)
        next_id += len(chunk)
    total = time.perf_counter() - start
    start = time.perf_counter()
    for chunk in work.chunks:
        embedder.embed_documents(chunk)
    embed_s = time.perf_counter() - start
    ingest = {"docs_per_s": len(work.docs) / total, "embed_only_docs_per_s": len(work.docs) / embed_s}
    if reranker is not None:
        client.set_reranker(COLLECTION, reranker, text_field="text", top_k=top_k)

    def query(text: str) -> None:
        client.query_points(COLLECTION, query=models.Document(text=text, model=COLLECTION),
                            limit=10 if reranker is not None else top_k)

    timing = time_calls(query, [(q,) for q in work.queries], [1] * len(work.queries),
                        [0] * len(work.queries), work.cfg.warmup)
    client.close()
    return ingest, timing


# ---------------------------------------------------------------- driver
def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        try:
            name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=20).stdout.split("\n")[0]
        except (OSError, subprocess.SubprocessError):
            name = "unknown GPU"
        return f"{device} ({name.strip()})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def run_bench(embedder_dir: str | Path, reranker_dir: str | Path | None, cfg: BenchConfig,
              model: str | None = None, log: Callable[[str], None] = lambda s: None,
              sources: dict[str, str] | None = None) -> dict:
    """All measurements; :func:`summary` turns them into the ``--json`` schema.

    ``sources``: the PyTorch checkpoints for ``cfg.against`` by kind (default: the manifests').
    """
    src = torch_sources(embedder_dir, reranker_dir, sources) if cfg.against else {}
    embedder = Embedder.load(embedder_dir, cfg.device)
    reranker = Reranker.load(reranker_dir, cfg.device) if reranker_dir else None
    onnx = OnnxBackend(embedder, reranker)
    work = Workload(cfg, embedder)
    full = {"device": describe_device(cfg.device),
            "model": model or Path(embedder.manifest.source or embedder_dir).name,
            "config": asdict(cfg), "dtype": embedder.manifest.dtype,
            "padding_waste": padding_waste([len(s) for s in work.encode(work.docs)], cfg.batch_size),
            "embed": {}, "rerank": {}, "latencies_ms": {"embed": {}, "rerank": {}}, "sweep": {},
            "sweep_forward": {}, "rows": {"embed": {}, "rerank": {}}}
    names = ("onnx", *[b for b in BACKENDS[1:] if b in cfg.against])
    dynamic, shapes = compile_shapes(work.embed_shapes())
    for name in names:
        _start_row(full, "embed", name, shapes, log)
        backend = _backend(name, "embedder", src.get("embedder"), onnx, cfg.device, dynamic)
        timing, full["sweep"][name], sweep_forward = bench_embed(backend, work)
        if sweep_forward:
            full["sweep_forward"][name] = sweep_forward
        _end_row(full, "embed", name, timing, log)
        backend = None
        _release(name)
    if reranker is not None:
        dynamic, shapes = compile_shapes(batch_shapes(
            [work.rerank_lengths(q, d, reranker.max_length) for q, d in work.rerank_sets]))
    for name in names if reranker else ():
        _start_row(full, "rerank", name, shapes, log)
        backend = _backend(name, "reranker", src.get("reranker"), onnx, cfg.device, dynamic)
        _end_row(full, "rerank", name, bench_rerank(backend, work, reranker.max_length), log)
        backend = None
        _release(name)
    for section in ("embed", "rerank"):
        full.setdefault("baseline", {})[section] = strongest(full[section])
        full.setdefault("vs_baseline", {})[section] = ratios(full[section])
    log("ingest into Qdrant (in memory) and query")
    full["ingest"], query = bench_ingest_query(embedder, reranker, work)
    full["query"] = {k: v for k, v in query.summary().items() if k.endswith("_ms")}
    full["latencies_ms"]["query"] = query.latencies_ms
    return full


def _start_row(full: dict, section: str, name: str, shapes: str, log: Callable[[str], None]) -> None:
    cfg = full["config"]
    full["rows"][section][name] = describe(name, cfg["device"], full["dtype"], shapes)
    log(f"{section}: {name}")


def _end_row(full: dict, section: str, name: str, timing: Timing, log: Callable[[str], None]) -> None:
    full[section][name] = timing.summary()
    full["latencies_ms"][section][name] = timing.latencies_ms
    log(f"{section} {name}: {_figures(full[section][name])}")


def _figures(m: dict) -> str:
    text = ", ".join(f"{k} {v:,.1f}" for k, v in m.items() if not isinstance(v, dict))
    if m.get("forward"):
        text += "; forward " + _figures(m["forward"])
    return text


def summary(full: dict) -> dict:
    """The ``--json`` schema: device, model, embed, rerank, ingest, query (as measured), and with
    PyTorch rows: baseline (the strongest row per section), vs_baseline (the ratios), rows (what
    each row runs and what its figures include)."""
    out = {"device": full["device"], "model": full["model"]}
    for key in ("embed", "rerank", "ingest", "query"):
        if full.get(key):
            out[key] = full[key]
    measured = [s for s in ("embed", "rerank") if full.get(s)]
    if any(full.get("baseline", {}).get(s) for s in measured):
        out["baseline"] = {s: full["baseline"][s] for s in measured}
        out["vs_baseline"] = {s: full["vs_baseline"][s] for s in measured}
    if full.get("rows"):
        out["rows"] = {s: full["rows"][s] for s in measured if full["rows"].get(s)}
    return out
