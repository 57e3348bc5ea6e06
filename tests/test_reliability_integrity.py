"""Model integrity: damaged or mismatched model directories are refused with a clear error;
loading never unpickles; custom model code never runs unless asked for.

(tests/test_runtime.py already covers a truncated graph, a missing file, garbage JSON, a wrong
dim / kind and a wrong EOT id; this adds the cases below and tallies them all.)
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from qdrant_support import other_fingerprint_dir
from reliability_support import TALLY

from embedrank.cli.main import main
from embedrank.errors import ManifestError, ModelDirError
from embedrank.manifest import MANIFEST_NAME, TOKENIZER_NAME, Manifest, fingerprint, read_manifest
from embedrank.plugin import Embedder, QdrantClient, Reranker

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("embedrank", "runtime", "ops", "train", "export", "plugin", "bench", "cli")


def variant(src: Path, dst: Path) -> Path:
    """A copy of a model directory whose files are hard links (edit them with :func:`rewrite`)."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def rewrite(path: Path, data: bytes) -> None:
    path.unlink()  # break the hard link first: the original must stay intact
    path.write_bytes(data)


def edit_manifest(directory: Path, refingerprint: bool = False, **changes) -> None:
    data = json.loads((directory / MANIFEST_NAME).read_text())
    data.update(changes)
    if refingerprint:
        data["fingerprint"] = fingerprint(directory, Manifest.from_dict(data))
    rewrite(directory / MANIFEST_NAME, json.dumps(data).encode())


def test_damaged_or_mismatched_model_directories_are_refused(embedder_dir, tmp_path):
    graph = (embedder_dir / "model.onnx").read_bytes()
    tokenizer = json.loads((embedder_dir / TOKENIZER_NAME).read_text(encoding="utf-8"))

    def flipped(d):
        rewrite(d / "model.onnx", graph[: len(graph) // 2] + bytes([graph[len(graph) // 2] ^ 1])
                + graph[len(graph) // 2 + 1:])

    def truncated_refingerprinted(d):
        rewrite(d / "model.onnx", graph[: len(graph) // 2])
        edit_manifest(d, refingerprint=True)

    def other_eot_token(d):
        tok = json.loads(json.dumps(tokenizer))
        for added in tok["added_tokens"]:
            if added["content"] == "<|endoftext|>":
                added["content"] = "<|endoftext-x|>"
        rewrite(d / TOKENIZER_NAME, json.dumps(tok).encode())
        edit_manifest(d, refingerprint=True)

    def garbage_tokenizer(d):
        rewrite(d / TOKENIZER_NAME, b'{"version": "1.0", "model": 3}')
        edit_manifest(d, refingerprint=True)

    cases = {
        "model.onnx: one bit flipped": (flipped, ManifestError, "fingerprint"),
        "model.onnx: truncated, manifest re-fingerprinted": (truncated_refingerprinted,
                                                             ModelDirError, "truncated or corrupt"),
        "manifest: fingerprint edited": (lambda d: edit_manifest(d, fingerprint="0" * 64),
                                         ManifestError, "fingerprint"),
        "manifest: dim edited": (lambda d: edit_manifest(d, dim=32),
                                            ManifestError, "fingerprint"),
        "manifest: input names edited, re-fingerprinted": (
            lambda d: edit_manifest(d, True, inputs=["ids", "mask"]), ManifestError, "graph .* takes"),
        "manifest: output name edited, re-fingerprinted": (
            lambda d: edit_manifest(d, True, output="logit"), ManifestError, "returns"),
        "manifest: future format_version": (lambda d: edit_manifest(d, format_version=99),
                                            ManifestError, "upgrade embedrank"),
        "manifest: prompts removed": (lambda d: edit_manifest(d, prompts=None), ManifestError,
                                      "malformed"),
        "manifest: a JSON list": (lambda d: rewrite(d / MANIFEST_NAME, b"[]"), ManifestError,
                                  "JSON object"),
        "tokenizer: another EOT token": (other_eot_token, ManifestError, "tokenizer"),
        "tokenizer: unreadable": (garbage_tokenizer, ModelDirError, "cannot read the tokenizer"),
    }
    for k, (damage, error, message) in enumerate(cases.values()):
        d = variant(embedder_dir, tmp_path / f"v{k}")
        damage(d)
        with pytest.raises(error, match=message):
            Embedder.load(d)
    manifest = read_manifest(embedder_dir)
    assert fingerprint(embedder_dir, manifest) == manifest.fingerprint  # untouched
    TALLY.add("integrity", "damaged model dir / manifest / tokenizer", len(cases), len(cases), 0,
              "refused at load")


def test_a_collection_refuses_an_embedder_with_another_fingerprint(embedder_dir, tmp_path):
    other = other_fingerprint_dir(embedder_dir, tmp_path / "other")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": i, "text": f"line {i}"}) + "\n" for i in range(5)))
    db = tmp_path / "db"

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    assert run("ingest", "docs", data, "--embedder", embedder_dir, "--path", db).exit_code == 0
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": 9, "text": "another line"}) + "\n")
    refused = [run("ingest", "docs", more, "--embedder", other, "--path", db),
               run("query", "docs", "line", "--embedder", other, "--path", db)]
    for out in refused:
        assert out.exit_code == 1 and "was built with embedder 'embedder'" in out.output
    client = QdrantClient(path=str(db))
    try:
        assert client.count("docs").count == 5
    finally:
        client.close()
    TALLY.add("integrity", "collection fingerprint != embedder (ingest, query)", 2, 2, 0,
              "refused, nothing written")


def calls_in(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            yield "import " + " ".join(names), node


def test_loading_never_unpickles():
    """No pickle / joblib / dill; torch.load only with weights_only=True; np.load without pickles."""
    bad = []
    for folder in CODE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            for name, node in calls_in(path):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                if name.startswith("import") and any(
                        m in name.split() for m in ("pickle", "cPickle", "dill", "joblib",
                                                    "cloudpickle")):
                    bad.append(f"{where} {name}")
                if name == "torch.load":
                    kw = {k.arg: k.value for k in node.keywords}
                    if not (
                            isinstance(kw.get("weights_only"), ast.Constant)
                            and kw["weights_only"].value is True):
                        bad.append(f"{where} torch.load without weights_only=True")
                if name.endswith("np.load") or name.endswith("numpy.load"):
                    kw = {k.arg: k.value for k in node.keywords}
                    if "allow_pickle" in kw:
                        bad.append(f"{where} np.load(allow_pickle=...)")
    assert not bad, bad
    TALLY.add("integrity", "code scan: pickle / torch.load / np.load(allow_pickle)",
              len(CODE_DIRS), len(CODE_DIRS), 0, "no unpickling")


def test_pickled_weights_are_refused(tiny_ckpt, tmp_path):
    import torch
    from safetensors.torch import load_file

    from embedrank.train import Embedder as TorchEmbedder

    ckpt = tmp_path / "bin-only"
    shutil.copytree(tiny_ckpt, ckpt)
    weights = load_file(ckpt / "model.safetensors")
    (ckpt / "model.safetensors").unlink()
    torch.save(weights, ckpt / "pytorch_model.bin")
    with pytest.raises(ModelDirError, match="safetensors"):
        TorchEmbedder.from_pretrained(ckpt)
    TALLY.add("integrity", "checkpoint with pickled weights only (pytorch_model.bin)", 1, 1, 0,
              "refused: safetensors only")


def test_trust_remote_code_is_off_unless_asked(tiny_ckpt, tmp_path, monkeypatch):
    from embedrank import export
    from embedrank.export import parity
    from embedrank.train import Embedder as TorchEmbedder
    from embedrank.train import Reranker as TorchReranker

    for fn in (TorchEmbedder.from_pretrained, TorchReranker.from_pretrained, export.export_model,
               export.onnx.load_module, parity.verify):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False, fn
    seen = []

    def fake_export(*args, **kwargs):
        seen.append(kwargs)
        raise RuntimeError("stop before exporting")

    monkeypatch.setattr(export, "export_model", fake_export)
    for extra in ([], ["--trust-remote-code"]):
        CliRunner().invoke(main, ["export", "embedder", str(tiny_ckpt), str(tmp_path / "o"),
                                  *extra])
    assert [kw["trust_remote_code"] for kw in seen] == [False, True]
    # a checkpoint that ships code: loading it does not run the code
    ckpt = tmp_path / "with-code"
    shutil.copytree(tiny_ckpt, ckpt)
    marker = tmp_path / "code-ran"
    (ckpt / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                  "from transformers import Qwen3Model as EvilModel\n")
    config = json.loads((ckpt / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel"}
    (ckpt / "config.json").write_text(json.dumps(config))
    try:
        TorchEmbedder.from_pretrained(ckpt)
    except ModelDirError:
        pass  # refusing is as good as ignoring
    assert not marker.exists()
    TALLY.add("integrity", "trust_remote_code: defaults, export CLI flag, checkpoint with code",
              3, 3, 0, "off unless --trust-remote-code")


def test_reranker_refuses_a_damaged_directory_too(reranker_dir, tmp_path):
    d = variant(reranker_dir, tmp_path / "r")
    edit_manifest(d, fingerprint="f" * 64)
    with pytest.raises(ManifestError, match="fingerprint"):
        Reranker.load(d)
    d2 = variant(reranker_dir, tmp_path / "r2")
    edit_manifest(d2, kind="embedder")
    with pytest.raises(ManifestError):
        Reranker.load(d2)
    TALLY.add("integrity", "reranker: edited fingerprint, wrong kind", 2, 2, 0, "refused at load")
