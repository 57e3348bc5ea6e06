"""Tiny end-to-end: train (LoRA) -> checkpoints -> merge -> export -> Qdrant query; resume;
reranker training; LoRA-merged output that loads without peft."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from embedrank.cli.main import main
from embedrank.train.trainer import LOG_FILE, STATE_FILE, TrainConfig, train

ROWS = [
    {"query": "capital of france", "pos": ["Paris is the capital of France."],
     "neg": ["Berlin is the capital of Germany."]},
    {"query": "how do bees make honey", "pos": ["Bees turn flower nectar into honey."],
     "neg": ["Cows are milked twice a day."]},
    {"query": "who wrote hamlet", "pos": ["Hamlet is a tragedy by Shakespeare."],
     "neg": ["Goethe wrote Faust."]},
    {"query": "boiling point of water", "response": "Water boils at 100 degrees Celsius.",
     "rejected_response": ["Ice melts at zero degrees."]},
    {"query": "largest planet", "pos": ["Jupiter is the largest planet."],
     "neg": ["Mars is red."], "instruction": "Given a question, retrieve the answer"},
    {"query": "speed of light", "pos": ["Light travels at about 300,000 km/s."],
     "neg": ["Sound is slower than light."]},
]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _config(ckpt, data, out, **kw) -> TrainConfig:
    base = dict(model=str(ckpt), data=str(data), out=str(out), max_steps=6, batch_size=6,
                negatives=1, lr=5e-4, temperature=0.05, save_every=3, progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tiny_ckpt, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "embedder"
    return train("embedder", _config(tiny_ckpt, data_file, out, eval=str(data_file)))


def test_loss_decreases_and_log(trained):
    # batch_size == data size and one negative each: every step sees the same batch
    assert len(trained.losses) == 6 and trained.losses[-1] < trained.losses[0] - 0.05
    assert [e["step"] for e in trained.evals] == [0, 3, 6]
    assert all(0 <= e["ndcg@10"] <= 1 and 0 <= e["mrr@10"] <= 1 for e in trained.evals)
    lines = [json.loads(x) for x in (trained.out / LOG_FILE).read_text().splitlines()]
    assert [x["step"] for x in lines if "step" in x and "loss" in x] == [1, 2, 3, 4, 5, 6]
    assert all(x["examples_per_s"] > 0 and x["lr"] >= 0 for x in lines if "loss" in x)
    assert (trained.out / "checkpoint-3" / STATE_FILE).is_file()


def test_lora_output_loads_with_transformers_without_peft(trained):
    out = trained.out
    assert not (out / "adapter_config.json").exists()
    weights = load_file(out / "model.safetensors")
    assert not any("lora" in k or "base_layer" in k for k in weights)
    assert torch.equal(weights["layers.0.self_attn.q_proj.weight"],
                       load_file(out / "checkpoint-6" / "model.safetensors")
                       ["layers.0.self_attn.q_proj.weight"])
    code = ("import sys; sys.modules['peft'] = None\n"
            "from transformers import AutoModel\n"
            f"m = AutoModel.from_pretrained({str(out)!r}); print(type(m).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("Qwen3Model")


def test_merge_export_and_qdrant_query(trained, tmp_path):
    from qdrant_client import QdrantClient, models

    import embedrank.plugin
    from embedrank.train import Embedder as TorchEmbedder

    runner = CliRunner()
    merged, onnx_dir = tmp_path / "merged", tmp_path / "onnx"
    res = runner.invoke(main, ["merge", str(trained.out / "checkpoint-3"),
                               str(trained.out / "checkpoint-6"), "--out", str(merged)])
    assert res.exit_code == 0, res.output
    key = "layers.1.mlp.down_proj.weight"
    wa, wb, wm = (load_file(p / "model.safetensors")[key] for p in
                  (trained.out / "checkpoint-3", trained.out / "checkpoint-6", merged))
    assert not torch.equal(wm, wa) and not torch.equal(wm, wb)
    assert torch.allclose(wm, (wa + wb) / 2, atol=1e-3)  # nearly parallel -> close to lerp
    res = runner.invoke(main, ["export", "embedder", str(merged), str(onnx_dir)])
    assert res.exit_code == 0, res.output

    docs = sorted({t for r in ROWS for t in r.get("pos", []) + [r.get("response", "")] if t})
    emb = embedrank.plugin.Embedder.load(onnx_dir)
    client = QdrantClient(":memory:")
    client.create_collection("docs", vectors_config=models.VectorParams(
        size=emb.dim, distance=models.Distance.COSINE))
    client.upsert("docs", [models.PointStruct(id=i, vector=v.tolist(), payload={"text": t})
                           for i, (t, v) in enumerate(zip(docs, emb.embed_documents(docs),
                                                          strict=True))])
    query = "who wrote hamlet"
    hits = client.query_points("docs", query=emb.embed_queries([query])[0].tolist(),
                               limit=len(docs)).points
    reference = TorchEmbedder.from_pretrained(merged)
    cos = (reference.embed_queries([query]) @ reference.embed_documents(docs).T)[0].numpy()
    assert [h.payload["text"] for h in hits] == [docs[i] for i in np.argsort(-cos)]
    assert np.allclose([h.score for h in hits], np.sort(cos)[::-1], atol=1e-4)


def test_resume_reproduces_steps_and_losses(trained, tiny_ckpt, data_file, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(trained.out / "checkpoint-3", out / "checkpoint-3")
    result = train("embedder", _config(tiny_ckpt, data_file, out, resume=True))
    assert result.steps == 6 and len(result.losses) == 3
    assert np.allclose(result.losses, trained.losses[3:], atol=1e-5)
    state = torch.load(out / "checkpoint-6" / STATE_FILE, weights_only=False)
    assert state["step"] == 6


def test_refuses_checkpoints_without_resume_and_resume_without_checkpoints(
        trained, tiny_ckpt, data_file, tmp_path):
    from embedrank.errors import InputError

    with pytest.raises(InputError, match="--resume"):
        train("embedder", _config(tiny_ckpt, data_file, trained.out))
    with pytest.raises(InputError, match="no checkpoint"):
        train("embedder", _config(tiny_ckpt, data_file, tmp_path / "new", resume=True))


def test_gradcache_chunks_give_the_same_loss_and_gradients(tiny_ckpt, data_file):
    from embedrank.train.data import Batcher, load_examples
    from embedrank.train.trainer import embedder_loss, load_model

    cfg = _config(tiny_ckpt, data_file, "unused")
    model = load_model("embedder", cfg, torch.device("cpu"))
    groups = Batcher(load_examples(data_file), 6, 1).batch(0, 0)
    results = []
    for chunk in (0, 2):
        cfg.chunk_size = chunk
        loss = embedder_loss(model, groups, cfg)
        if loss.requires_grad:
            loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters()
                                      if p.requires_grad]))
        model.zero_grad()
    assert np.isclose(results[0][0], results[1][0], atol=1e-5)
    pairs = zip(results[0][1], results[1][1], strict=True)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in pairs)


def test_reranker_full_finetune_from_cli(tiny_ckpt, data_file, tmp_path):
    from embedrank.train import Reranker

    out = tmp_path / "reranker"
    small_eval = tmp_path / "eval.jsonl"
    small_eval.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    res = CliRunner().invoke(main, [
        "train", "reranker", "--model", str(tiny_ckpt), "--data", str(data_file),
        "--out", str(out), "--max-steps", "3", "--batch-size", "2", "--grad-accum", "2",
        "--negatives", "2", "--lr", "1e-3", "--full", "--eval", str(small_eval)])
    assert res.exit_code == 0, res.output
    assert "ndcg@10" in res.output and "after 3 steps" in res.output
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    before = load_file(tiny_ckpt / "model.safetensors")["model.embed_tokens.weight"]
    after = load_file(out / "model.safetensors")["model.embed_tokens.weight"]
    assert not torch.equal(before, after)  # --full trains the (tied) embeddings too
    scores = Reranker.from_pretrained(out).score("who wrote hamlet", ["Hamlet is by Shakespeare."])
    assert scores.shape == (1,) and 0 < float(scores[0]) < 1


def test_cli_errors_are_one_line(tmp_path, tiny_ckpt):
    res = CliRunner().invoke(main, ["merge", str(tiny_ckpt), "--out", str(tmp_path / "m")])
    assert res.exit_code == 1 and "at least two" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["a"]}\n{"query": 3}\n')
    res = CliRunner().invoke(main, ["train", "embedder", "--model", str(tiny_ckpt),
                                    "--data", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "bad.jsonl:2" in res.output
