"""``embedrank.json``: the contract between export/ and the serving side.

A model directory holds ``model.onnx`` (+ external data), the tokenizer files and this
manifest. The runtime reads every prompt string, token id, size and requirement from here.

Sealed: every field that steers the runtime is typed and inside the fingerprint, and the
fingerprint covers every file of the directory (whatever its name: external data included), so
a manifest edited after export, or a file changed, added or removed, is refused on load.
``extra`` holds how the model was made (exporter, recipe); the runtime never reads it.
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
FORMAT_VERSION = 2  # 2: requirements typed and fingerprinted, every file of the directory hashed
KINDS = ("embedder", "reranker")
DEVICES = ("cuda",)  # requires_device: None (any) or one of these
OUTPUT_NAMES = {"embedder": "embedding", "reranker": "logit"}
# manifest fields covered by the fingerprint: editing any of them changes what the model computes
# or how the runtime runs it
CONTRACT_FIELDS = ("kind", "prompts", "dim", "max_length", "dtype", "pad_token_id", "eot_token_id",
                   "matryoshka_dims", "yes_token_id", "no_token_id", "padding_side", "pooling",
                   "normalize", "inputs", "output", "requires_device", "min_onnxruntime",
                   "custom_ops", "format_version")


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
    requires_device: str | None = None  # "cuda": the graph has ops ONNX Runtime runs on CUDA only
    min_onnxruntime: str | None = None  # the oldest ONNX Runtime that has every op the graph uses
    custom_ops: tuple[str, ...] = ()  # ops of embedrank's library (embedrank.ops) the graph uses
    source: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # how it was made; informational, never steers

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
            version = data.get("format_version", 1)
            if version != FORMAT_VERSION:
                raise ManifestError(_version_advice(version))
            for key in ("matryoshka_dims", "inputs", "custom_ops"):
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
        if manifest.requires_device not in (None, *DEVICES):
            raise ManifestError(f"{MANIFEST_NAME}: requires_device must be null or one of {DEVICES}, "
                                f"got {manifest.requires_device!r}")
        return manifest

    def write(self, directory: str | Path) -> None:
        (Path(directory) / MANIFEST_NAME).write_text(self.to_json(), encoding="utf-8")


def _version_advice(version) -> str:
    if isinstance(version, int) and version > FORMAT_VERSION:
        return (f"{MANIFEST_NAME} has format_version {version}, newer than this embedrank reads "
                f"({FORMAT_VERSION}); upgrade embedrank to load it")
    return (f"{MANIFEST_NAME} has format_version {version!r}, which this embedrank no longer reads "
            f"(it reads {FORMAT_VERSION}: requirements and every file are sealed by the fingerprint); "
            "re-export the model with `embedrank export embedder|reranker SRC OUT`")


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


def model_files(directory: str | Path) -> list[Path]:
    """Every file of the model directory but the manifest (graph, any external data, tokenizer),
    sorted by relative path: what the fingerprint covers."""
    root = Path(directory)
    return sorted((p for p in root.rglob("*") if p.is_file() and p.relative_to(root) != Path(MANIFEST_NAME)),
                  key=lambda p: p.relative_to(root).as_posix())


def fingerprint(directory: str | Path, manifest: Manifest | None = None) -> str:
    """sha256 over the manifest's contract and every file of the directory (names and bytes).

    The contract (prompt strings, token ids, sizes, requirements) is part of the model's identity:
    a manifest edited after export no longer matches its fingerprint; nor does a directory with a
    file changed, added, renamed or removed.
    """
    root = Path(directory)
    digest = hashlib.sha256()
    if manifest is not None:
        digest.update(manifest.contract())
    for file in model_files(root):
        digest.update(f"{file.relative_to(root).as_posix()}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()
