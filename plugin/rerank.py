"""The rerank hook: widen a text query to ``top_k`` candidates, then reorder them by reranker score.

``score_threshold`` applies to the first stage (Qdrant's vector similarity) and so limits the
candidates; the points returned carry the reranker score, P("yes") in (0, 1).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from qdrant_client import models

from embedrank.errors import CollectionMismatchError, InputError, ModelDirError
from embedrank.plugin.collections import RerankConfig
from embedrank.runtime import Reranker

_LOADED: dict[tuple[str, str], Reranker] = {}  # (model_dir, fingerprint) -> loaded reranker
_LOCK = threading.Lock()


def configure(model: str | os.PathLike | Reranker, text_field: str = "text", top_k: int = 100,
              instruction: str | None = None) -> RerankConfig:
    """The :class:`RerankConfig` of a reranker directory or loaded :class:`Reranker`.

    The reranker is kept in this process (a loaded one is used as given, on its device), so
    queries that name its directory and fingerprint do not load it again.
    """
    RerankConfig("-", "-", text_field, top_k, instruction)  # refuse bad options before loading
    reranker = model if isinstance(model, Reranker) else Reranker.load(model)
    config = RerankConfig(str(reranker.path.resolve()), reranker.fingerprint, text_field, top_k,
                          instruction)
    with _LOCK:
        _LOADED[(config.model_dir, config.fingerprint)] = reranker
    return config


def load_reranker(config: RerankConfig, collection: str = "?") -> Reranker:
    """The reranker a config names; a directory whose fingerprint changed is refused."""
    key = (config.model_dir, config.fingerprint)
    with _LOCK:
        found = _LOADED.get(key)
    if found is not None:
        return found
    try:
        reranker = Reranker.load(config.model_dir)
    except ModelDirError as exc:
        raise type(exc)(f"collection {collection!r} reranks with {config.model_dir}, which cannot "
                        f"be loaded here ({exc}); copy the reranker there, call set_reranker "
                        "again, or query with rerank=False") from exc
    if reranker.fingerprint != config.fingerprint:
        raise CollectionMismatchError(
            f"collection {collection!r} reranks with {config.model_dir} at fingerprint "
            f"{config.fingerprint[:12]}, but that directory now holds fingerprint "
            f"{reranker.fingerprint[:12]}: put the original export back, or record this one with "
            f"set_reranker({collection!r}, {config.model_dir!r})")
    with _LOCK:
        return _LOADED.setdefault(key, reranker)


@dataclass(frozen=True)
class RerankPlan:
    """One reranked request: what to ask Qdrant for, and how to cut the reranked list."""

    config: RerankConfig
    collection: str
    text: str
    instruction: str | None
    offset: int
    limit: int
    with_payload: Any

    @property
    def candidates(self) -> int:
        return max(self.config.top_k, self.offset + self.limit)


def query_document(query: Any) -> models.Document | None:
    """The text document a query asks with (``Document`` or ``NearestQuery(nearest=Document)``)."""
    if isinstance(query, models.NearestQuery):
        query = query.nearest
    return query if isinstance(query, models.Document) else None


def plan(config: RerankConfig | None, collection: str, query: Any, limit: int, offset: int | None,
         with_payload: Any, collection_instruction: str | None = None) -> RerankPlan | None:
    """A plan when ``query`` is a text document and the collection has a reranker, else None.

    Rerank instruction: per-query ``options["instruction"]`` > ``set_reranker(instruction=)`` >
    the collection's instruction > the reranker's default.
    """
    doc = query_document(query)
    if config is None or doc is None:
        return None
    options = doc.options or {}
    if "instruction" in options:
        instruction = options["instruction"]
    elif config.instruction is not None:
        instruction = config.instruction
    else:
        instruction = collection_instruction
    return RerankPlan(config, collection, doc.text, instruction, offset or 0, limit,
                      with_payload)


def rerank(plan: RerankPlan, points: list[models.ScoredPoint]) -> list[models.ScoredPoint]:
    """Score (query, payload[text_field]) for each candidate; top ``limit`` after ``offset``."""
    if not points:
        return []
    field = plan.config.text_field
    texts = []
    for point in points:
        text = (point.payload or {}).get(field)
        if not isinstance(text, str) or not text.strip():
            found = "is missing" if text is None else f"is {type(text).__name__} {text!r:.40}"
            raise InputError(
                f"point {point.id!r} cannot be reranked: its payload field {field!r} {found}. "
                f"Store the passage text under {field!r}, call set_reranker(..., text_field=...) "
                "with the right field, or query with rerank=False")
        texts.append(text)
    reranker = load_reranker(plan.config, plan.collection)
    scores = reranker.score(plan.text, texts, plan.instruction)
    order = sorted(range(len(points)), key=lambda i: -float(scores[i]))  # stable: ties keep order
    chosen = order[plan.offset: plan.offset + plan.limit]
    return [points[i].model_copy(update={"score": float(scores[i])}) for i in chosen]


def strip_payload(points: list[models.ScoredPoint], with_payload: Any,
                  selected: dict | None = None) -> list[models.ScoredPoint]:
    """Give points the payload the caller asked for (candidates were fetched with all of it).

    ``selected`` maps point id -> payload re-read with the caller's own ``with_payload``.
    """
    if with_payload is True:
        return points
    if with_payload is False or with_payload is None:
        return [p.model_copy(update={"payload": None}) for p in points]
    return [p.model_copy(update={"payload": (selected or {}).get(p.id)}) for p in points]


def needs_reread(with_payload: Any) -> bool:
    return with_payload not in (True, False, None)
