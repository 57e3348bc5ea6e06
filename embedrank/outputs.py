"""Guards for commands that write (and may replace) a directory: export, train, merge.

embedrank deletes a directory only when it wrote it itself (an exported model directory: its
``embedrank.json`` manifest says so), and never writes into, over or around its own input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from embedrank.errors import InputError

MANIFEST_FILE = "embedrank.json"  # embedrank.manifest.MANIFEST_NAME
KINDS = ("embedder", "reranker")


def written_by_embedrank(directory: str | os.PathLike) -> bool:
    """True for a directory embedrank exported: it holds an ``embedrank.json`` manifest (any
    format version) naming a model kind and a fingerprint."""
    path = Path(directory)
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        data = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("kind") in KINDS and bool(data.get("fingerprint"))


def check_replaceable(out: str | os.PathLike) -> None:
    """Refuse to delete ``out`` unless embedrank wrote it (see :func:`written_by_embedrank`)."""
    path = Path(out)
    if path.is_symlink():
        raise InputError(f"{str(path)!r} is a symbolic link; --overwrite replaces only a model "
                         "directory embedrank exported: give the real path or another OUT")
    if not written_by_embedrank(path):
        raise InputError(f"{str(path)!r} is not a model directory embedrank exported (no "
                         f"{MANIFEST_FILE} manifest), so --overwrite will not delete it: choose an "
                         "empty or new OUT, or remove that directory yourself")


def check_no_overlap(out: str | os.PathLike, *sources: str | os.PathLike) -> None:
    """Refuse an output directory that is, is inside, or contains one of the local ``sources``
    (a hub id that is not a local path is not a directory and cannot overlap)."""
    target = Path(out).resolve()
    for src in sources:
        if not Path(src).exists():
            continue
        source = Path(src).resolve()
        if target == source:
            raise InputError(f"the output directory {str(out)!r} is the source checkpoint "
                             f"{str(src)!r}: choose another output directory")
        if source in target.parents:
            raise InputError(f"the output directory {str(out)!r} is inside the source checkpoint "
                             f"{str(src)!r}: choose a directory outside it")
        if target in source.parents:
            raise InputError(f"the source checkpoint {str(src)!r} is inside the output directory "
                             f"{str(out)!r}: choose an output directory that does not contain it")
