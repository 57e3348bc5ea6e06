"""Every embedrank operation on Qdrant, written once, as a generator of I/O requests.

An operation (``upsert``, ``query_points``, ``set_reranker``...) is a generator that yields
requests and receives their results:

- :class:`Call`: a qdrant-client method of the client's base class (``get_collection``,
  ``update_collection``, ``upsert``, ``retrieve``...);
- :class:`Work`: CPU or model work (walking a request, embedding, reranking, loading a model);
- :class:`Locked`: run a sub-operation holding the client's write lock for one collection.

It prepares requests and finishes responses itself, with no I/O. The drivers in
:mod:`embedrank.plugin.drivers` run operations: ``run`` for :class:`~embedrank.plugin.QdrantClient`
(and the synchronous upload methods of the async client), ``arun`` for
:class:`~embedrank.plugin.AsyncQdrantClient`, where Work runs in the event loop's thread
executor. The two client classes are shells of one-line methods.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import qdrant_client
from qdrant_client import models

from embedrank.errors import CollectionMismatchError, InputError
from embedrank.plugin.collections import (
    RERANK_KEY,
    CollectionState,
    ModelRecord,
    RerankConfig,
    claim_key,
    merge,
    meta_key,
    plan_models,
)
from embedrank.plugin.rerank import (
    RerankPlan,
    configure,
    needs_reread,
    plan,
    query_document,
    rerank,
    strip_payload,
)
from embedrank.plugin.vectorizer import Registration, embed_in, registration

UPLOAD_EMBED_BATCH = 64  # upload_points / upload_collection embed iterables this many at a time


@dataclass(frozen=True)
class Call:
    """Call the qdrant-client method ``method`` with keyword arguments ``kwargs``."""

    method: str
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Work:
    """Run ``fn(*args)``: CPU or model work (off the event loop in the async client)."""

    fn: Callable
    args: tuple = ()


@dataclass(frozen=True)
class Locked:
    """Run the operation ``op`` holding the client's write lock for ``collection``."""

    collection: str
    op: Generator


Op = Generator[Call | Work | Locked, Any, Any]


# ------------------------------------------------------------------------------ requests


@functools.cache
def _signature(method: str) -> inspect.Signature:
    return inspect.signature(getattr(qdrant_client.QdrantClient, method))


def bound(method: str, collection_name: str, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of qdrant-client's ``method``, every one by name (defaults filled in)."""
    signature = _signature(method)
    try:
        arguments = signature.bind(None, collection_name, *args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{method}(): {exc}") from None
    arguments.apply_defaults()
    named = dict(arguments.arguments)
    named.pop("self")
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            named.update(named.pop(name, {}))
    return named


def batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def read_state(collection: str) -> Op:
    info = yield Call("get_collection", {"collection_name": collection})
    return CollectionState.from_info(collection, info)


def update_metadata(collection: str, metadata: dict) -> Call:
    return Call("update_collection", {"collection_name": collection, "metadata": metadata})


def ensure_records(collection: str, regs: dict[str, Registration]) -> Op:
    """Refuse an embedder the collection was not built with; record the ones it lacks.

    Compare-and-set through the metadata: Qdrant has no conditional metadata update, but it
    applies updates one at a time and key by key (a ``None`` value removes a key). A writer that
    finds no record (1) adds a claim under a key of its own, (2) reads again, and (3) refuses
    if another embedder's record or claim is there now, else (4) writes the record and removes
    its claim in one update (and the claims of its own model, which the record replaces). Of
    two writers with different embedders, the one that reads again last sees the other's claim
    (or the record that replaced it), so at most one proceeds.
    """
    if not regs:
        return None
    state = yield from read_state(collection)
    new = state.missing(regs)
    if not new:
        return state
    nonce = uuid.uuid4().hex
    mine = [claim_key(v, nonce) for v in new]
    yield update_metadata(collection, {claim_key(v, nonce): asdict(r) for v, r in new.items()})
    state = yield from read_state(collection)
    try:
        records = state.confirm(new, nonce)
    except CollectionMismatchError:
        yield update_metadata(collection, dict.fromkeys(mine))
        raise
    yield update_metadata(collection, {**{meta_key(v): asdict(r) for v, r in records.items()},
                                       **dict.fromkeys([*mine, *state.claims_of(new)])})
    return state


# ------------------------------------------------------------------------------ writes

DATA = {"upsert": "points", "update_vectors": "points", "batch_update_points": "update_operations",
        "upload_points": "points", "upload_collection": "vectors"}


def write(method: str, collection: str, args: tuple, kwargs: dict) -> Op:
    """``upsert`` / ``update_vectors`` / ``batch_update_points``: check, record, embed, write."""
    request = bound(method, collection, args, kwargs)
    regs = yield Work(plan_models, (request[DATA[method]],))
    return (yield Locked(collection, _checked_write(method, request, regs)))


def _checked_write(method: str, request: dict, regs: dict[str, Registration]) -> Op:
    yield from ensure_records(request["collection_name"], regs)
    request[DATA[method]] = yield Work(embed_in, (request[DATA[method]], False))
    return (yield Call(method, request))


def upload(method: str, collection: str, args: tuple, kwargs: dict,
           runner: Callable[[Op], Any]) -> Op:
    """``upload_points`` / ``upload_collection``: lists are checked whole first, then embedded
    chunk by chunk as qdrant-client reads them; other iterables are checked chunk by chunk.

    ``runner`` is the caller's synchronous driver (both clients' upload methods are synchronous):
    it checks the embedders a later chunk of an iterable brings.
    """
    request = bound(method, collection, args, kwargs)
    items = request[DATA[method]]
    if hasattr(items, "shape"):  # a numpy array: vectors already
        return (yield Call(method, request))
    if isinstance(items, dict):  # named columns: embedded whole
        regs = yield Work(plan_models, (items,))
        return (yield Locked(collection, _checked_write(method, request, regs)))
    whole = isinstance(items, (list, tuple))
    regs = (yield Work(plan_models, (items,))) if whole else {}
    return (yield Locked(collection, _upload(method, request, regs, None if whole else runner)))


def _upload(method: str, request: dict, regs: dict[str, Registration],
            runner: Callable[[Op], Any] | None) -> Op:
    collection = request["collection_name"]
    yield from ensure_records(collection, regs)
    request[DATA[method]] = _embedded(collection, request[DATA[method]], regs, runner)
    return (yield Call(method, request))


def _embedded(collection: str, items: Iterable, known: dict[str, Registration],
              runner: Callable[[Op], Any] | None) -> Iterator:
    """``items`` with their documents embedded, chunk by chunk. With a ``runner`` (an iterable,
    not checked yet), each chunk is checked, and an embedder new to this upload recorded."""
    for chunk in batches(items, UPLOAD_EMBED_BATCH):
        if runner is not None:
            new = merge(known, plan_models(chunk))
            if new:
                runner(ensure_records(collection, new))
        yield from embed_in(chunk, is_query=False)


# ------------------------------------------------------------------------------ queries


def rerank_plan(state: CollectionState, rerank_with: bool | RerankConfig, query: Any,
                using: str | None, limit: int, offset: int | None,
                with_payload: Any) -> RerankPlan | None:
    """``rerank_with``: True = the collection's reranker, False = none, a RerankConfig = it."""
    if not isinstance(rerank_with, (bool, RerankConfig)):
        raise InputError(f"rerank must be True, False or a RerankConfig, got {rerank_with!r}")
    config = rerank_with if isinstance(rerank_with, RerankConfig) else \
        state.reranker if rerank_with else None
    doc = query_document(query)
    default = None
    if doc is not None and registration(doc.model) is not None:
        default = state.default_instruction(using or "", doc.model)
    return plan(config, state.name, query, limit, offset, with_payload, default)


def for_query(state: CollectionState, obj: Any, using: str | None = None) -> Any:
    """``obj`` with its documents embedded as queries; a mismatched embedder is refused."""
    state.missing(plan_models(obj, using or ""))  # queries record nothing
    return embed_in(obj, True, state.instruction_for, using or "")


def query_points(collection: str, args: tuple, kwargs: dict,
                 rerank_with: bool | RerankConfig = True) -> Op:
    request = bound("query_points", collection, args, kwargs)
    state = yield from read_state(collection)
    p = rerank_plan(state, rerank_with, request["query"], request["using"], request["limit"],
                    request["offset"], request["with_payload"])
    request["query"], request["prefetch"] = yield Work(for_query, (
        state, (request["query"], request["prefetch"]), request["using"]))
    if p is not None:
        request.update(limit=p.candidates, offset=None, with_payload=True)
    response = yield Call("query_points", request)
    if p is None:
        return response
    points = yield from reranked(p, response.points)
    return response.model_copy(update={"points": points})


def query_batch_points(collection: str, args: tuple, kwargs: dict,
                       rerank_with: bool | RerankConfig = True) -> Op:
    request = bound("query_batch_points", collection, args, kwargs)
    state = yield from read_state(collection)
    plans = [rerank_plan(state, rerank_with, r.query, r.using, r.limit or 10, r.offset,
                         False if r.with_payload is None else r.with_payload)
             for r in request["requests"]]
    widened = [r.model_copy(update={"limit": p.candidates, "offset": None, "with_payload": True})
               if p else r for r, p in zip(request["requests"], plans, strict=True)]
    request["requests"] = yield Work(for_query, (state, widened))
    responses = yield Call("query_batch_points", request)
    out = []
    for response, p in zip(responses, plans, strict=True):
        if p is not None:
            response = response.model_copy(update={"points": (yield from reranked(
                p, response.points))})
        out.append(response)
    return out


def query_points_groups(collection: str, args: tuple, kwargs: dict) -> Op:
    """Embeds embedrank documents; grouped results are not reranked."""
    request = bound("query_points_groups", collection, args, kwargs)
    state = yield from read_state(collection)
    request["query"], request["prefetch"] = yield Work(for_query, (
        state, (request["query"], request["prefetch"]), request["using"]))
    return (yield Call("query_points_groups", request))


def reranked(p: RerankPlan, candidates: list[models.ScoredPoint]) -> Op:
    points = yield Work(rerank, (p, candidates))
    selected = None
    if needs_reread(p.with_payload) and points:
        records = yield Call("retrieve", {"collection_name": p.collection,
                                          "ids": [pt.id for pt in points],
                                          "with_payload": p.with_payload})
        selected = {r.id: r.payload for r in records}
    return strip_payload(points, p.with_payload, selected)


# ------------------------------------------------------------------------------ configuration


def set_reranker(collection: str, model: Any, text_field: str = "text", top_k: int = 100,
                 instruction: str | None = None) -> Op:
    config = None if model is None else (
        yield Work(configure, (model, text_field, top_k, instruction)))
    yield update_metadata(collection, {RERANK_KEY: None if config is None else asdict(config)})


def collection_reranker(collection: str) -> Op:
    return (yield from read_state(collection)).reranker


def collection_models(collection: str) -> Op:
    return dict((yield from read_state(collection)).records)


def set_instruction(collection: str, instruction: str | None, using: str | None = None) -> Op:
    if instruction is not None and not isinstance(instruction, str):
        raise InputError(f"instruction must be a str or None, got {type(instruction).__name__}")
    return (yield Locked(collection, _set_instruction(collection, instruction, using or "")))


def _set_instruction(collection: str, instruction: str | None, using: str) -> Op:
    record = (yield from read_state(collection)).records.get(using)
    if record is None:
        raise InputError(f"collection {collection!r} has no embedrank model recorded for "
                         f"vector {using!r} yet: write documents first")
    yield update_metadata(collection, {meta_key(using): {**asdict(record),
                                                         "instruction": instruction}})


def check_embedder(collection: str, model: str, using: str | None = None) -> Op:
    """Refuse ``model`` if the collection holds another embedder's vectors; record it if new."""
    reg = registration(model)
    if reg is None:
        raise InputError(f"{model!r} is not a registered embedrank model: register_embedder first")
    return (yield Locked(collection, _check_embedder(collection, reg, using or "")))


def _check_embedder(collection: str, reg: Registration, using: str) -> Op:
    state = yield from ensure_records(collection, {using: reg})
    return state.records.get(using) or ModelRecord.of(reg)
