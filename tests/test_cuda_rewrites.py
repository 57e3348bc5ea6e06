"""Graph rewrites of the fused GQA graph (export/cuda_rewrites.py): exactness on CPU where ONNX
Runtime's CPU kernels run them, the CUDA-only q/k-norm fold by structure and weights."""

import shutil
from collections import Counter
from dataclasses import replace

import click
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from embedrank.cli.main import main
from embedrank.errors import DeviceError, FusionError
from embedrank.export import export_model
from embedrank.manifest import read_manifest
from embedrank.plugin import Embedder

TEXTS = ["short", "a somewhat longer document about vector databases and rerankers",
         "x " * 30, "Qdrant stores vectors"]


def _graph(model_dir):
    return onnx.load(str(model_dir / "model.onnx"))


def _weights(graph) -> dict:
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    """Qwen2 architecture: q/k/v projections with biases, no q/k norms."""
    import torch
    from conftest import qwen_tokenizer_dir
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("qwen2") / "tiny-qwen2"
    config = Qwen2Config(vocab_size=151669, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, initializer_range=0.1)
    torch.manual_seed(2)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # non-zero biases, so a lost bias shows
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(qwen_tokenizer_dir()).save_pretrained(out)
    return out


def test_packed_qkv_without_norms_is_exact_on_cpu(tiny_llama, tmp_path):
    plain = export_model("embedder", str(tiny_llama), tmp_path / "plain")
    packed = export_model("embedder", str(tiny_llama), tmp_path / "packed", rewrites=("qkv",))
    assert packed.parity.passed and packed.manifest.requires_device is None
    assert packed.manifest.extra["fused_ops"]["rewrite_qkv"] == 2
    assert packed.manifest.extra["fused_ops"]["rewrite_qkv_norms"] == 0
    graph = _graph(packed.out).graph
    ops, plain_ops = Counter(n.op_type for n in graph.node), Counter(
        n.op_type for n in _graph(plain.out).graph.node)
    assert ops["MatMul"] == plain_ops["MatMul"] - 2 * 2  # three projections -> one, per layer
    gqa = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert all(n.input[1] == "" and n.input[2] == "" for n in gqa)
    weights = _weights(graph)
    producer = {o: n for n in graph.node for o in n.output}
    from embedrank.train.modeling import Embedder as TorchEmbedder

    layer0 = TorchEmbedder.from_pretrained(str(tiny_llama)).model.layers[0].self_attn
    packed_w = weights[producer[gqa[0].input[0]].input[1]]
    expected = np.concatenate([p.weight.detach().numpy().T for p in (layer0.q_proj, layer0.k_proj,
                                                                     layer0.v_proj)], axis=1)
    np.testing.assert_array_equal(packed_w, expected)
    got = Embedder.load(packed.out).embed_documents(TEXTS)
    np.testing.assert_allclose(got, Embedder.load(plain.out).embed_documents(TEXTS), atol=2e-6)


def test_packed_qkv_keeps_the_qkv_biases(tiny_qwen2, tmp_path):
    from embedrank.train.modeling import Embedder as TorchEmbedder

    plain = export_model("embedder", str(tiny_qwen2), tmp_path / "plain")
    packed = export_model("embedder", str(tiny_qwen2), tmp_path / "packed", rewrites=("qkv",))
    assert packed.parity.passed and packed.manifest.extra["fused_ops"]["rewrite_qkv"] == 2
    graph = _graph(packed.out).graph
    producer = {o: n for n in graph.node for o in n.output}
    gqa = next(n for n in graph.node if n.op_type == "GroupQueryAttention")
    add = producer[gqa.input[0]]
    assert add.op_type == "Add" and producer[add.input[0]].op_type == "MatMul"
    attn = TorchEmbedder.from_pretrained(str(tiny_qwen2)).model.layers[0].self_attn
    expected = np.concatenate([p.bias.detach().numpy() for p in (attn.q_proj, attn.k_proj, attn.v_proj)])
    np.testing.assert_array_equal(_weights(graph)[add.input[1]], expected)
    got = Embedder.load(packed.out).embed_documents(TEXTS)
    np.testing.assert_allclose(got, Embedder.load(plain.out).embed_documents(TEXTS), atol=2e-6)


def test_device_default_rewrites_where_it_fits_and_records_it(tiny_ckpt, tmp_path, monkeypatch):
    """The CUDA default (rewrites=None -> qkv) is the same on every machine, whether or not the
    opt-in ops library is built; qkv applies where it fits (the q/k norms: CUDA only)."""
    from embedrank import ops
    from embedrank.export import onnx as onnx_export

    assert onnx_export.CUDA_REWRITES == ("qkv",)
    resolve = onnx_export.resolve_variant
    monkeypatch.setattr(onnx_export, "resolve_variant",  # the CUDA default, on CPU
                        lambda *a: (*resolve(*a)[:3], onnx_export.CUDA_REWRITES))
    monkeypatch.setenv("EMBEDRANK_CACHE", str(tmp_path / "no-ops"))
    monkeypatch.delenv(ops.LIBRARY_ENV, raising=False)
    result = export_model("embedder", str(tiny_ckpt), tmp_path / "default")
    assert result.manifest.extra["fused_ops"]["rewrite_qkv"] == 0  # q/k norms: CUDA only
    assert result.manifest.extra["rewrites"] == ["qkv"] and result.manifest.custom_ops == ()
    assert result.manifest.requires_device is None and result.parity.passed


def test_qk_norms_move_into_gqa_with_the_model_weights(embedder_dir, torch_embedder, tiny_ckpt):
    import onnx_ir as ir

    from embedrank.export.cuda_rewrites import pack_qkv

    model = ir.load(str(embedder_dir / "model.onnx"))
    assert pack_qkv(model, fold_norms=False) == (0, 0)  # CPU: the norms keep the graph as it is
    assert pack_qkv(model, fold_norms=True) == (2, 2)
    proto = ir.to_proto(model).graph
    ops = Counter(n.op_type for n in proto.node)
    assert ops["SimplifiedLayerNormalization"] == 2  # only the first layer's input norm and the final norm
    weights = _weights(proto)
    eps = torch_embedder.model.config.rms_norm_eps
    for index, node in enumerate(n for n in proto.node if n.op_type == "GroupQueryAttention"):
        attn = torch_embedder.model.layers[index].self_attn
        assert len(node.input) == 16 and node.input[1:3] == ["", ""]
        np.testing.assert_array_equal(weights[node.input[14]], attn.q_norm.weight.detach().numpy())
        np.testing.assert_array_equal(weights[node.input[15]], attn.k_norm.weight.detach().numpy())
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["qk_norm_epsilon"] == pytest.approx(eps)
        assert len(node.output) == 3  # the CUDA kernel requires present_key / present_value


def test_cuda_only_rewrite_is_refused_on_cpu_and_by_the_cpu_runtime(tiny_ckpt, embedder_dir, tmp_path):
    with pytest.raises(FusionError, match=r"fits \{'qkv': 0\} of 2 layers.*device='cuda' only"):
        export_model("embedder", str(tiny_ckpt), tmp_path / "qkv", rewrites=("qkv",))
    assert not (tmp_path / "qkv").exists()
    cuda_only = tmp_path / "cuda-only"
    shutil.copytree(embedder_dir, cuda_only)
    manifest = read_manifest(cuda_only)
    replace(manifest, requires_device="cuda").sealed(cuda_only).write(cuda_only)
    with pytest.raises(DeviceError, match="exported for CUDA"):
        Embedder.load(cuda_only, device="cpu")
    replace(manifest, min_onnxruntime="99.0").sealed(cuda_only).write(cuda_only)
    with pytest.raises(DeviceError, match="needs onnxruntime >= 99.0"):
        Embedder.load(cuda_only, device="cpu")


def test_cli_rewrites_option(tiny_ckpt, tmp_path):
    from embedrank.cli.main import _rewrites

    assert _rewrites(None) is None and _rewrites("none") == ()
    assert _rewrites("qkv, swiglu") == ("qkv", "swiglu")
    with pytest.raises(click.BadParameter, match="rewrite names"):
        _rewrites(" , ")
    result = CliRunner().invoke(main, ["export", "embedder", str(tiny_ckpt), str(tmp_path / "x"),
                                       "--rewrites", "bogus"])
    assert result.exit_code == 1 and "rewrites must be distinct names" in result.output
    assert not (tmp_path / "x").exists()
