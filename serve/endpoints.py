"""The JSON endpoints: Qdrant's inference hook, OpenAI-style embeddings, Jina/Cohere-style rerank.

Each handler checks the whole body first (an :class:`InputError` becomes a 400 naming the bad
field or input) and only then queues work, so a refused request leaves nothing half-done.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from embedrank.errors import InputError
from embedrank.formats import check_dim, text_problem
from embedrank.serve import qdrant_infer
from embedrank.serve.engine import EmbedJob, Engine

INPUT_TYPES = ("document", "query")
ENCODINGS = ("float", "base64")


async def qdrant(engine: Engine, body: Any) -> dict[str, Any]:
    request = qdrant_infer.parse(body, engine.served)
    groups = qdrant_infer.groups(request)
    jobs = []
    for (_, instruction), indices in groups.items():
        model = request.items[indices[0]][0]
        texts = [request.items[i][2] for i in indices]
        jobs.append(EmbedJob(model, texts, request.search, instruction))
    results = await engine.embed(jobs)
    rows, tokens = {}, {}
    for indices, result in zip(groups.values(), results, strict=True):
        for k, i in enumerate(indices):
            rows[i], tokens[i] = result.values[k], result.tokens[k]
    return qdrant_infer.response(request, rows, tokens)


def _texts(value: Any, field: str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise InputError(f"{field!r} must be a string or a non-empty list of strings")
    for i, text in enumerate(texts):
        problem = text_problem(text)
        if problem is not None:
            raise InputError(f"{field}[{i}]: the text {problem}")
    return texts


def _optional_str(body: dict, key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InputError(f"{key!r} must be a string")
    return value


def _object(body: Any, shape: str) -> dict:
    if not isinstance(body, dict):
        raise InputError(f"the body must be a JSON object {shape}")
    return body


async def embeddings(engine: Engine, body: Any) -> dict[str, Any]:
    """OpenAI's ``POST /v1/embeddings``; ``input_type: "query"`` (+ ``instruction``) for queries."""
    body = _object(body, '{"input": ..., "model": ...}')
    texts = _texts(body.get("input"), "input")
    model = engine.served.embedder(body.get("model"), "'model'")
    input_type = body.get("input_type", "document")
    if input_type not in INPUT_TYPES:
        raise InputError(f"'input_type' must be one of {list(INPUT_TYPES)}, got {input_type!r}")
    instruction = _optional_str(body, "instruction")
    if instruction is not None and input_type != "query":
        raise InputError("'instruction' applies to queries only: add \"input_type\": \"query\"")
    dim = body.get("dimensions")
    if dim is not None:
        check_dim(dim, model.dim)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise InputError(f"'encoding_format' must be one of {list(ENCODINGS)}, got {encoding!r}")
    (result,) = await engine.embed([EmbedJob(model, texts, input_type == "query", instruction, dim)])
    data = [{"object": "embedding", "index": i, "embedding": _encode(row, encoding)}
            for i, row in enumerate(result.values)]
    tokens = sum(result.tokens)
    return {"object": "list", "data": data, "model": model.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encode(row: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":  # little-endian float32, as OpenAI's clients decode it
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return row.tolist()


def _documents(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise InputError("'documents' must be a non-empty list of strings (or {\"text\": ...} objects)")
    texts = [d.get("text") if isinstance(d, dict) else d for d in value]
    for i, text in enumerate(texts):
        problem = text_problem(text)
        if problem is not None:
            raise InputError(f"documents[{i}]: the text {problem}")
    return texts


async def rerank(engine: Engine, body: Any) -> dict[str, Any]:
    """Jina / Cohere v2 rerank: results sorted by P(yes) with ``index`` and ``relevance_score``."""
    body = _object(body, '{"query": ..., "documents": [...]}')
    query = body.get("query")
    problem = text_problem(query)
    if problem is not None:
        raise InputError(f"'query': the text {problem}")
    documents = _documents(body.get("documents"))
    model = engine.served.reranker(body.get("model"), "'model'")
    instruction = _optional_str(body, "instruction")
    top_n = body.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise InputError(f"'top_n' must be a positive integer, got {top_n!r}")
    return_documents = bool(body.get("return_documents", False))
    result = await engine.score(model, query, documents, instruction)
    order = sorted(range(len(documents)), key=lambda i: -float(result.values[i]))  # stable
    results = []
    for i in order[:top_n]:
        score = float(result.values[i])
        entry: dict[str, Any] = {"index": i, "relevance_score": score, "score": score}
        if return_documents:
            entry["document"] = {"text": documents[i]}
        results.append(entry)
    tokens = sum(result.tokens)
    return {"model": model.name, "results": results, "usage": {"total_tokens": tokens}}
