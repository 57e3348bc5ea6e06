"""ONNX export: parity with PyTorch on mixed-length batches, graph shape, atomic output."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from embedrank.cli.main import main
from embedrank.errors import InputError, ParityError
from embedrank.export import export_model, verify
from embedrank.export.parity import DOCUMENTS, QUERIES
from embedrank.manifest import fingerprint, read_manifest
from embedrank.plugin import Embedder, Reranker


def test_verification_batch_is_mixed_length_and_unicode(tokenizer):
    lengths = [len(tokenizer.encode(d).ids) for d in DOCUMENTS]
    assert len(DOCUMENTS) >= 4 and max(lengths) >= 3 * min(lengths)
    assert any(ord(c) > 0x3000 for d in DOCUMENTS for c in d)  # CJK / emoji included
    assert len(QUERIES) >= 4


def test_embedder_parity_report(embedder_dir, tiny_ckpt):
    report = verify(embedder_dir, str(tiny_ckpt))
    assert report.passed and report.min_cosine >= 0.9999
    assert set(report.checks) == {"documents", "queries (default instr.)",
                                  "queries (custom instr.)", "documents dim=32"}
    assert report.max_abs_diff < 1e-5


def test_reranker_parity_report(reranker_dir, tiny_ckpt):
    report = verify(reranker_dir, str(tiny_ckpt))
    assert report.passed and report.max_abs_diff <= 1e-4
    assert len(report.checks) == 4  # two queries x (default, custom) instruction


def test_embedder_matches_torch_on_a_fresh_mixed_batch(embedder_dir, torch_embedder):
    texts = ["hi", "Ünïcödé façade — 北京是中国的首都 " * 6, "a medium sized sentence about cats",
             "x " * 90]
    runtime = Embedder.load(embedder_dir, token_budget=64)  # forces several batches
    onnx_docs = runtime.embed_documents(texts)
    ref = torch_embedder.embed_documents(texts).numpy()
    np.testing.assert_allclose(onnx_docs, ref, atol=2e-6)
    onnx_q = runtime.embed_queries(texts, instruction="Find duplicates")
    ref_q = torch_embedder.embed_queries(texts, instruction="Find duplicates").numpy()
    np.testing.assert_allclose(onnx_q, ref_q, atol=2e-6)
    # each row equals the same text embedded alone (left padding changes nothing)
    alone = np.stack([runtime.embed_documents([t])[0] for t in texts])
    np.testing.assert_allclose(onnx_docs, alone, atol=2e-6)


def test_reranker_matches_torch_with_and_without_instruction(reranker_dir, torch_reranker):
    docs = ["Paris is the capital of France.", "bananas " * 40, "東京", "The Eiffel tower"]
    runtime = Reranker.load(reranker_dir)
    for instruction in (None, "Judge relevance for a travel question"):
        got = runtime.score("capital of France?", docs, instruction)
        ref = torch_reranker.score("capital of France?", docs, instruction).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-5)
        assert ((got > 0) & (got < 1)).all() and np.ptp(got) > 1e-3  # scores really differ


def test_reranker_graph_has_one_logit_head_not_full_vocab(reranker_dir):
    model = onnx.load(str(reranker_dir / "model.onnx"))
    (out,) = model.graph.output
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch"]
    big = [i.name for i in model.graph.initializer if 151669 in i.dims]
    assert len(big) == 1  # the input embedding table only, no [vocab, hidden] LM head matmul
    manifest = read_manifest(reranker_dir)
    assert (manifest.yes_token_id, manifest.no_token_id) == (9693, 2152)


def test_manifest_contents(embedder_dir):
    m = read_manifest(embedder_dir)
    assert (m.kind, m.dim, m.matryoshka_dims, m.dtype, m.opset) == ("embedder", 64, (32, 64), "fp32", 20)
    assert (m.padding_side, m.pooling) == ("right", "last_token")  # the fused GQA graph
    assert (m.eot_token_id, m.pad_token_id) == (151643, 151643)
    assert m.prompts.query_template == "Instruct: {instruction}\nQuery:{query}"
    assert m.fingerprint == fingerprint(embedder_dir, m) and len(m.fingerprint) == 64
    assert m.max_length == 1024  # min(8192, the model's max_position_embeddings)


def test_fp16_export_parity(tiny_ckpt, tmp_path):
    result = export_model("embedder", str(tiny_ckpt), tmp_path / "fp16", dtype="fp16")
    assert result.parity.passed and result.parity.min_cosine >= 0.999
    assert read_manifest(result.out).dtype == "fp16"


def test_external_data_for_large_graphs(tiny_ckpt, tmp_path, monkeypatch):
    import embedrank.export.onnx as onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1_000)
    out = export_model("embedder", str(tiny_ckpt), tmp_path / "ext").out
    assert (out / "model.onnx.data").stat().st_size > (out / "model.onnx").stat().st_size
    assert read_manifest(out).fingerprint == fingerprint(out, read_manifest(out))
    runtime = Embedder.load(out)
    assert runtime.embed_documents(["hello"]).shape == (1, 64)


def test_failed_parity_writes_nothing(tiny_ckpt, tmp_path, monkeypatch):
    import embedrank.export.parity as verify_mod

    monkeypatch.setitem(verify_mod.TOLERANCES, "fp32", (1.01, -1.0))  # unreachable
    with pytest.raises(ParityError, match="nothing was written"):
        export_model("reranker", str(tiny_ckpt), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_not_overwritten(tiny_ckpt, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="--overwrite"):
        export_model("embedder", str(tiny_ckpt), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_cli_export_and_verify(tiny_ckpt, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli-reranker"
    res = runner.invoke(main, ["export", "reranker", str(tiny_ckpt), str(out)])
    assert res.exit_code == 0, res.output
    assert "PASS: reranker fp32" in res.output and (out / "embedrank.json").exists()
    res = runner.invoke(main, ["verify", str(out), "--against", str(tiny_ckpt),
                               "--json", str(tmp_path / "p.json")])
    assert res.exit_code == 0 and "PASS" in res.output
    figures = json.loads((tmp_path / "p.json").read_text())
    assert figures["passed"] and figures["max_abs_diff"] <= 1e-4


def test_cli_reports_errors_without_traceback(tmp_path):
    res = CliRunner().invoke(main, ["export", "embedder", str(tmp_path / "missing"),
                                    str(tmp_path / "o")])
    assert res.exit_code == 1 and "error: checkpoint directory" in res.output
    assert "does not exist" in res.output
    assert "Traceback" not in res.output
