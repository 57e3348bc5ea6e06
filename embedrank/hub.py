"""Where a PyTorch checkpoint comes from (a local directory or the Hugging Face hub), checked fast.

Loading a missing checkpoint through transformers offline spends a minute or more in hub retries
before it fails; :func:`check_source` answers at once: the directory is there, or the hub id is in
the local cache, or the hub is reachable; otherwise one line that says what to pass instead.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

from embedrank.errors import InputError, ModelDirError

HUB_HOST = "huggingface.co"
MANIFEST_FILE = "embedrank.json"  # embedrank.manifest.MANIFEST_NAME (kept import-free here)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def hub_reachable(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    """One TCP connection attempt to the hub (no retries); False when HF_HUB_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_cached(repo_id: str) -> bool:
    """True when the hub model ``repo_id`` is in the local Hugging Face cache (loads offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - no huggingface_hub, or an id it refuses: not cached
        return False


def exported_source(directory: Path) -> str | None:
    """The ``source`` an embedrank model directory's manifest records, if it can be read."""
    try:
        data = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
        return data.get("source") if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def check_source(src: str | os.PathLike, hint: str = "") -> None:
    """Raise at once when ``src`` (a checkpoint directory or a hub id) cannot be loaded.

    ``hint`` ends the message (e.g. "or pass the checkpoint with --source DIR").
    """
    text, path = str(src), Path(src)
    tail = f"; {hint}" if hint else ""
    if path.is_dir():
        if (path / MANIFEST_FILE).is_file():
            recorded = exported_source(path)
            origin = f" (its manifest names {recorded!r})" if recorded else ""
            raise InputError(f"{text!r} is an exported embedrank model directory, not a PyTorch "
                             f"checkpoint: pass the checkpoint it was exported from{origin}{tail}")
        return
    if path.exists():
        raise InputError(f"{text!r} is a file; pass a checkpoint directory (config.json + "
                         f"safetensors) or a hub id{tail}")
    if not _HUB_ID.match(text) or text.startswith(("~", ".")):
        raise ModelDirError(f"checkpoint directory {text!r} does not exist{tail}")
    if hub_cached(text) or hub_reachable():
        return
    raise ModelDirError(f"{text!r} is not a local directory, and as a hub id it is neither in the "
                        f"local Hugging Face cache nor downloadable ({HUB_HOST} is not reachable): "
                        f"pass a local checkpoint directory{tail}")
