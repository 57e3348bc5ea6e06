"""static_shape=(B, S): every forward pass is B x S, results equal the dynamic runtime's."""

import numpy as np
import pytest

from embedrank.errors import DeviceError, InputError
from embedrank.export import export_model
from embedrank.plugin import Embedder, Reranker

# mixed lengths, more texts than B=4: three batches, the last one holding 1 real row + 3 dummies
TEXTS = ["short", "a somewhat longer document about the capital of France, Paris", "x",
         "bananas are yellow and grow in bunches", "one two three four five six seven eight nine",
         "tiny", "the quick brown fox jumps over the lazy dog " * 3, "Qdrant stores vectors",
         "ok", "embeddings map text to vectors in a space where close means similar"]
SHAPE = (4, 64)


@pytest.fixture(scope="module")
def external_reranker_dir(tiny_ckpt, tmp_path_factory):
    """Every weight in model.onnx.data (the > 2 GB path, at tiny size)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("embedrank.export.onnx.EXTERNAL_DATA_THRESHOLD", 0)
        return export_model("reranker", str(tiny_ckpt), tmp_path_factory.mktemp("static") / "rr").out


def _count_passes(model, monkeypatch) -> list:
    shapes = []
    infer = model._infer

    def counting(ids, mask):
        shapes.append((ids.shape, mask.shape))
        return infer(ids, mask)

    monkeypatch.setattr(model, "_infer", counting)
    return shapes


@pytest.mark.parametrize("fixture, side", [("embedder_dir", "right"), ("torchscript_embedder_dir", "left")])
def test_static_embeddings_equal_dynamic(fixture, side, request, monkeypatch):
    path = request.getfixturevalue(fixture)
    dynamic = Embedder.load(path)
    static = Embedder.load(path, static_shape=SHAPE)
    assert static.manifest.padding_side == side
    assert [i.shape for i in static.session.get_inputs()] == [list(SHAPE)] * 2
    shapes = _count_passes(static, monkeypatch)
    got = static.embed_documents(TEXTS)
    assert shapes == [(SHAPE, SHAPE)] * 3  # ceil(10 / 4) passes, each exactly B x S
    np.testing.assert_allclose(got, dynamic.embed_documents(TEXTS), atol=1e-5)
    np.testing.assert_allclose(static.embed_queries(["capital of France?"]),
                               dynamic.embed_queries(["capital of France?"]), atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    small = Embedder.load(path, dim=32, static_shape=SHAPE).embed_documents(TEXTS)
    np.testing.assert_allclose(small, Embedder.load(path, dim=32).embed_documents(TEXTS), atol=1e-5)


@pytest.mark.parametrize("fixture", ["embedder_dir", "torchscript_embedder_dir"])
def test_static_padding_fills_rows_and_columns_with_one_token_dummies(fixture, request):
    model = Embedder.load(request.getfixturevalue(fixture), static_shape=(3, 6))
    m = model.manifest
    ids, mask = model._pad([[7, 8, 9], [5]])
    assert ids.shape == mask.shape == (3, 6) and ids.dtype == mask.dtype == np.int64
    rows = [[7, 8, 9], [5], [m.eot_token_id]]  # the last row is a dummy with one real token
    for row, seq in enumerate(rows):
        cols = slice(6 - len(seq), 6) if m.padding_side == "left" else slice(0, len(seq))
        assert ids[row, cols].tolist() == seq and mask[row, cols].tolist() == [1] * len(seq)
        assert mask[row].sum() == len(seq) and (ids[row][mask[row] == 0] == m.pad_token_id).all()


def test_static_reranker_scores_equal_dynamic(reranker_dir):
    docs = TEXTS[:7]
    want = Reranker.load(reranker_dir).score("capital of France?", docs)
    got = Reranker.load(reranker_dir, static_shape=(4, 128)).score("capital of France?", docs)
    assert got.shape == (7,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_static_shape_reads_external_data_without_writing_the_model_dir(external_reranker_dir):
    path = external_reranker_dir
    assert (path / "model.onnx.data").stat().st_size > (path / "model.onnx").stat().st_size
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    got = Reranker.load(path, static_shape=(2, 128)).score("capital of France?", TEXTS[:3])
    np.testing.assert_allclose(got, Reranker.load(path).score("capital of France?", TEXTS[:3]),
                               atol=1e-5)
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before


def test_input_longer_than_s_raises_before_any_pass(embedder_dir, monkeypatch):
    model = Embedder.load(embedder_dir, static_shape=(2, 8))
    shapes = _count_passes(model, monkeypatch)
    with pytest.raises(InputError, match=r"more than static_shape's sequence length S=8") as err:
        model.embed_documents(["ok", "a document far longer than eight tokens, so it cannot fit"])
    assert "max_length=" in str(err.value) and shapes == []
    assert model.embed_documents(["ok"]).shape == (1, model.dim)  # the model still works


@pytest.mark.parametrize("shape", [(0, 8), (4, -1), (4,), (4, 8, 1), "4x8", (4, 8.0), (True, 8), None])
def test_bad_static_shape_raises_input_error(embedder_dir, shape):
    if shape is None:  # one past the manifest's max_length
        shape = (2, Embedder.load(embedder_dir).max_length + 1)
    with pytest.raises(InputError, match="static_shape"):
        Embedder.load(embedder_dir, static_shape=shape)


def test_cuda_graph_needs_static_shape_and_cuda(embedder_dir, reranker_dir):
    with pytest.raises(InputError, match="needs static_shape"):
        Embedder.load(embedder_dir, device="cuda", cuda_graph=True)
    with pytest.raises(DeviceError, match="needs a CUDA device"):
        Embedder.load(embedder_dir, static_shape=SHAPE, cuda_graph=True)
    with pytest.raises(DeviceError, match="needs a CUDA device"):
        Reranker.load(reranker_dir, "cpu", static_shape=SHAPE, cuda_graph=True)
