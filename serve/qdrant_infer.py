"""``POST /qdrant/infer``: Qdrant's inference protocol (the server's ``inference.address`` hook).

Read in qdrant/qdrant v1.19.0 (docs/serve.md has the versions and file names). Qdrant POSTs
``{"inputs": [{"data", "data_type", "model", "options"}], "inference": "update" | "search",
"token"}`` and pairs the ``embeddings`` it gets back with its inputs by position. Unknown
top-level and per-input fields are accepted (newer servers may add some). Every input is checked
before anything is queued: the first bad one gives a 400 naming its index, nothing is embedded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embedrank.errors import InputError
from embedrank.formats import text_problem
from embedrank.serve.models import ModelSet, ServedEmbedder

OPTION_KEYS = ("instruction",)
MODES = ("update", "search")


@dataclass(frozen=True)
class InferRequest:
    search: bool
    token: str | None
    items: list[tuple[ServedEmbedder, str, str, str | None]]  # (model, name as sent, text, instruction)


def parse(body: Any, served: ModelSet) -> InferRequest:
    """Check a whole request; raise :class:`InputError` for the first problem, naming the input."""
    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object {\"inputs\": [...], \"inference\": ...}")
    inputs = body.get("inputs")
    if not isinstance(inputs, list):
        raise InputError("\"inputs\" must be a list of {\"data\", \"data_type\", \"model\", \"options\"}")
    mode = body.get("inference") or "update"  # Qdrant's default (InferenceType::Update)
    if mode not in MODES:
        raise InputError(f"\"inference\" must be \"update\" or \"search\", got {mode!r}")
    token = body.get("token")
    if token is not None and not isinstance(token, str):
        raise InputError("\"token\" must be a string or null")
    items = [_item(i, item, served, mode == "search") for i, item in enumerate(inputs)]
    return InferRequest(mode == "search", token, items)


def _item(i: int, item: Any, served: ModelSet, search: bool):
    where = f"inputs[{i}]"
    if not isinstance(item, dict):
        raise InputError(f"{where} must be an object, got {type(item).__name__}")
    data_type = item.get("data_type", "text")
    if data_type != "text":
        raise InputError(f"{where}: data_type {data_type!r} is not supported: embedrank embeds "
                         "text only (models.Document)")
    model = item.get("model")
    if not isinstance(model, str):
        raise InputError(f"{where}: model must be a string, got {model!r}")
    embedder = served.embedder(model, f"{where}: model")
    text = item.get("data")
    problem = text_problem(text)
    if problem is not None:
        raise InputError(f"{where}: the text {problem}")
    options = item.get("options") or {}
    if not isinstance(options, dict):
        raise InputError(f"{where}: options must be an object or null")
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise InputError(f"{where}: options {unknown} are not understood by model {model!r}; "
                         f"it accepts {list(OPTION_KEYS)}")
    instruction = options.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise InputError(f"{where}: options.instruction must be a string")
    return embedder, model, text, instruction if search else None


def groups(request: InferRequest) -> dict[tuple[str, str | None], list[int]]:
    """Input indices by (lane, instruction): one encode call each."""
    out: dict[tuple[str, str | None], list[int]] = {}
    for i, (embedder, _, _, instruction) in enumerate(request.items):
        out.setdefault((embedder.lane, instruction), []).append(i)
    return out


def response(request: InferRequest, rows: dict[int, np.ndarray],
             tokens: dict[int, int]) -> dict[str, Any]:
    """``{"embeddings": [...], "usage": {"models": {name: {"tokens": n}}}}`` in input order."""
    usage: dict[str, dict[str, int]] = {}
    for i, (_, model, _, _) in enumerate(request.items):
        usage.setdefault(model, {"tokens": 0})["tokens"] += tokens[i]
    embeddings = [rows[i].tolist() for i in range(len(request.items))]
    return {"embeddings": embeddings, "usage": {"models": usage} if usage else None}
