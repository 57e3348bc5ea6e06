"""The models a server holds, by name.

Embedder names are registered with the plugin too (:func:`~embedrank.plugin.register_embedder`),
so a name means the same model, dim and default instruction to the Python client's code that the
proxy reuses; rerankers are handed to the plugin by directory and fingerprint
(:func:`embedrank.plugin.rerank.configure`). Each name is one batcher lane.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedrank.errors import InputError
from embedrank.plugin.rerank import configure
from embedrank.plugin.vectorizer import register_embedder
from embedrank.runtime import Embedder, Reranker
from embedrank.serve.batcher import Lane
from embedrank.serve.settings import ServeOptions


@dataclass(frozen=True)
class ServedEmbedder:
    name: str
    embedder: Embedder

    @property
    def lane(self) -> str:
        return f"embed:{self.name}"

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def encode(self, texts: list[str], query: bool, instruction: str | None = None) -> list[list[int]]:
        if query:
            return self.embedder.encode_queries(texts, instruction)
        return self.embedder.encode_documents(texts)

    def finish(self, rows: np.ndarray, dim: int | None = None) -> np.ndarray:
        return self.embedder.finish(rows, dim)


@dataclass(frozen=True)
class ServedReranker:
    name: str
    reranker: Reranker

    @property
    def lane(self) -> str:
        return f"rerank:{self.name}"

    def encode(self, query: str, documents: list[str], instruction: str | None) -> list[list[int]]:
        return self.reranker.encode(query, documents, instruction)

    def finish(self, rows: np.ndarray) -> np.ndarray:
        return self.reranker.finish(rows)


def _lane(name: str, model: Embedder | Reranker) -> Lane:
    return Lane(name, model.forward, model.max_batch_size, model.max_length)


class ModelSet:
    """Embedders and rerankers by case-insensitive name."""

    def __init__(self, embedders: Sequence[ServedEmbedder] = (),
                 rerankers: Sequence[ServedReranker] = ()) -> None:
        self.embedders = {e.name.lower(): e for e in embedders}
        self.rerankers = {r.name.lower(): r for r in rerankers}

    @classmethod
    def load(cls, options: ServeOptions) -> ModelSet:
        """Load every model of ``options`` (and register its name with the plugin)."""
        threads = options.model_threads()
        kwargs = {"threads": threads} if threads else {}
        embedders = [ServedEmbedder(s.name, Embedder.load(s.path, options.device, s.dim, **kwargs))
                     for s in options.embedders]
        rerankers = [ServedReranker(s.name, Reranker.load(s.path, options.device, **kwargs))
                     for s in options.rerankers]
        return cls.registered(embedders, rerankers)

    @classmethod
    def registered(cls, embedders: Sequence[ServedEmbedder] = (),
                   rerankers: Sequence[ServedReranker] = ()) -> ModelSet:
        for e in embedders:
            register_embedder(e.name, e.embedder)
        for r in rerankers:
            configure(r.reranker)  # kept by its directory and fingerprint: not loaded again
        return cls(embedders, rerankers)

    def lanes(self) -> list[Lane]:
        return [_lane(e.lane, e.embedder) for e in self.embedders.values()] + [
            _lane(r.lane, r.reranker) for r in self.rerankers.values()]

    def embedder(self, name: object, where: str = "model") -> ServedEmbedder:
        return self._find(self.embedders, "embedder", name, where)

    def reranker(self, name: object, where: str = "model") -> ServedReranker:
        return self._find(self.rerankers, "reranker", name, where)

    def serving(self, reranker: Reranker) -> ServedReranker | None:
        """The served entry of a loaded reranker (the object the plugin resolved a record to)."""
        return next((r for r in self.rerankers.values() if r.reranker is reranker), None)

    @staticmethod
    def _find(table: dict, kind: str, name: object, where: str):
        if name is None and len(table) == 1:
            return next(iter(table.values()))
        found = table.get(name.lower()) if isinstance(name, str) else None
        if found is None:
            names = sorted(m.name for m in table.values())
            if name is None:
                raise InputError(f"{where} is missing: name one of the {kind}s this server runs, {names}")
            raise InputError(f"{where} {name!r} is not one of the {kind}s this server runs, {names}")
        return found

    def describe(self) -> dict:
        return {
            "embedders": {e.name: {"dim": e.dim, "fingerprint": e.embedder.fingerprint,
                                   "max_length": e.embedder.max_length}
                          for e in self.embedders.values()},
            "rerankers": {r.name: {"fingerprint": r.reranker.fingerprint,
                                   "max_length": r.reranker.max_length}
                          for r in self.rerankers.values()},
        }
