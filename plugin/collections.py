"""Collections remember their models, in the collection metadata (``create_collection(metadata=)``).

Key ``"embedrank"`` describes the default (unnamed) vector, ``"embedrank:<name>"`` the named
vector ``<name>``. Each value is ``{"embedder", "fingerprint", "dim", "instruction"}``. The
first write of an embedrank ``models.Document`` records it; later writes (and queries) with
another fingerprint or dim raise :class:`CollectionMismatchError` before anything is written.

A writer that finds no record first adds a claim, ``"embedrank.claim:<vector>:<nonce>"``, then
reads the metadata again, and writes the record (removing its claim in the same update) only if no
record or claim of another embedder showed up meanwhile (:meth:`CollectionState.confirm`; the
protocol is in :func:`embedrank.plugin.core.ensure_records`).

Key ``"embedrank.reranker"`` holds the collection's reranker (:class:`RerankConfig`):
``{"model_dir", "fingerprint", "text_field", "top_k", "instruction"}``, written by
``set_reranker`` and read by :func:`reranker_config`, the one function the clients and the
server call. Pure functions over ``CollectionInfo``: the sync and async clients do the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qdrant_client import models

from embedrank.errors import CollectionMismatchError, InputError
from embedrank.plugin.vectorizer import (
    Registration,
    check_document_texts,
    document_instruction,
    find_documents,
    registration,
)

META_KEY = "embedrank"
RERANK_KEY = "embedrank.reranker"
CLAIM_KEY = "embedrank.claim:"


def meta_key(vector_name: str) -> str:
    return META_KEY if not vector_name else f"{META_KEY}:{vector_name}"


def claim_key(vector_name: str, nonce: str) -> str:
    return f"{CLAIM_KEY}{vector_name}:{nonce}"


def where(vector_name: str) -> str:
    return "the default vector" if not vector_name else f"vector {vector_name!r}"


def plan_models(obj: Any, name: str = "") -> dict[str, Registration]:
    """The embedder of each vector a request writes or queries ("" = the default vector).

    Every document's text is checked first; two embedders for one vector are refused.
    """
    check_document_texts(obj)
    found: dict[str, Registration] = {}
    for vector_name, doc in find_documents(obj, name):
        merge(found, {vector_name: registration(doc.model)})
    return found


def merge(known: dict[str, Registration], regs: dict[str, Registration]) -> dict[str, Registration]:
    """Add ``regs`` to ``known`` and return the new entries; another embedder for a vector
    already in ``known`` (another fingerprint or dim) is refused."""
    new = {}
    for vector_name, reg in regs.items():
        have = known.get(vector_name)
        if have is None:
            known[vector_name] = new[vector_name] = reg
        elif (have.fingerprint, have.dim) != (reg.fingerprint, reg.dim):
            raise CollectionMismatchError(
                f"one request uses embedders {have.name!r} (fingerprint {have.fingerprint[:12]}, "
                f"dim {have.dim}) and {reg.name!r} (fingerprint {reg.fingerprint[:12]}, dim "
                f"{reg.dim}) for {where(vector_name)}; a vector holds one embedder's vectors: "
                "send them to different vectors or collections")
    return new


@dataclass(frozen=True)
class ModelRecord:
    embedder: str
    fingerprint: str
    dim: int
    instruction: str | None = None

    @classmethod
    def of(cls, reg: Registration) -> ModelRecord:
        return cls(reg.name, reg.fingerprint, reg.dim, reg.instruction)


def _record(collection: str, key: str, value: Any) -> ModelRecord:
    try:
        return ModelRecord(**value)
    except TypeError:
        raise CollectionMismatchError(
            f"collection {collection!r} has an unreadable {key!r} metadata entry ({value!r}); "
            f"remove it with update_collection(metadata={{{key!r}: None}})") from None


def _same_model(a: ModelRecord, b: ModelRecord) -> bool:
    return (a.fingerprint, a.dim) == (b.fingerprint, b.dim)


@dataclass(frozen=True)
class RerankConfig:
    """A collection's reranker: the model directory and its fingerprint, and how to use it.

    ``model_dir`` is an absolute path on the machine that reranks; a directory there whose
    fingerprint differs is refused when the reranker is loaded.
    """

    model_dir: str
    fingerprint: str
    text_field: str = "text"
    top_k: int = 100
    instruction: str | None = None

    def __post_init__(self) -> None:
        top_k, text_field, instruction = self.top_k, self.text_field, self.instruction
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise InputError(f"top_k must be a positive int, got {top_k!r}")
        if not isinstance(text_field, str) or not text_field:
            raise InputError(f"text_field must be a non-empty str, got {text_field!r}")
        if instruction is not None and not isinstance(instruction, str):
            raise InputError(f"instruction must be a str or None, got {type(instruction).__name__}")
        for name in ("model_dir", "fingerprint"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InputError(f"{name} must be a non-empty str, got {getattr(self, name)!r}")


def reranker_config(metadata: dict | None, collection: str = "?") -> RerankConfig | None:
    """The reranker recorded in a collection's metadata, or None (pure: no I/O, no model)."""
    value = (metadata or {}).get(RERANK_KEY)
    if value is None:
        return None
    try:
        return RerankConfig(**value)
    except (TypeError, InputError) as exc:
        raise CollectionMismatchError(
            f"collection {collection!r} has an unreadable {RERANK_KEY!r} metadata entry ({exc}); "
            f"set it again with set_reranker({collection!r}, MODEL_DIR) or remove it with "
            f"set_reranker({collection!r}, None)") from None


@dataclass
class CollectionState:
    """What a client needs to know about a collection: model records and vector sizes."""

    name: str
    records: dict[str, ModelRecord]
    sizes: dict[str, int | None]  # vector name -> size ("" = default vector)
    reranker: RerankConfig | None = None
    claims: dict[str, dict[str, ModelRecord]] = field(default_factory=dict)  # vector -> nonce ->

    @classmethod
    def from_info(cls, name: str, info: models.CollectionInfo) -> CollectionState:
        metadata = info.config.metadata or {}
        records: dict[str, ModelRecord] = {}
        claims: dict[str, dict[str, ModelRecord]] = {}
        for key, value in metadata.items():
            if key == META_KEY or key.startswith(META_KEY + ":"):
                records[key[len(META_KEY) + 1:]] = _record(name, key, value)
            elif key.startswith(CLAIM_KEY) and ":" in key[len(CLAIM_KEY):]:
                vector_name, nonce = key[len(CLAIM_KEY):].rsplit(":", 1)
                claims.setdefault(vector_name, {})[nonce] = _record(name, key, value)
        vectors = info.config.params.vectors
        if isinstance(vectors, models.VectorParams):
            sizes: dict[str, int | None] = {"": vectors.size}
        else:
            sizes = {k: v.size for k, v in (vectors or {}).items()}
        return cls(name, records, sizes, reranker_config(metadata, name), claims)

    def check(self, vector_name: str, reg: Registration) -> ModelRecord | None:
        """Raise if ``reg`` cannot write/query ``vector_name``; return a record to store, if new."""
        if vector_name not in self.sizes:
            raise InputError(f"collection {self.name!r} has no {where(vector_name)}; its vectors are "
                             f"{sorted(self.sizes) or 'none'} (\"\" = default)")
        size = self.sizes[vector_name]
        label = "" if not vector_name else f" (vector {vector_name!r})"
        if size is not None and size != reg.dim:
            low, high = reg.embedder.manifest.matryoshka_dims or (reg.dim, reg.dim)
            fix = (f"register it with dim={size} (Matryoshka) or use a collection of size {reg.dim}"
                   if low <= size <= high else
                   f"its Matryoshka sizes are {low}..{high}, so create the collection with a size "
                   "in that range (client.get_embedding_size(name) gives the registered one)")
            raise CollectionMismatchError(
                f"collection {self.name!r}{label} holds {size}-d vectors but embedder "
                f"{reg.name!r} makes {reg.dim}-d ones: {fix}")
        record = self.records.get(vector_name)
        if record is None:
            return ModelRecord.of(reg)
        if record.fingerprint != reg.fingerprint or record.dim != reg.dim:
            raise CollectionMismatchError(
                f"collection {self.name!r}{label} was built with embedder {record.embedder!r} "
                f"(fingerprint {record.fingerprint[:12]}, dim {record.dim}); {reg.name!r} has "
                f"fingerprint {reg.fingerprint[:12]}, dim {reg.dim}. Register the original model "
                "directory, or re-embed into a new collection")
        return None

    def missing(self, regs: dict[str, Registration]) -> dict[str, ModelRecord]:
        """Check every (vector, embedder) of a request; return the records the collection lacks."""
        checked = {name: self.check(name, reg) for name, reg in regs.items()}
        return {name: record for name, record in checked.items() if record is not None}

    def confirm(self, new: dict[str, ModelRecord], nonce: str) -> dict[str, ModelRecord]:
        """After claiming ``new`` under ``nonce`` and reading again: the records still to write.

        Refused if another embedder's record or claim for one of these vectors is there now.
        """
        out = {}
        for vector_name, mine in new.items():
            record = self.records.get(vector_name)
            if record is not None:
                if not _same_model(record, mine):
                    raise CollectionMismatchError(
                        f"collection {self.name!r}: {where(vector_name)} was just recorded with "
                        f"embedder {record.embedder!r} (fingerprint {record.fingerprint[:12]}, dim "
                        f"{record.dim}) by another writer; {mine.embedder!r} cannot write there, "
                        "nothing was written")
                continue
            for other, claim in self.claims.get(vector_name, {}).items():
                if other != nonce and not _same_model(claim, mine):
                    raise CollectionMismatchError(
                        f"collection {self.name!r}: another writer is recording embedder "
                        f"{claim.embedder!r} (fingerprint {claim.fingerprint[:12]}) for "
                        f"{where(vector_name)}; nothing was written. Retry; if no other writer "
                        "is running, one that crashed left its claim: remove it with "
                        f"update_collection(metadata={{{claim_key(vector_name, other)!r}: None}})")
            out[vector_name] = mine
        return out

    def claims_of(self, records: dict[str, ModelRecord]) -> list[str]:
        """The claim keys on these vectors of writers of the same models (live, or left behind
        by a writer that died or whose answer was lost); the record replaces them."""
        return [claim_key(name, nonce) for name, mine in records.items()
                for nonce, claim in self.claims.get(name, {}).items() if _same_model(claim, mine)]

    def default_instruction(self, vector_name: str, model_name: str) -> str | None:
        """The collection's query instruction for a vector: its record, else the registration's."""
        record = self.records.get(vector_name)
        if record is not None and record.instruction is not None:
            return record.instruction
        reg = registration(model_name)
        return reg.instruction if reg is not None else None

    def instruction_for(self, vector_name: str, doc: models.Document) -> str | None:
        """Query instruction: per-query option > collection record > registration > model."""
        given, instruction = document_instruction(doc)
        return instruction if given else self.default_instruction(vector_name, doc.model)
