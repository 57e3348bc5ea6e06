"""``embedrank.json``: the contract between export/ and plugin/.

A model directory holds ``model.onnx`` (+ external data), the tokenizer files and this
manifest. The runtime reads every prompt string, token id and size from here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from embedrank.errors import ManifestError, ModelDirError
from embedrank.formats import PromptFormat

MANIFEST_NAME = "embedrank.json"
GRAPH_NAME = "model.onnx"
TOKENIZER_NAME = "tokenizer.json"
FORMAT_VERSION = 1
KINDS = ("embedder", "reranker")
OUTPUT_NAMES = {"embedder": "embedding", "reranker": "logit"}
# manifest fields covered by the fingerprint: editing any of them changes what the model computes
CONTRACT_FIELDS = ("kind", "prompts", "dim", "max_length", "dtype", "pad_token_id", "eot_token_id",
                   "matryoshka_dims", "yes_token_id", "no_token_id", "padding_side", "pooling",
                   "normalize", "inputs", "output")


@dataclass(frozen=True)
class Manifest:
    kind: str  # "embedder" | "reranker"
    prompts: PromptFormat
    dim: int  # embedding size (embedder) or hidden size (reranker)
    max_length: int
    dtype: str  # "fp32" | "fp16"
    opset: int
    fingerprint: str  # sha256 over graph (+ external data), tokenizer.json and contract()
    pad_token_id: int
    eot_token_id: int
    matryoshka_dims: tuple[int, int] | None = None  # [min, max] for embedders
    yes_token_id: int | None = None
    no_token_id: int | None = None
    padding_side: str = "left"
    pooling: str = "last_token"
    normalize: bool = True
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    output: str = "embedding"
    source: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def contract(self) -> bytes:
        """The fields that decide what the model computes, as canonical JSON (fingerprinted)."""
        data = asdict(self)
        data["prompts"] = self.prompts.to_dict()
        picked = {k: data[k] for k in CONTRACT_FIELDS}
        return json.dumps(picked, sort_keys=True, ensure_ascii=True).encode()

    def sealed(self, directory: str | Path) -> Manifest:
        """This manifest with the fingerprint of ``directory``'s files and its own contract."""
        return replace(self, fingerprint=fingerprint(directory, self))

    def to_json(self) -> str:
        data = asdict(self)
        data["prompts"] = self.prompts.to_dict()
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        try:
            data = dict(data)
            data["prompts"] = PromptFormat.from_dict(data["prompts"])
            for key in ("matryoshka_dims", "inputs"):
                if data.get(key) is not None:
                    data[key] = tuple(data[key])
            known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
            manifest = cls(**known)
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{MANIFEST_NAME} is malformed ({exc}); re-export the model "
                                "with `embedrank export`") from None
        if manifest.kind not in KINDS:
            raise ManifestError(f"{MANIFEST_NAME}: unknown kind {manifest.kind!r}")
        if manifest.padding_side not in ("left", "right"):
            raise ManifestError(f"{MANIFEST_NAME}: padding_side must be 'left' or 'right', got "
                                f"{manifest.padding_side!r}")
        if manifest.format_version > FORMAT_VERSION:
            raise ManifestError(f"{MANIFEST_NAME} has format_version {manifest.format_version}; "
                                "upgrade embedrank to load it")
        return manifest

    def write(self, directory: str | Path) -> None:
        (Path(directory) / MANIFEST_NAME).write_text(self.to_json(), encoding="utf-8")


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory)
    if not path.is_dir():
        raise ModelDirError(f"model directory {str(path)!r} does not exist; export one with "
                            "`embedrank export embedder|reranker SRC OUT`")
    for name in (MANIFEST_NAME, GRAPH_NAME, TOKENIZER_NAME):
        if not (path / name).is_file():
            raise ModelDirError(f"{str(path)!r} has no {name}: it is not an embedrank model "
                                "directory (or the export was interrupted); re-run `embedrank export`")
    try:
        data = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path / MANIFEST_NAME} is not valid JSON ({exc}); "
                            "re-export the model") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path / MANIFEST_NAME} must hold a JSON object; re-export the model")
    return Manifest.from_dict(data)


def graph_files(directory: str | Path) -> list[Path]:
    """model.onnx and its external-data files (model.onnx.data, model.onnx_data...)."""
    path = Path(directory)
    return [path / GRAPH_NAME] + sorted(p for p in path.glob(GRAPH_NAME + "?*") if p.is_file())


def fingerprint(directory: str | Path, manifest: Manifest | None = None) -> str:
    """sha256 over the graph (with external data), tokenizer.json and the manifest's contract.

    The contract (prompt strings, token ids, sizes) is part of the model's identity: a manifest
    edited after export no longer matches its fingerprint.
    """
    digest = hashlib.sha256()
    if manifest is not None:
        digest.update(manifest.contract())
    for file in [*graph_files(directory), Path(directory) / TOKENIZER_NAME]:
        digest.update(file.name.encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()
