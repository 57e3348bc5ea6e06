"""`embedrank bench`: a tiny end-to-end run on CPU (schema and plumbing; never timing claims)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from embedrank.bench.run import (
    BenchConfig,
    make_texts,
    padding_waste,
    parse_lengths,
    summary,
    sweep_lengths,
    word_pool,
)
from embedrank.cli.main import main
from embedrank.errors import InputError

SPEED_KEYS = {"docs_per_s", "tokens_per_s", "p50_ms", "p99_ms"}


def test_texts_have_the_drawn_token_lengths(tokenizer):
    from embedrank.formats import encode_embedding_inputs

    rng = np.random.default_rng(0)
    lengths = [2, 17, 64, 300]
    texts = make_texts(word_pool(tokenizer), lengths, rng)
    seqs = encode_embedding_inputs(tokenizer, texts, 8192)
    assert [len(s) for s in seqs] == lengths


def test_lengths_sweep_and_padding():
    assert parse_lengths("32:512") == (32, 512)
    assert parse_lengths("256") == (256, 256)
    with pytest.raises(InputError):
        parse_lengths("a:b")
    with pytest.raises(InputError):
        BenchConfig(lengths=(64, 32))
    with pytest.raises(InputError):
        BenchConfig(against=("tensorflow",))
    assert sweep_lengths(BenchConfig(lengths=(32, 512))) == [32, 64, 128, 256, 512]
    assert sweep_lengths(BenchConfig(lengths=(256, 256))) == [256]
    # two calls of 2: [10, 30] pads to 60 (20 wasted), [20, 20] wastes nothing
    waste = padding_waste([10, 30, 20, 20], 2)
    assert waste["unsorted"] == pytest.approx(20 / 100)
    assert waste["runtime_plan"] == pytest.approx(20 / 100)  # both fit one token budget
    # one call of 4 over the 16,384-token budget: the runtime splits it by length
    waste = padding_waste([10, 10_000, 10, 10_000], 4)
    assert waste["unsorted"] == pytest.approx(1 - 20_020 / 40_000)
    assert waste["runtime_plan"] == 0.0


def test_bench_end_to_end_cpu(embedder_dir, reranker_dir, tmp_path):
    out, report = tmp_path / "bench.json", tmp_path / "report"
    args = ["bench", "--embedder", str(embedder_dir), "--reranker", str(reranker_dir),
            "--device", "cpu", "--against", "torch", "--lengths", "8:48", "--docs", "24",
            "--batch-size", "8", "--rerank-calls", "2", "--queries", "3",
            "--json", str(out), "--report", str(report)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data) == {"device", "model", "embed", "rerank", "ingest", "query"}
    assert data["device"].startswith("cpu")
    for section in ("embed", "rerank"):
        assert set(data[section]) == {"onnx", "torch"}
        for figures in data[section].values():
            assert set(figures) == SPEED_KEYS
            assert all(v > 0 for v in figures.values())
    assert set(data["ingest"]) == {"docs_per_s", "embed_only_docs_per_s"}
    assert set(data["query"]) == {"p50_ms", "p99_ms"}
    assert all(v > 0 for v in [*data["ingest"].values(), *data["query"].values()])
    for name in ("bench.md", "throughput_vs_length.png", "latency.png", "bench_full.json"):
        assert (report / name).stat().st_size > 0
    page = (report / "bench.md").read_text()
    assert "| onnx |" in page and "| torch |" in page and "latency.png" in page
    assert (report / "latency.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_needs_a_model():
    result = CliRunner().invoke(main, ["bench", "--device", "cpu"])
    assert result.exit_code == 1
    assert "--random-arch" in result.output


def test_json_holds_only_measured_sections():
    full = {"device": "cpu", "model": "m", "embed": {"onnx": {}}, "rerank": {},
            "ingest": {"docs_per_s": 1.0, "embed_only_docs_per_s": 2.0}, "sweep": {}}
    assert summary(full) == {"device": "cpu", "model": "m", "embed": {"onnx": {}},
                             "ingest": {"docs_per_s": 1.0, "embed_only_docs_per_s": 2.0}}
