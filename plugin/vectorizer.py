"""Model names for ``models.Document``: a registry of exported embedders, and the embedding pass.

``register_embedder(name, path)`` makes ``models.Document(text=..., model=name)`` mean "embed
with this model directory". :class:`embedrank.plugin.QdrantClient` replaces such documents by
vectors itself (documents through ``embed_documents``, queries through ``embed_queries``) before
handing the request to qdrant-client. Where fastembed is installed, the names are also added to
fastembed's dense text model registry, so a plain ``qdrant_client.QdrantClient`` embeds them too
(see :func:`_install_fastembed_seam`, the one place that touches fastembed).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel
from qdrant_client import models

from embedrank.errors import InputError
from embedrank.formats import text_problem
from embedrank.runtime import Embedder

OPTION_KEYS = ("instruction",)  # what models.Document(options=...) may hold for our models


@dataclass(frozen=True)
class Registration:
    name: str
    embedder: Embedder
    instruction: str | None = None

    @property
    def dim(self) -> int:
        return self.embedder.dim

    @property
    def fingerprint(self) -> str:
        return self.embedder.fingerprint


_REGISTRY: dict[str, Registration] = {}
_LOCK = threading.Lock()


def register_embedder(name: str, path: str | os.PathLike | Embedder, dim: int | None = None,
                      instruction: str | None = None, device: str = "cpu") -> Embedder:
    """Make ``models.Document(text=..., model=name)`` embed with the model directory ``path``.

    ``dim`` truncates to a Matryoshka size (collections then have ``dim``-d vectors);
    ``instruction`` is the default query instruction of collections filled with this name.
    Registering a name again replaces it. Returns the loaded :class:`Embedder`.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"the embedder name must be a non-empty str, got {name!r}")
    if instruction is not None and not isinstance(instruction, str):
        raise InputError(f"instruction must be a str or None, got {type(instruction).__name__}")
    _refuse_builtin_name(name)
    if isinstance(path, Embedder):
        embedder = path if dim is None or dim == path.dim else Embedder.load(path.path, path.device,
                                                                              dim)
    else:
        embedder = Embedder.load(path, device, dim)
    with _LOCK:
        _REGISTRY[name.lower()] = Registration(name, embedder, instruction)
    _install_fastembed_seam()
    return embedder


def unregister_embedder(name: str) -> None:
    with _LOCK:
        _REGISTRY.pop(name.lower(), None)


def registration(name: str) -> Registration | None:
    """The registration for a model name (case-insensitive, like fastembed), or None."""
    return _REGISTRY.get(name.lower()) if isinstance(name, str) else None


def registered_names() -> list[str]:
    return [r.name for r in _REGISTRY.values()]


def is_ours(obj: Any) -> bool:
    return isinstance(obj, models.Document) and registration(obj.model) is not None


def document_instruction(doc: models.Document) -> tuple[bool, str | None]:
    """(given, instruction) from ``doc.options``; unknown option keys are refused."""
    options = doc.options or {}
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise InputError(f"models.Document options {unknown} are not understood by embedrank "
                         f"model {doc.model!r}; it accepts {list(OPTION_KEYS)}")
    if "instruction" in options and not isinstance(options["instruction"], (str, type(None))):
        raise InputError("models.Document options['instruction'] must be a str")
    return "instruction" in options, options.get("instruction")


# ---------------------------------------------------------------- walking request structures


def map_documents(obj: Any, fn: Callable[[str, models.Document], Any], name: str = "") -> Any:
    """Return ``obj`` with every embedrank ``models.Document`` replaced by ``fn(vector_name, doc)``.

    ``vector_name`` is the named-vector key the document sits under ("" for the default vector);
    inside a ``Prefetch`` / ``QueryRequest`` it is that object's ``using``. Untouched branches
    are returned as the same objects (nothing is copied when there is nothing to embed).
    """
    if isinstance(obj, models.Document):
        return fn(name, obj) if is_ours(obj) else obj
    if isinstance(obj, (models.Prefetch, models.QueryRequest)):
        name = obj.using or ""
    if isinstance(obj, BaseModel):
        updates = {}
        for field in type(obj).model_fields:
            value = getattr(obj, field)
            new = map_documents(value, fn, name)
            if new is not value:
                updates[field] = new
        return obj.model_copy(update=updates) if updates else obj
    if isinstance(obj, dict):
        new = {key: map_documents(value, fn, key if isinstance(key, str) else name)
               for key, value in obj.items()}
        return new if any(new[k] is not obj[k] for k in obj) else obj
    if isinstance(obj, (list, tuple)):
        items = [map_documents(value, fn, name) for value in obj]
        return items if any(a is not b for a, b in zip(items, obj, strict=False)) else obj
    return obj


def find_documents(obj: Any, name: str = "") -> list[tuple[str, models.Document]]:
    found: list[tuple[str, models.Document]] = []
    map_documents(obj, lambda n, d: found.append((n, d)) or d, name)
    return found


def check_document_texts(obj: Any) -> None:
    """Refuse the first embedrank document whose text cannot be embedded, naming its point.

    ``obj`` is a request (points, a query...); in a list, items with an ``id`` are named by it.
    """
    for k, item in enumerate(obj if isinstance(obj, (list, tuple)) else [obj]):
        for _, doc in find_documents(item):
            problem = text_problem(doc.text)
            if problem is not None:
                point_id = getattr(item, "id", None)
                label = f"point {point_id!r}" if isinstance(point_id, (int, str)) else f"item {k}"
                raise InputError(f"{label}: models.Document(model={doc.model!r}) text {problem}; "
                                 "nothing of this request was sent to Qdrant")


def embed_in(obj: Any, is_query: bool,
             instruction_for: Callable[[str, models.Document], str | None] | None = None,
             name: str = "") -> Any:
    """Replace every embedrank ``models.Document`` in ``obj`` by its vector (a list of floats).

    Documents are embedded in one batch per (model, instruction). ``instruction_for(vector_name,
    doc)`` picks each query's instruction (only called when ``is_query``).
    """
    found = find_documents(obj, name)
    if not found:
        return obj
    groups: dict[tuple[str, str | None], list[tuple[str, models.Document]]] = {}
    for vector_name, doc in found:
        instruction = None
        if is_query:
            instruction = (instruction_for or _registered_instruction)(vector_name, doc)
        else:
            document_instruction(doc)  # validates the options even though documents ignore them
        groups.setdefault((doc.model.lower(), instruction), []).append((vector_name, doc))
    vectors: dict[tuple[str, int], list[float]] = {}
    for (model, instruction), items in groups.items():
        embedder = _REGISTRY[model].embedder
        texts = [doc.text for _, doc in items]
        out = embedder.embed_queries(texts, instruction) if is_query else \
            embedder.embed_documents(texts)
        for (vector_name, doc), row in zip(items, out, strict=True):
            vectors[(vector_name, id(doc))] = row.tolist()
    return map_documents(obj, lambda n, d: vectors[(n, id(d))], name)


def _registered_instruction(vector_name: str, doc: models.Document) -> str | None:
    given, instruction = document_instruction(doc)
    return instruction if given else _REGISTRY[doc.model.lower()].instruction


# ---------------------------------------------------------------- fastembed seam (plain clients)


def _refuse_builtin_name(name: str) -> None:
    try:
        from fastembed import TextEmbedding
    except ImportError:
        return
    ours = {n.lower() for n in _REGISTRY}
    for description in TextEmbedding.list_supported_models():
        if description["model"].lower() == name.lower() and name.lower() not in ours:
            raise InputError(f"{name!r} is a fastembed model name; register the embedrank model "
                             "under another name")


def _install_fastembed_seam() -> bool:
    """Add :class:`FastembedAdapter` to ``fastembed.TextEmbedding.EMBEDDINGS_REGISTRY``.

    The single point of contact with fastembed / qdrant-client's local inference. It relies on:
    qdrant-client (<1.21) asking ``fastembed.TextEmbedding.list_supported_models()`` whether a
    ``models.Document`` model is a dense text model, then building ``TextEmbedding(model_name,
    **document_options)`` and calling ``.embed`` (upserts) or ``.query_embed`` (queries); and
    ``TextEmbedding`` dispatching to the first class in ``EMBEDDINGS_REGISTRY`` that lists the
    name. tests/test_qdrant_seam.py fails if any of this changes. Returns False without fastembed.
    """
    try:
        from fastembed import TextEmbedding
    except ImportError:
        return False
    adapter = _fastembed_adapter()
    if adapter not in TextEmbedding.EMBEDDINGS_REGISTRY:
        TextEmbedding.EMBEDDINGS_REGISTRY.append(adapter)
    return True


_ADAPTER: type | None = None


def _fastembed_adapter() -> type:
    """Build (once) the fastembed ``TextEmbeddingBase`` subclass that serves registered names."""
    global _ADAPTER
    if _ADAPTER is not None:
        return _ADAPTER
    from fastembed.common.model_description import DenseModelDescription, ModelSource
    from fastembed.text.text_embedding_base import TextEmbeddingBase

    class FastembedAdapter(TextEmbeddingBase):
        """A registered embedrank model seen through fastembed's TextEmbedding interface."""

        @classmethod
        def _list_supported_models(cls) -> list[DenseModelDescription]:
            return [DenseModelDescription(
                model=r.name, sources=ModelSource(url=r.embedder.path.resolve().as_uri()),
                model_file="model.onnx", description="embedrank model directory", license="",
                size_in_GB=0.0, dim=r.dim) for r in list(_REGISTRY.values())]

        def __init__(self, model_name: str, cache_dir: str | None = None,
                     threads: int | None = None, **kwargs: Any) -> None:
            options = {k: kwargs.pop(k) for k in list(kwargs) if k in OPTION_KEYS}
            super().__init__(model_name, cache_dir, threads, **kwargs)
            probe = models.Document(text="-", model=model_name, options=options)
            self._given, self._instruction = document_instruction(probe)

        def _registration(self) -> Registration:
            found = registration(self.model_name)
            if found is None:
                raise InputError(f"embedrank model {self.model_name!r} is no longer registered")
            return found

        def embed(self, documents: str | Iterable[str], batch_size: int = 256,
                  parallel: int | None = None, **kwargs: Any) -> Iterable[np.ndarray]:
            yield from self._registration().embedder.embed_documents(_as_list(documents))

        def query_embed(self, query: str | Iterable[str], **kwargs: Any) -> Iterable[np.ndarray]:
            reg = self._registration()
            instruction = self._instruction if self._given else reg.instruction
            yield from reg.embedder.embed_queries(_as_list(query), instruction)

        @classmethod
        def get_embedding_size(cls, model_name: str) -> int:
            found = registration(model_name)
            if found is None:
                raise ValueError(f"{model_name!r} is not a registered embedrank model")
            return found.dim

        @property
        def embedding_size(self) -> int:
            return self._registration().dim

    _ADAPTER = FastembedAdapter
    return _ADAPTER


def _as_list(texts: str | Iterable[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)
