"""Fused export (dynamo + ONNX Runtime contrib ops): parity, fused op types, runtime, manifest."""

from collections import Counter

import numpy as np
import onnx
import pytest

from embedrank.errors import InputError
from embedrank.export import export_model
from embedrank.manifest import read_manifest
from embedrank.plugin import Embedder, Reranker


@pytest.fixture(scope="module")
def fused_embedder(tiny_ckpt, tmp_path_factory):
    return export_model("embedder", str(tiny_ckpt), tmp_path_factory.mktemp("fused") / "emb",
                        optimize="fused")


@pytest.fixture(scope="module")
def mha_embedder(tiny_ckpt, tmp_path_factory):
    return export_model("embedder", str(tiny_ckpt), tmp_path_factory.mktemp("fused") / "mha",
                        optimize="fused", attention="mha")


@pytest.fixture(scope="module")
def fused_reranker(tiny_ckpt, tmp_path_factory):
    """Exported with every weight in external data (the > 2 GB path, at tiny size)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("embedrank.export.onnx.EXTERNAL_DATA_THRESHOLD", 0)
        return export_model("reranker", str(tiny_ckpt), tmp_path_factory.mktemp("fused") / "rr",
                            optimize="fused")


def _op_types(model_dir) -> Counter:
    model = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    return Counter((n.domain, n.op_type) for n in model.graph.node)


@pytest.mark.parametrize("name", ["fused_embedder", "fused_reranker", "mha_embedder"])
def test_fused_graph_holds_contrib_ops_and_keeps_the_contract(name, request):
    result = request.getfixturevalue(name)
    ops = _op_types(result.out)
    layers = 2  # tiny_ckpt
    manifest = read_manifest(result.out)
    if name == "mha_embedder":  # left-padded: K/V expanded, rotary fused on its own
        assert ops["com.microsoft", "MultiHeadAttention"] == layers
        assert ops["com.microsoft", "RotaryEmbedding"] == 2 * layers  # q and k
        assert ops["com.microsoft", "GroupQueryAttention"] == 0
        assert manifest.padding_side == "left" and manifest.extra["attention"] == "mha"
    else:  # right-padded GQA: rotary inside, no K/V expand, no layout transposes
        assert ops["com.microsoft", "GroupQueryAttention"] == layers
        assert not any(op in ("MultiHeadAttention", "RotaryEmbedding", "Transpose") for _, op in ops)
        attrs = [{a.name: a.i for a in n.attribute} for n in onnx.load(
            str(result.out / "model.onnx"), load_external_data=False).graph.node
            if n.op_type == "GroupQueryAttention"]
        assert all(a["do_rotary"] == 1 and a["num_heads"] == 4 and a["kv_num_heads"] == 2
                   for a in attrs)
        assert manifest.padding_side == "right" and manifest.extra["attention"] == "gqa"
        assert manifest.extra["fused_ops"]["GroupQueryAttention"] == layers
    assert ops["com.microsoft", "SkipSimplifiedLayerNormalization"] >= layers
    assert ops["", "SimplifiedLayerNormalization"] >= 1  # ORT registers it in the onnx domain
    assert not any(op in ("Softmax", "Pow", "ReduceMean", "Neg", "Cos") for _, op in ops)  # all fused
    graph = onnx.load(str(result.out / "model.onnx"), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == [result.manifest.output]
    assert manifest.extra["optimize"] == "fused"
    assert manifest.opset >= 18


@pytest.mark.parametrize("name", ["fused_embedder", "mha_embedder"])
def test_fused_embedder_passes_parity(name, request):
    report = request.getfixturevalue(name).parity
    assert report.passed and report.min_cosine >= 0.9999 and report.max_abs_diff < 1e-5


def test_fused_reranker_passes_parity(fused_reranker):
    report = fused_reranker.parity
    assert report.passed and report.max_abs_diff <= 1e-4


def test_large_fused_graph_keeps_weights_in_one_external_file(fused_reranker, fused_embedder):
    files = sorted(p.name for p in fused_reranker.out.iterdir() if p.name.startswith("model.onnx"))
    assert files == ["model.onnx", "model.onnx.data"]
    assert (fused_reranker.out / "model.onnx").stat().st_size < 1_000_000
    assert not (fused_embedder.out / "model.onnx.data").exists()  # small: one file


@pytest.mark.parametrize("name", ["fused_embedder", "mha_embedder"])
def test_fused_runtime_matches_torch_on_mixed_batches(name, request, fused_reranker,
                                                      torch_embedder, torch_reranker):
    texts = ["hi", "Ünïcödé façade — 北京是中国的首都 " * 6, "a medium sized sentence", "x " * 90]
    out = request.getfixturevalue(name).out
    fused = Embedder.load(out, token_budget=64)  # several padded batches
    ref = torch_embedder.embed_documents(texts).numpy()
    np.testing.assert_allclose(fused.embed_documents(texts), ref, atol=2e-6)
    bound = Embedder.load(out, token_budget=64, io_binding=True)  # the CUDA path
    np.testing.assert_array_equal(bound.embed_documents(texts), fused.embed_documents(texts))
    alone = np.stack([fused.embed_documents([t])[0] for t in texts])
    np.testing.assert_allclose(fused.embed_documents(texts), alone, atol=2e-6)
    scores = Reranker.load(fused_reranker.out, token_budget=64).score("q?", texts)
    np.testing.assert_allclose(scores, torch_reranker.score("q?", texts).numpy(), atol=1e-5)


def test_optimize_is_checked(tiny_ckpt, tmp_path):
    with pytest.raises(InputError, match="optimize must be one of"):
        export_model("embedder", str(tiny_ckpt), tmp_path / "x", optimize="O3")
    assert not (tmp_path / "x").exists()


def test_default_export_is_fused_gqa(embedder_dir):
    manifest = read_manifest(embedder_dir)
    assert manifest.extra["optimize"] == "fused" and manifest.extra["attention"] == "gqa"
    assert manifest.padding_side == "right" and manifest.opset == 20


def test_manifest_padding_side_is_checked(fused_embedder, tmp_path):
    import json
    import shutil

    from embedrank.errors import ManifestError
    from embedrank.manifest import MANIFEST_NAME

    copy = tmp_path / "m"
    shutil.copytree(fused_embedder.out, copy)
    data = json.loads((copy / MANIFEST_NAME).read_text())
    data["padding_side"] = "middle"
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="padding_side must be"):
        read_manifest(copy)


def test_gqa_reference_on_right_padding_equals_the_model_on_left_padding(torch_embedder):
    """The swapped attention (the semantics the ONNX GroupQueryAttention node gets) is exact."""
    import torch

    from embedrank.export.gqa import RightPaddedGraph, gqa_attention
    from embedrank.formats import pad

    module = torch_embedder
    gen = torch.Generator().manual_seed(0)
    seqs = [[*torch.randint(10, 5000, (n - 1,), generator=gen).tolist(), module.eot_id]
            for n in (9, 3, 6, 1)]
    left = [torch.from_numpy(x) for x in pad(seqs, module.pad_id, "left")]
    right = [torch.from_numpy(x) for x in pad(seqs, module.pad_id, "right")]
    with torch.no_grad():
        ref = module(*left)
        with gqa_attention(module.model, 64, torch.float32, "cpu") as state:
            got = RightPaddedGraph(module, state)(*right)
        assert not hasattr(module.model.layers[0].self_attn, "_embedrank_gqa")  # restored
        assert "forward" not in vars(module.model.layers[-1])  # the last-layer cut too
        np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-6)
        np.testing.assert_allclose(module(*left).numpy(), ref.numpy(), atol=0)


def test_gqa_export_refuses_sliding_window_and_scaled_rope(tiny_ckpt):
    import torch

    from embedrank.errors import FusionError
    from embedrank.export.gqa import gqa_attention
    from embedrank.train.modeling import Embedder

    module = Embedder.from_pretrained(str(tiny_ckpt), dtype=torch.float32, device="cpu")
    module.model.config.use_sliding_window, module.model.config.sliding_window = True, 4096
    with pytest.raises(FusionError, match="sliding-window"):
        with gqa_attention(module.model, 64, torch.float32, "cpu"):
            pass
    module.model.config.use_sliding_window = False
    module.model.layers[0].self_attn.sliding_window = 4096  # a Mistral-style window
    with pytest.raises(FusionError, match="sliding-window"):
        with gqa_attention(module.model, 64, torch.float32, "cpu"):
            pass
    module.model.layers[0].self_attn.sliding_window = None
    module.model.layers[1].self_attn.scaling = 0.5
    with pytest.raises(FusionError, match="attention scale"):
        with gqa_attention(module.model, 64, torch.float32, "cpu"):
            pass
    module.model.layers[1].self_attn.scaling = 16 ** -0.5
    module.model.rotary_emb.rope_type = "yarn"
    with pytest.raises(FusionError, match="default rotary"):
        with gqa_attention(module.model, 64, torch.float32, "cpu"):
            pass


def test_export_defaults_per_device():
    from embedrank.export.onnx import resolve_variant

    assert resolve_variant("cuda") == ("fp16", "fused", "gqa", ("qkv",))
    assert resolve_variant("cuda", rewrites=()) == ("fp16", "fused", "gqa", ())
    assert resolve_variant("cuda:1", "fp32") == ("fp32", "fused", "mha", ())  # GQA: no fp32 kernel
    assert resolve_variant("cpu") == ("fp32", "fused", "gqa", ())
    assert resolve_variant("cpu", rewrites=("swiglu",)) == ("fp32", "fused", "gqa", ("swiglu",))
    assert resolve_variant("cpu", "int8") == ("int8", "none", None, ())
    assert resolve_variant("cpu", "fp16", "none") == ("fp16", "none", None, ())
    with pytest.raises(InputError, match="rewrites must be distinct names"):
        resolve_variant("cuda", rewrites=("qkv", "qkv"))
    with pytest.raises(InputError, match="rewrites must be distinct names"):
        resolve_variant("cuda", rewrites=("gelu",))
    with pytest.raises(InputError, match="GroupQueryAttention graph only"):
        resolve_variant("cpu", attention="mha", rewrites=("qkv",))
    with pytest.raises(InputError, match="attention applies to the fused export only"):
        resolve_variant("cpu", "fp32", "none", "gqa")
    with pytest.raises(InputError, match="dtype must be one of"):
        resolve_variant("cpu", "bf8")
    with pytest.raises(InputError, match="attention must be one of"):
        resolve_variant("cuda", None, None, "flash")
