"""int8 export: quantized graph, parity against fp32 PyTorch with int8 tolerances, atomic output."""

import numpy as np
import onnx
import pytest

from embedrank.cli.main import INT8_RECIPES
from embedrank.errors import InputError, ParityError
from embedrank.export import export_model
from embedrank.export.parity import MEAN_COSINE, TOLERANCES
from embedrank.export.quantize import (
    DEFAULT_RECIPE,
    RECIPES,
    QuantRecipe,
    quantize,
    select_nodes,
)
from embedrank.manifest import fingerprint, read_manifest
from embedrank.plugin import Embedder, Reranker


@pytest.fixture(scope="module")
def int8_embedder(tiny_ckpt, tmp_path_factory):
    return export_model("embedder", str(tiny_ckpt), tmp_path_factory.mktemp("q") / "int8",
                        dtype="int8")


def test_int8_embedder_passes_int8_parity(int8_embedder):
    report = int8_embedder.parity
    assert report.passed and report.dtype == "int8"
    assert report.min_cosine >= TOLERANCES["int8"][0]
    assert report.mean_cosine >= MEAN_COSINE["int8"] and report.top1_agreement == 1.0
    assert "PASS: embedder int8" in report.table() and "top-1 agreement" in report.table()


def test_int8_manifest_and_graph(int8_embedder):
    out = int8_embedder.out
    manifest = read_manifest(out)
    assert manifest.dtype == "int8" and manifest.fingerprint == fingerprint(out, manifest)
    assert manifest.extra["int8_recipe"] == DEFAULT_RECIPE
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops  # the linear layers are int8 blocks now


def test_runtime_loads_int8_and_matches_torch(int8_embedder, torch_embedder):
    runtime = Embedder.load(int8_embedder.out, token_budget=64)
    texts = ["hi", "a medium sized sentence about cats", "Ünïcödé — 北京 " * 5]
    got, ref = runtime.embed_documents(texts), torch_embedder.embed_documents(texts).numpy()
    assert got.shape == (3, 64) and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert ((got * ref).sum(1) > TOLERANCES["int8"][0]).all()
    assert np.abs(got - ref).max() > 0  # really quantized, not the fp32 graph


def test_int8_reranker_parity(tiny_ckpt, tmp_path):
    result = export_model("reranker", str(tiny_ckpt), tmp_path / "r8", dtype="int8")
    assert result.parity.passed and result.parity.max_abs_diff <= TOLERANCES["int8"][1]
    scores = Reranker.load(result.out).score("capital of France?", ["Paris", "bananas"])
    assert ((scores > 0) & (scores < 1)).all()


def test_failed_int8_parity_writes_nothing(tiny_ckpt, tmp_path, monkeypatch):
    import embedrank.export.parity as parity

    monkeypatch.setitem(parity.MEAN_COSINE, "int8", 1.01)  # unreachable
    with pytest.raises(ParityError, match="nothing was written"):
        export_model("embedder", str(tiny_ckpt), tmp_path / "out", dtype="int8")
    assert list(tmp_path.iterdir()) == []


def test_sensitive_layers_stay_fp32(torchscript_embedder_dir, tmp_path):
    model = onnx.load(str(torchscript_embedder_dir / "model.onnx"))
    first_last = (r"/layers\.0/", r"/layers\.{last}/")
    quantized, kept = select_nodes(model, first_last)
    assert len(quantized) + len(kept) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert quantized == []  # with 2 layers the first and last blocks are all of them
    with pytest.raises(InputError, match="nothing to quantize"):
        quantize(torchscript_embedder_dir / "model.onnx", tmp_path / "q.onnx",
                 QuantRecipe("keep-ends", "pertoken", keep_fp32=first_last))
    recipe = QuantRecipe("keep-down", "pertoken", keep_fp32=(r"/down_proj/",))
    result = quantize(torchscript_embedder_dir / "model.onnx", tmp_path / "q.onnx", recipe)
    assert result.quantized == 12 and [n.split("/")[-2] for n in result.kept_fp32] == ["down_proj"] * 2
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    names = {n.name for n in graph.node if n.op_type == "MatMul"}
    assert set(result.kept_fp32) <= names


def test_the_product_ships_the_recipes_a_user_should_pick() -> None:
    assert sorted(RECIPES) == ["int8-block32", "smooth-pertoken", "w8-block32", "w8-block32-outliers"]
    assert DEFAULT_RECIPE == "int8-block32" and RECIPES["smooth-pertoken"].smooth == 0.5
    assert [name for name, r in RECIPES.items() if r.calibrated] == ["smooth-pertoken",
                                                                     "w8-block32-outliers"]
    assert list(INT8_RECIPES) == list(RECIPES)  # the CLI's choices


def test_unknown_recipe_is_an_input_error(torchscript_embedder_dir, tmp_path):
    with pytest.raises(InputError, match="int8 recipe"):
        quantize(torchscript_embedder_dir / "model.onnx", tmp_path / "q.onnx", "int3")
