"""The torch-free runtime: loading, Matryoshka, batching, devices, and clear errors."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from embedrank import errors
from embedrank.errors import (
    DeviceError,
    EmbedrankError,
    InputError,
    ManifestError,
    ModelDirError,
)
from embedrank.formats import matryoshka
from embedrank.manifest import read_manifest
from embedrank.plugin import Embedder, Reranker

TEXTS = ["one", "two words", "a somewhat longer sentence, with punctuation!", "四 五 六"]


def test_plugin_import_never_loads_torch():
    code = ("import sys, embedrank.plugin, embedrank.cli.main; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_error_is_an_embedrank_error():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert len(classes) >= 8 and all(issubclass(c, EmbedrankError) for c in classes)


def test_embeddings_are_normalized_float32_in_input_order(embedder_dir):
    emb = Embedder.load(embedder_dir)
    docs = emb.embed_documents(TEXTS)
    assert docs.dtype == np.float32 and docs.shape == (4, 64)
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, rtol=1e-6)
    reversed_docs = emb.embed_documents(TEXTS[::-1])
    np.testing.assert_allclose(reversed_docs[::-1], docs, atol=1e-6)
    # the query template changes the vector; an explicit default instruction does not
    q = emb.embed_queries(TEXTS)
    assert np.abs(q - docs).max() > 1e-3
    np.testing.assert_allclose(emb.embed_queries(TEXTS, emb.default_instruction), q, atol=1e-6)


def test_matryoshka_dim_selects_a_truncated_normalized_prefix(embedder_dir):
    full = Embedder.load(embedder_dir).embed_documents(TEXTS)
    small = Embedder.load(embedder_dir, dim=32).embed_documents(TEXTS)
    assert small.shape == (4, 32)
    np.testing.assert_allclose(small, matryoshka(full, 32), atol=1e-6)
    with pytest.raises(InputError, match="Matryoshka range"):
        Embedder.load(embedder_dir, dim=16)


def test_token_budget_batching_gives_the_same_vectors(embedder_dir):
    texts = [f"text number {i} " * (1 + i % 7) for i in range(40)]
    big = Embedder.load(embedder_dir).embed_documents(texts)
    seen = []
    tiny = Embedder.load(embedder_dir, token_budget=64, max_batch_size=4)
    small = tiny.embed_documents(texts, progress=seen.append)
    np.testing.assert_allclose(small, big, atol=2e-6)
    assert sum(seen) == 40 and len(seen) > 10


def test_truncation_to_the_manifest_max_length(embedder_dir, torch_embedder):
    emb = Embedder.load(embedder_dir)
    very_long = "token " * 3000  # beyond max_length 1024
    (ids,) = torch_embedder.tokenize_documents([very_long])
    assert len(ids) == emb.max_length == 1024 and ids[-1] == 151643
    np.testing.assert_allclose(emb.embed_documents([very_long]),
                               torch_embedder.embed_documents([very_long]).numpy(), atol=2e-6)


def test_reranker_scores_are_probabilities_in_input_order(reranker_dir):
    rr = Reranker.load(reranker_dir)
    scores = rr.score("capital of France", TEXTS)
    assert scores.dtype == np.float32 and scores.shape == (4,)
    assert ((scores > 0) & (scores < 1)).all()
    np.testing.assert_allclose(rr.score("capital of France", TEXTS[::-1])[::-1], scores, atol=1e-6)
    assert rr.score("q", []).shape == (0,)
    with pytest.raises(InputError, match="query must be a str"):
        rr.score(["q"], TEXTS)
    with pytest.raises(InputError, match=r"documents\[1\]"):
        rr.score("q", ["fine", None])


def test_empty_batches_are_valid(embedder_dir):
    assert Embedder.load(embedder_dir).embed_documents([]).shape == (0, 64)


def test_cuda_without_a_cuda_provider_is_an_error_not_a_fallback(embedder_dir):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="onnxruntime-gpu"):
        Embedder.load(embedder_dir, device="cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        Embedder.load(embedder_dir, device="tpu")


def test_cuda_provider_options(monkeypatch):
    import onnxruntime as ort

    from embedrank.runtime.models import providers_for

    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    (name, options), cpu = providers_for("cuda:1")
    assert (name, cpu) == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert options == {"device_id": 1, "arena_extend_strategy": "kSameAsRequested"}
    assert providers_for("cpu") == ["CPUExecutionProvider"]


def test_missing_directory_and_files(tmp_path, embedder_dir):
    with pytest.raises(ModelDirError, match="does not exist.*embedrank export"):
        Embedder.load(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(embedder_dir, broken)
    (broken / "model.onnx").unlink()
    with pytest.raises(ModelDirError, match="no model.onnx"):
        Embedder.load(broken)


def test_corrupt_graph_is_refused(tmp_path, embedder_dir):
    bad = tmp_path / "bad"
    shutil.copytree(embedder_dir, bad)
    data = (bad / "model.onnx").read_bytes()
    (bad / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ManifestError, match="fingerprint"):
        Embedder.load(bad)
    with pytest.raises(ModelDirError, match="truncated or corrupt"):
        Embedder.load(bad, check_fingerprint=False)


def _edit_manifest(path, **changes):
    data = json.loads((path / "embedrank.json").read_text())
    data.update(changes)
    (path / "embedrank.json").write_text(json.dumps(data))


def test_manifest_that_does_not_match_the_graph(tmp_path, embedder_dir, reranker_dir):
    bad = tmp_path / "dim"
    shutil.copytree(embedder_dir, bad)
    _edit_manifest(bad, dim=128)
    with pytest.raises(ManifestError, match="fingerprint"):
        Embedder.load(bad)
    with pytest.raises(ManifestError, match="dim=128"):  # the graph check, on its own
        Embedder.load(bad, check_fingerprint=False)
    with pytest.raises(ManifestError, match="not an embedder: load it with embedrank.runtime.Reranker"):
        Embedder.load(reranker_dir)
    garbage = tmp_path / "garbage"
    shutil.copytree(embedder_dir, garbage)
    (garbage / "embedrank.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Embedder.load(garbage)
    _edit_manifest(garbage.parent / "dim", kind="vectorizer")
    with pytest.raises(ManifestError, match="unknown kind"):
        Embedder.load(bad)


@pytest.mark.parametrize("change", [
    {"prompts": {"query_template": "Instruct: {instruction}\nQuery: {query}"}},  # one extra space
    {"max_length": 512},
])
def test_manifest_edited_after_export_breaks_the_fingerprint(tmp_path, embedder_dir, change):
    edited = tmp_path / "edited"
    shutil.copytree(embedder_dir, edited)
    data = json.loads((edited / "embedrank.json").read_text())
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    (edited / "embedrank.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="fingerprint"):
        Embedder.load(edited)


def test_tokenizer_that_does_not_match(tmp_path, embedder_dir):
    bad = tmp_path / "tok"
    shutil.copytree(embedder_dir, bad)
    _edit_manifest(bad, eot_token_id=42)
    with pytest.raises(ManifestError, match="tokenizer"):
        Embedder.load(bad, check_fingerprint=False)


@pytest.mark.parametrize("bad", [None, 3, [""], ["ok", 5]])
def test_wrong_input_types(embedder_dir, bad):
    with pytest.raises(InputError):
        Embedder.load(embedder_dir).embed_documents(bad)


def test_wrong_instruction_type(embedder_dir):
    with pytest.raises(InputError, match="instruction"):
        Embedder.load(embedder_dir).embed_queries(["q"], instruction=3)


@pytest.mark.parametrize("field,value", [("requires_device", "cuda"), ("min_onnxruntime", "1.0"),
                                         ("custom_ops", ["SwiGLU"])])
def test_requirements_are_typed_and_sealed(tmp_path, embedder_dir, field, value):
    edited = tmp_path / "edited"
    shutil.copytree(embedder_dir, edited)
    data = json.loads((edited / "embedrank.json").read_text())
    assert field in data and "requires_device" not in data["extra"]  # typed, not in extra
    data[field] = value
    (edited / "embedrank.json").write_text(json.dumps(data))
    with pytest.raises((ManifestError, DeviceError), match="fingerprint|exported for CUDA"):
        Embedder.load(edited)
    data["fingerprint"] = read_manifest(embedder_dir).fingerprint
    with pytest.raises((ManifestError, DeviceError)):
        Embedder.load(edited, device="cpu")


@pytest.mark.parametrize("name", ["weights.bin", "model.onnx.data", "sub/extra.onnx_data"])
def test_the_fingerprint_covers_every_file_whatever_its_name(tmp_path, embedder_dir, name):
    edited = tmp_path / "edited"
    shutil.copytree(embedder_dir, edited)
    (edited / name).parent.mkdir(parents=True, exist_ok=True)
    (edited / name).write_bytes(b"\0" * 16)  # an added external-data file
    with pytest.raises(ManifestError, match="fingerprint"):
        Embedder.load(edited)


def test_old_manifests_are_refused_with_what_to_do(tmp_path, embedder_dir):
    old = tmp_path / "old"
    shutil.copytree(embedder_dir, old)
    data = json.loads((old / "embedrank.json").read_text())
    assert data["format_version"] == 2
    data["format_version"] = 1
    (old / "embedrank.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="format_version 1.*re-export the model with `embedrank export"):
        Embedder.load(old)
    data["format_version"] = 3
    (old / "embedrank.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="upgrade embedrank"):
        Embedder.load(old)


def test_encode_then_forward_is_what_embed_and_score_do(embedder_dir, reranker_dir):
    """The two public steps the server batches with: encode_* / forward / finish."""
    embedder, reranker = Embedder.load(embedder_dir, dim=32), Reranker.load(reranker_dir)
    texts = ["short", "a somewhat longer text about vector search engines", "mid length one"]
    seqs = embedder.encode_queries(texts, "Find it")
    rows = np.concatenate([embedder.forward([s], len(s) + 5) for s in seqs])  # extra padding
    np.testing.assert_allclose(embedder.finish(rows), embedder.embed_queries(texts, "Find it"),
                               atol=1e-6)
    assert embedder.finish(rows).shape == (3, 32) and embedder.finish(rows, 64).shape == (3, 64)
    pairs = reranker.encode("what is qdrant", texts)
    np.testing.assert_allclose(reranker.finish(reranker.forward(pairs)),
                               reranker.score("what is qdrant", texts), atol=1e-6)
    with pytest.raises(InputError):
        embedder.forward(seqs, 2)  # narrower than a sequence
