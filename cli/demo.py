"""``embedrank demo``'s default models: Qwen3's hub checkpoints, exported once into the cache."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from embedrank.errors import EmbedrankError, ModelDirError
from embedrank.hub import HUB_HOST, hub_reachable
from embedrank.manifest import read_manifest

HUB_MODELS = {"embedder": "Qwen/Qwen3-Embedding-0.6B", "reranker": "Qwen/Qwen3-Reranker-0.6B"}
OFFLINE_ROUTE = (
    "Pass exported model directories instead: `embedrank demo --embedder DIR --reranker DIR`. "
    "Offline, make them from SmolLM2-135M-Instruct (a real small LM from PyPI; plumbing, not "
    "retrieval quality): see the README's 'Models offline' section")


def cache_dir() -> Path:
    return Path(os.environ.get("EMBEDRANK_CACHE", Path.home() / ".cache" / "embedrank"))


def default_model(kind: str, echo: Callable[[str], None] = print) -> Path:
    """The exported hub model for ``kind`` from the cache, exporting it on first use."""
    out = cache_dir() / "demo" / HUB_MODELS[kind].split("/")[-1]
    try:
        read_manifest(out)
        return out
    except ModelDirError:
        pass
    if not hub_reachable():
        raise EmbedrankError(f"the Hugging Face hub ({HUB_HOST}) is not reachable, so "
                             f"{HUB_MODELS[kind]} cannot be downloaded. {OFFLINE_ROUTE}")
    echo(f"exporting {HUB_MODELS[kind]} to {out} (first run only) ...")
    try:
        from embedrank.export import export_model

        return export_model(kind, HUB_MODELS[kind], out, overwrite=True).out
    except Exception as exc:  # hub errors, missing torch extra, disk...: all end the same way
        raise EmbedrankError(f"cannot export {HUB_MODELS[kind]} ({type(exc).__name__}: "
                             f"{_first_line(exc)}). {OFFLINE_ROUTE}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0]
