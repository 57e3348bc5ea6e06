"""What `embedrank serve` runs: models by name, batching limits, auth, the Qdrant upstream."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from embedrank.errors import InputError
from embedrank.serve.batcher import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_QUEUE, DEFAULT_WORKERS


@dataclass(frozen=True)
class ModelSpec:
    """``NAME=DIR[:DIM]``: serve the model directory DIR as NAME (DIM: a Matryoshka size)."""

    name: str
    path: Path
    dim: int | None = None

    @classmethod
    def parse(cls, text: str, allow_dim: bool = True) -> ModelSpec:
        name, sep, rest = text.partition("=")
        if not sep or not name.strip() or not rest:
            form = "NAME=DIR[:DIM]" if allow_dim else "NAME=DIR"
            raise InputError(f"{text!r} is not {form} (e.g. qwen3=/models/embedder"
                             f"{':256' if allow_dim else ''})")
        path, dim = rest, None
        head, colon, tail = rest.rpartition(":")
        if allow_dim and colon and tail.isdigit() and head:
            path, dim = head, int(tail)
        return cls(name.strip(), Path(path), dim)


@dataclass(frozen=True)
class ServeOptions:
    embedders: tuple[ModelSpec, ...] = ()
    rerankers: tuple[ModelSpec, ...] = ()
    device: str = "cpu"
    token: str | None = None  # bearer token the clients (and Qdrant's hook) must present
    qdrant: str | None = None  # upstream Qdrant REST URL for the proxy
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    max_queue: int = DEFAULT_MAX_QUEUE
    workers: int = DEFAULT_WORKERS
    threads: int | None = None  # ONNX Runtime intra-op threads per model (None: model_threads())

    def model_threads(self) -> int | None:
        """ONNX Runtime intra-op threads per model: ``threads`` if set; on CPU, the cores shared
        by the ``workers`` passes that run at once (more threads than cores spin against each
        other); elsewhere None (ONNX Runtime's default)."""
        if self.threads:
            return self.threads
        if self.device != "cpu":
            return None
        return max(1, usable_cores() // self.workers)

    def check(self, models: bool = True) -> ServeOptions:
        """Raise :class:`InputError` for an unusable setting (``models``: need a model spec)."""
        if models and not self.embedders and not self.rerankers:
            raise InputError("nothing to serve: give at least one --embedder NAME=DIR or "
                             "--reranker NAME=DIR")
        for kind, specs in (("embedder", self.embedders), ("reranker", self.rerankers)):
            names = [s.name.lower() for s in specs]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise InputError(f"--{kind} name(s) {dup} given twice (names are case-insensitive)")
        for flag, value in (("--batch-tokens", self.batch_tokens), ("--max-queue", self.max_queue),
                            ("--workers", self.workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{flag} must be a positive integer, got {value!r}")
        if self.qdrant is not None and not self.qdrant.startswith(("http://", "https://")):
            raise InputError(f"--qdrant must be an http(s) URL such as http://localhost:6333, "
                             f"got {self.qdrant!r}")
        return self


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1
