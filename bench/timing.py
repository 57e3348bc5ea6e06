"""Timing of ``embedrank bench``: repeated passes over the same calls, the median pass reported."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


def figures(passes_ms: Sequence[Sequence[float]], docs: int, tokens: int) -> dict[str, float]:
    """Throughput of the median pass (``docs`` / ``tokens`` per pass); p50 / p99 of every call."""
    median_s = statistics.median(sum(p) for p in passes_ms) / 1e3
    lat = np.concatenate([np.asarray(p, dtype=float) for p in passes_ms])
    return {"docs_per_s": docs / median_s, "tokens_per_s": tokens / median_s,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


@dataclass
class Timing:
    """Per pass, per call: wall-clock ms of the whole call and (PyTorch rows) of its forwards."""

    call_ms: list[list[float]]
    forward_ms: list[list[float]] | None
    docs: int  # per pass
    tokens: int  # per pass

    def summary(self) -> dict:
        out: dict = figures(self.call_ms, self.docs, self.tokens)
        if self.forward_ms is not None:
            out["forward"] = figures(self.forward_ms, self.docs, self.tokens)
        return out

    @property
    def latencies_ms(self) -> list[float]:
        return [ms for p in self.call_ms for ms in p]


def time_calls(fn: Callable, calls: Sequence[tuple], docs: Sequence[int], tokens: Sequence[int],
               warmup: int, repeats: int = 1, forward_ms: Callable[[], float] | None = None) -> Timing:
    """Time ``fn(*args)`` per call over ``repeats`` passes, after ``warmup`` untimed calls (cycled
    from the same list); ``forward_ms()`` (when given) reads the forward time of the last call."""
    for i in range(warmup):
        fn(*calls[i % len(calls)])
    call_ms, fwd_ms = [], []
    for _ in range(repeats):
        call_ms.append([])
        fwd_ms.append([])
        for args in calls:
            start = time.perf_counter()
            fn(*args)
            call_ms[-1].append((time.perf_counter() - start) * 1e3)
            if forward_ms is not None:
                fwd_ms[-1].append(forward_ms())
    return Timing(call_ms, fwd_ms if forward_ms is not None else None, sum(docs), sum(tokens))
