"""The "rope" rewrite: embedrank's QKVRotary op (q / k RMS norms + rotary + K/V repeated per query
head, one pass) feeding causal MultiHeadAttention in place of GroupQueryAttention. The kernel
against NumPy (CPU here, CUDA on the lent GPU), and exports against the plain GQA graph."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from ops_support import assert_same_outputs

from embedrank import ops
from embedrank.errors import InputError
from embedrank.export import export_model

HEADS, KV, DIM, POSITIONS = 4, 2, 8, 7


def _session(library, elem, norms: bool, provider="CPUExecutionProvider", dim: int = DIM):
    names = ["qkv", "cos", "sin"] + (["q_norm", "k_norm"] if norms else [])
    node = helper.make_node("QKVRotary", names, ["q", "k", "v"], domain=ops.DOMAIN, num_heads=HEADS,
                            kv_num_heads=KV, epsilon=1e-6)
    shapes = {"qkv": ["b", "s", (HEADS + 2 * KV) * dim], "cos": [POSITIONS, dim // 2],
              "sin": [POSITIONS, dim // 2], "q_norm": [dim], "k_norm": [dim]}
    inputs = [helper.make_tensor_value_info(n, elem if n == "qkv" else TensorProto.FLOAT, shapes[n])
              for n in names]
    graph = helper.make_graph([node], "g", inputs,
                              [helper.make_tensor_value_info(n, elem, None) for n in ("q", "k", "v")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(ops.DOMAIN, 1)], ir_version=10)
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), options, providers=[provider])


def _inputs(norms: bool, seq: int = 5, dtype=np.float32, dim: int = DIM) -> dict:
    rng = np.random.default_rng(3)
    angles = np.arange(POSITIONS)[:, None] * rng.uniform(0.1, 1.0, dim // 2)[None]
    feeds = {"qkv": rng.normal(0, 2, (2, seq, (HEADS + 2 * KV) * dim)).astype(dtype),
             "cos": np.cos(angles).astype(np.float32), "sin": np.sin(angles).astype(np.float32)}
    if norms:
        feeds |= {"q_norm": rng.uniform(0.5, 1.5, dim).astype(np.float32),
                  "k_norm": rng.uniform(0.5, 1.5, dim).astype(np.float32)}
    return feeds


def _reference(feeds: dict) -> list[np.ndarray]:
    """Qwen3's attention prologue in float64: per-head RMSNorm, rotate_half rotary, repeat_kv."""
    x = feeds["qkv"].astype(np.float64)
    b, s, _ = x.shape
    dim = feeds["cos"].shape[1] * 2
    heads = x.reshape(b, s, HEADS + 2 * KV, dim)
    q, k, v = heads[:, :, :HEADS], heads[:, :, HEADS:HEADS + KV], heads[:, :, HEADS + KV:]
    cos = np.concatenate([feeds["cos"][:s]] * 2, -1)[None, :, None]
    sin = np.concatenate([feeds["sin"][:s]] * 2, -1)[None, :, None]

    def prologue(t, weight):
        if weight is not None:
            t = t / np.sqrt((t ** 2).mean(-1, keepdims=True) + 1e-6) * weight
        rotated = np.concatenate([-t[..., dim // 2:], t[..., :dim // 2]], -1)
        return t * cos + rotated * sin

    q, k = prologue(q, feeds.get("q_norm")), prologue(k, feeds.get("k_norm"))
    group = HEADS // KV
    return [t.reshape(b, s, HEADS * dim) for t in (q, np.repeat(k, group, 2), np.repeat(v, group, 2))]


@pytest.mark.parametrize("norms", [True, False])
@pytest.mark.parametrize("dtype,elem,tol", [(np.float32, TensorProto.FLOAT, 1e-5),
                                            (np.float16, TensorProto.FLOAT16, 4e-3)])
def test_qkv_rotary_kernel_matches_numpy(library, norms, dtype, elem, tol):
    feeds = _inputs(norms, dtype=dtype)
    got = _session(library, elem, norms).run(None, feeds)
    for out, ref in zip(got, _reference(feeds), strict=True):
        assert out.dtype == dtype and out.shape == ref.shape
        np.testing.assert_allclose(out.astype(np.float64), ref, rtol=tol, atol=tol)
    empty = _session(library, elem, norms).run(None, {**feeds, "qkv": feeds["qkv"][:, :0]})
    assert [e.shape for e in empty] == [(2, 0, HEADS * DIM)] * 3


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="the CUDA kernel needs onnxruntime-gpu and a GPU (run on the lent device)")
@pytest.mark.parametrize("norms", [True, False])
@pytest.mark.parametrize("dtype,elem,tol", [(np.float32, TensorProto.FLOAT, 1e-5),
                                            (np.float16, TensorProto.FLOAT16, 4e-3)])
@pytest.mark.parametrize("dim", [8, 96, 128])  # one-element kernel (8, 96); vector kernel (128; 8 in fp32)
def test_qkv_rotary_cuda_kernel_matches_numpy(headers, tmp_path_factory, norms, dtype, elem, tol, dim):
    path = ops.build(cuda=True, out=tmp_path_factory.getbasetemp() / "cuda" / "lib.so", ort_include=headers)
    feeds = _inputs(norms, dtype=dtype, dim=dim, seq=POSITIONS)
    got = _session(path, elem, norms, "CUDAExecutionProvider", dim).run(None, feeds)
    for out, ref in zip(got, _reference(feeds), strict=True):
        np.testing.assert_allclose(out.astype(np.float64), ref, rtol=tol, atol=tol)


def test_qkv_rotary_refuses_a_sequence_past_its_tables(library):
    feeds = _inputs(True, seq=POSITIONS + 1)
    with pytest.raises(Exception, match="longer than the rotary tables"):
        _session(library, TensorProto.FLOAT, True).run(None, feeds)


def test_rope_rewrite_replaces_every_attention_and_matches_gqa(library, tiny_ckpt, embedder_dir,
                                                               torch_embedder, tmp_path):
    result = export_model("embedder", str(tiny_ckpt), tmp_path / "rope", rewrites=("rope",))
    fused = result.manifest.extra["fused_ops"]
    assert result.parity.passed and fused["rewrite_rope"] == 2 and fused["GroupQueryAttention"] == 0
    assert result.manifest.custom_ops == ("QKVRotary",) and result.manifest.padding_side == "right"
    graph = onnx.load(str(result.out / "model.onnx")).graph
    counts = Counter(n.op_type for n in graph.node)
    assert counts["QKVRotary"] == counts["MultiHeadAttention"] == 2
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for index, node in enumerate(n for n in graph.node if n.op_type == "QKVRotary"):
        attention = torch_embedder.model.layers[index].self_attn
        np.testing.assert_array_equal(weights[node.input[3]], attention.q_norm.weight.detach().numpy())
        np.testing.assert_array_equal(weights[node.input[4]], attention.k_norm.weight.detach().numpy())
    mha = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
    assert all({a.name: a.i for a in n.attribute}["unidirectional"] == 1 for n in mha)
    assert_same_outputs(result.out, embedder_dir, "embedder")


@pytest.mark.parametrize("rewrites,custom_ops", [(("qkv", "swiglu"), ("SwiGLU",)),
                                                  (("rope", "swiglu"), ("SwiGLU", "QKVRotary"))])
def test_rewritten_reranker_without_qk_norms_scores_as_the_plain_one(library, tiny_llama, tmp_path,
                                                                      rewrites, custom_ops):
    plain = export_model("reranker", str(tiny_llama), tmp_path / "plain")
    both = export_model("reranker", str(tiny_llama), tmp_path / "both", rewrites=rewrites)
    fused = both.manifest.extra["fused_ops"]
    assert both.parity.passed and all(fused[f"rewrite_{name}"] == 2 for name in rewrites)
    assert both.manifest.custom_ops == custom_ops
    rotary = [n for n in onnx.load(str(both.out / "model.onnx")).graph.node if n.op_type == "QKVRotary"]
    assert [len(n.input) for n in rotary] == ([3, 3] if "rope" in rewrites else [])  # no norms to apply
    assert_same_outputs(both.out, plain.out, "reranker")


def test_rope_and_qkv_are_exclusive(library, tiny_llama, tmp_path):
    with pytest.raises(InputError, match="choose one"):
        export_model("embedder", str(tiny_llama), tmp_path / "out", rewrites=("qkv", "rope"))
    assert not (tmp_path / "out").exists()


def test_rope_keeps_an_attention_whose_attributes_it_would_not_reproduce(embedder_dir):
    """A soft cap (or scale, window, interleaved rotary) on GroupQueryAttention changes the result:
    such a layer is left as it is, never rewritten into a different computation."""
    import onnx_ir as ir

    from embedrank.export.cuda_rewrites import rotary_mha

    model = ir.load(str(embedder_dir / "model.onnx"))
    layers = [n for n in model.graph if n.op_type == "GroupQueryAttention"]
    layers[0].attributes["softcap"] = ir.AttrFloat32("softcap", 30.0)
    assert rotary_mha(model) == len(layers) - 1
    kept = [n for n in model.graph if n.op_type == "GroupQueryAttention"]
    assert kept == [layers[0]]
