"""Encode in a thread, run through the batcher, finish per request: what every endpoint does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from embedrank.serve.batcher import Batcher
from embedrank.serve.metrics import Metrics
from embedrank.serve.models import ModelSet, ServedEmbedder, ServedReranker


@dataclass(frozen=True)
class EmbedJob:
    model: ServedEmbedder
    texts: list[str]
    query: bool = False
    instruction: str | None = None
    dim: int | None = None


@dataclass(frozen=True)
class Result:
    values: np.ndarray  # (n, dim) vectors or (n,) scores
    tokens: list[int]  # tokens fed to the model per input


INLINE_CHARS = 4096  # smaller requests are tokenized on the event loop (tens of microseconds)


async def off_loop(chars: int, fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` inline when the texts are short, else in a worker thread: a thread hop per
    small request costs more than the tokenizing, and 64 threads fighting for the GIL starve
    the event loop."""
    return fn(*args) if chars <= INLINE_CHARS else await run_in_threadpool(fn, *args)


class Engine:
    def __init__(self, served: ModelSet, batcher: Batcher, metrics: Metrics) -> None:
        self.served, self.batcher, self.metrics = served, batcher, metrics

    async def embed(self, jobs: list[EmbedJob]) -> list[Result]:
        """Vectors per job, all jobs admitted to the queue together (or a 503 for all)."""
        if not jobs:
            return []
        chars = sum(len(t) for j in jobs for t in j.texts)
        seqs = await off_loop(chars, lambda: [j.model.encode(j.texts, j.query, j.instruction)
                                              for j in jobs])
        raw = await self.batcher.submit_many([(j.model.lane, s) for j, s in zip(jobs, seqs, strict=True)])
        out = []
        for job, job_seqs, rows in zip(jobs, seqs, raw, strict=True):
            self._count(job.model.lane, job_seqs)
            out.append(Result(job.model.finish(rows, job.dim), [len(s) for s in job_seqs]))
        return out

    async def score(self, model: ServedReranker, query: str, documents: list[str],
                    instruction: str | None = None) -> Result:
        """P(yes) per document, as ``Reranker.score`` gives it."""
        chars = len(query) * len(documents) + sum(len(d) for d in documents)
        seqs = await off_loop(chars, model.encode, query, documents, instruction)
        (logits,) = await self.batcher.submit_many([(model.lane, seqs)])
        self._count(model.lane, seqs)
        return Result(model.finish(logits), [len(s) for s in seqs])

    def _count(self, name: str, seqs: list) -> None:
        self.metrics.inputs.inc(name, amount=len(seqs))
        self.metrics.tokens.inc(name, amount=sum(len(s) for s in seqs))
