"""A non-finite loss or gradient never reaches the weights: the step is skipped and logged, and
a run whose steps keep failing stops with one clear error."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from embedrank.errors import TrainingError
from embedrank.train import trainer
from embedrank.train.trainer import LOG_FILE, MAX_BAD_STEPS, TrainConfig, train

ROWS = [{"query": f"question {i}", "pos": [f"answer number {i}"]} for i in range(4)]


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _poison(monkeypatch, bad_calls: set[int] | None):
    """Make the embedder loss NaN on the given calls (all calls when None)."""
    real, calls = trainer.LOSSES["embedder"], [0]

    def loss(model, groups, cfg):
        calls[0] += 1
        value = real(model, groups, cfg)
        return value * float("nan") if bad_calls is None or calls[0] in bad_calls else value

    monkeypatch.setitem(trainer.LOSSES, "embedder", loss)


def _cfg(ckpt, data, out, steps):
    return TrainConfig(model=str(ckpt), data=str(data), out=str(out), max_steps=steps,
                       batch_size=4, negatives=1, lr=1e-3, progress=False, lora=False,
                       device="cpu")


def test_nan_step_is_skipped_and_logged(tiny_ckpt, data, tmp_path, monkeypatch):
    _poison(monkeypatch, {2})
    result = train("embedder", _cfg(tiny_ckpt, data, tmp_path / "run", 3))
    log = [json.loads(x) for x in (tmp_path / "run" / LOG_FILE).read_text().splitlines()]
    assert [("skipped" in x) for x in log] == [False, True, False]
    assert result.steps == 3 and torch.isnan(torch.tensor(result.losses[1]))
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    before = load_file(tiny_ckpt / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(weights[name.removeprefix("model.")], before[name])  # steps 1, 3 applied


def test_diverging_run_stops_with_advice(tiny_ckpt, data, tmp_path, monkeypatch):
    _poison(monkeypatch, None)
    with pytest.raises(TrainingError, match="--lr"):
        train("embedder", _cfg(tiny_ckpt, data, tmp_path / "run", MAX_BAD_STEPS + 5))
    log = (tmp_path / "run" / LOG_FILE).read_text().splitlines()
    assert len(log) == MAX_BAD_STEPS - 1  # the last bad step raises before it is logged
