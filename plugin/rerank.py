"""The rerank hook: widen a text query to ``top_k`` candidates, then reorder them by reranker score.

``score_threshold`` applies to the first stage (Qdrant's vector similarity) and so limits the
candidates; the points returned carry the reranker score, P("yes") in (0, 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from qdrant_client import models

from embedrank.errors import InputError
from embedrank.runtime import Reranker


@dataclass(frozen=True)
class RerankSpec:
    reranker: Reranker
    text_field: str = "text"
    top_k: int = 100
    instruction: str | None = None

    @classmethod
    def make(cls, model: str | os.PathLike | Reranker, text_field: str = "text", top_k: int = 100,
             instruction: str | None = None) -> RerankSpec:
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise InputError(f"top_k must be a positive int, got {top_k!r}")
        if not isinstance(text_field, str) or not text_field:
            raise InputError(f"text_field must be a non-empty str, got {text_field!r}")
        if instruction is not None and not isinstance(instruction, str):
            raise InputError(f"instruction must be a str or None, got {type(instruction).__name__}")
        reranker = model if isinstance(model, Reranker) else Reranker.load(model)
        return cls(reranker, text_field, top_k, instruction)


@dataclass(frozen=True)
class RerankPlan:
    """One reranked request: what to ask Qdrant for, and how to cut the reranked list."""

    spec: RerankSpec
    text: str
    instruction: str | None
    offset: int
    limit: int
    with_payload: Any

    @property
    def candidates(self) -> int:
        return max(self.spec.top_k, self.offset + self.limit)


def query_document(query: Any) -> models.Document | None:
    """The text document a query asks with (``Document`` or ``NearestQuery(nearest=Document)``)."""
    if isinstance(query, models.NearestQuery):
        query = query.nearest
    return query if isinstance(query, models.Document) else None


def plan(spec: RerankSpec | None, query: Any, limit: int, offset: int | None, with_payload: Any,
         collection_instruction: str | None = None) -> RerankPlan | None:
    """A plan when ``query`` is a text document and the collection has a reranker, else None.

    Rerank instruction: per-query ``options["instruction"]`` > ``set_reranker(instruction=)`` >
    the collection's instruction > the reranker's default.
    """
    doc = query_document(query)
    if spec is None or doc is None:
        return None
    options = doc.options or {}
    if "instruction" in options:
        instruction = options["instruction"]
    elif spec.instruction is not None:
        instruction = spec.instruction
    else:
        instruction = collection_instruction
    return RerankPlan(spec, doc.text, instruction, offset or 0, limit, with_payload)


def rerank(plan: RerankPlan, points: list[models.ScoredPoint]) -> list[models.ScoredPoint]:
    """Score (query, payload[text_field]) for each candidate; top ``limit`` after ``offset``."""
    if not points:
        return []
    field = plan.spec.text_field
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
    scores = plan.spec.reranker.score(plan.text, texts, plan.instruction)
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
