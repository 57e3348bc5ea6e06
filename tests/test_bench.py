"""`embedrank bench`: a tiny end-to-end run on CPU (schema and plumbing; never timing claims)."""

from __future__ import annotations

import json
from dataclasses import asdict

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
    with pytest.raises(InputError):
        BenchConfig(repeats=0)
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
            "--device", "cpu", "--against", "torch", "--against", "torch-causal",
            "--lengths", "8:48", "--docs", "24", "--batch-size", "8", "--rerank-calls", "2",
            "--queries", "3", "--repeats", "2", "--json", str(out), "--report", str(report)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data) == {"device", "model", "embed", "rerank", "ingest", "query", "baseline",
                         "vs_baseline", "rows"}
    assert data["device"].startswith("cpu")
    for section in ("embed", "rerank"):
        rows = data[section]
        assert list(rows) == ["onnx", "torch", "torch-causal"]
        for name in ("onnx", "torch", "torch-causal"):
            assert set(rows[name]) == SPEED_KEYS | {"forward"}
            assert set(rows[name]["forward"]) == SPEED_KEYS
            # the forward is part of the call (both timed with perf_counter on the CPU)
            assert rows[name]["forward"]["tokens_per_s"] > rows[name]["tokens_per_s"]
        base = data["baseline"][section]
        assert base in ("torch", "torch-causal")
        assert data["vs_baseline"][section][base] == {"call": 1.0, "forward": 1.0}
        assert set(data["vs_baseline"][section]) == set(rows)
        described = data["rows"][section]
        assert "perf_counter" in described["torch"]["forward"]
        assert "CUDA" not in described["torch"]["forward"].replace("no CUDA events", "")
        assert "each ONNX Runtime run" in described["onnx"]["forward"]
        assert "right padding" in described["torch-causal"]["runs"]
    assert set(data["ingest"]) == {"docs_per_s", "embed_only_docs_per_s"}
    assert set(data["query"]) == {"p50_ms", "p99_ms"}
    assert all(v > 0 for v in [*data["ingest"].values(), *data["query"].values()])
    for name in ("bench.md", "throughput_vs_length.png", "latency.png", "bench_full.json"):
        assert (report / name).stat().st_size > 0
    page = (report / "bench.md").read_text()
    assert "| onnx |" in page and "latency.png" in page
    # the baseline is whichever PyTorch row measured fastest: either may carry the label
    for name in ("torch", "torch-causal"):
        assert f"| {name} |" in page or f"| **{name}** (baseline) |" in page
    assert page.count("(baseline) |") == 2  # one per section (embed, rerank)
    assert "## What each row includes" in page and "torch-causal forward" in page
    assert (report / "latency.png").read_bytes()[:4] == b"\x89PNG"
    full = json.loads((report / "bench_full.json").read_text())
    assert len(full["latencies_ms"]["embed"]["torch"]) == 2 * 3  # 2 passes x 3 calls of 8


def test_bench_needs_a_model():
    result = CliRunner().invoke(main, ["bench", "--device", "cpu"])
    assert result.exit_code == 1
    assert "--random-arch" in result.output


def test_json_holds_only_measured_sections():
    full = {"device": "cpu", "model": "m", "embed": {"onnx": {}}, "rerank": {},
            "ingest": {"docs_per_s": 1.0, "embed_only_docs_per_s": 2.0}, "sweep": {}}
    assert summary(full) == {"device": "cpu", "model": "m", "embed": {"onnx": {}},
                             "ingest": {"docs_per_s": 1.0, "embed_only_docs_per_s": 2.0}}


# ---------------------------------------------------------------- the causal-only baseline
MIXED = [3, 17, 40, 9, 25]  # token counts of one mixed-length batch


def _texts(tokenizer, lengths=MIXED):
    return make_texts(word_pool(tokenizer), lengths, np.random.default_rng(1))


def _cosines(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_causal_only_embeddings_match_eager_on_right_padded_batches(tiny_ckpt, torch_embedder,
                                                                    tokenizer):
    from embedrank.bench.torch_backend import TorchBackend

    backend = TorchBackend("embedder", str(tiny_ckpt), "cpu", variant="torch-causal")
    assert backend.row.padding == "right"
    texts = _texts(tokenizer)
    got = backend.embed(texts)
    want = torch_embedder.embed_documents(texts).numpy()  # left padding, transformers' SDPA + mask
    assert _cosines(got, want).min() > 0.9999
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert backend.forward_ms > 0  # perf_counter on the CPU


def test_causal_only_reranker_matches_eager(tiny_ckpt, torch_reranker, tokenizer):
    from embedrank.bench.torch_backend import TorchBackend

    backend = TorchBackend("reranker", str(tiny_ckpt), "cpu", variant="torch-causal")
    docs = _texts(tokenizer, [5, 30, 12])
    got = backend.rerank("what is a kernel", docs)
    want = torch_reranker(**torch_reranker.batch(torch_reranker.tokenize("what is a kernel", docs)))
    np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-5)


def test_causal_only_refuses_left_padding_and_masks(tiny_ckpt, torch_embedder):
    import torch

    from embedrank.bench.torch_backend import TorchBackend, causal_sdpa, check_right_padded
    from embedrank.formats import pad

    backend = TorchBackend("embedder", str(tiny_ckpt), "cpu", variant="torch-causal")
    seqs = [list(range(200, 200 + n)) for n in MIXED]
    ids, mask = pad(seqs, backend.module.pad_id, "left")
    with pytest.raises(InputError, match="right-padded"):
        backend.forward_arrays(ids, mask)
    # the check is what stands between left padding and a wrong answer: past it, the rows differ
    with torch.inference_mode():
        wrong = backend.module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        right = backend.forward_arrays(*pad(seqs, backend.module.pad_id, "right")).numpy()
    assert _cosines(wrong, right).min() < 0.999
    check_right_padded(np.ones((2, 4), dtype=np.int64))  # unpadded rows pass
    q = torch.zeros(1, 4, 3, 16)
    with pytest.raises(InputError, match="no attention mask"):
        causal_sdpa(torch_embedder, q, q, q, torch.ones(1, 1, 3, 3, dtype=torch.bool))


@pytest.mark.slow
def test_compiled_causal_only_matches_eager_with_dynamic_shapes(tiny_ckpt, torch_embedder, tokenizer):
    """torch.compile (default mode, dynamic=True: ~20 s on 2 cores) keeps the causal-only path exact."""
    import torch

    from embedrank.bench.torch_backend import use_causal_attention
    from embedrank.formats import pad
    from embedrank.train import Embedder

    module = Embedder.from_pretrained(tiny_ckpt).eval()
    use_causal_attention(module.model)
    compiled = torch.compile(module, dynamic=True)
    try:
        for lengths in (MIXED, [7, 33]):
            texts = _texts(tokenizer, lengths)
            ids, mask = pad(module.tokenize_documents(texts), module.pad_id, "right")
            with torch.inference_mode():
                got = compiled(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
            want = torch_embedder.embed_documents(texts).numpy()
            np.testing.assert_allclose(got, want, atol=1e-5)
    finally:
        torch.compiler.reset()


# ---------------------------------------------------------------- rows, timing and ratios
def test_against_choices_and_compile_shapes():
    from embedrank.bench.rows import compile_shapes, resolve_against
    from embedrank.bench.run import batch_shapes

    assert resolve_against(["all"]) == ("torch", "torch-compile", "torch-causal",
                                         "torch-compile-causal")
    assert resolve_against(["torch-compile-causal", "torch"]) == ("torch", "torch-compile-causal")
    with pytest.raises(InputError):
        resolve_against(["jax"])
    assert compile_shapes({(64, 256)}) == (False, "compiled for static shapes (every batch is 64 x 256)")
    assert compile_shapes({(64, 256), (3, 40)})[0] is True
    # 64 x 256 fits the 16,384-token budget; 100 x 300 splits into 54 + 46 rows
    assert batch_shapes([[256] * 64, [256] * 64]) == {(64, 256)}
    assert batch_shapes([[300] * 100]) == {(54, 300), (46, 300)}


def test_timing_takes_the_median_pass_and_reads_the_forward():
    from embedrank.bench.timing import figures, time_calls

    # three passes of two calls: 300, 100 and 200 ms in all; the median pass is 200 ms
    passes = [[100.0, 200.0], [50.0, 50.0], [150.0, 50.0]]
    f = figures(passes, docs=10, tokens=1000)
    assert f["docs_per_s"] == pytest.approx(50.0) and f["tokens_per_s"] == pytest.approx(5000.0)
    assert f["p50_ms"] == pytest.approx(75.0)  # of the six calls

    class Fake:
        forward_ms = 0.0

        def embed(self, texts):
            self.forward_ms = 2.0 * len(texts)

    fake = Fake()
    t = time_calls(fake.embed, [(["a"],), (["b", "c"],)], [1, 2], [10, 20], warmup=1, repeats=3,
                   forward_ms=lambda: fake.forward_ms)
    assert t.forward_ms == [[2.0, 4.0]] * 3 and len(t.latencies_ms) == 6
    s = t.summary()
    assert s["forward"]["tokens_per_s"] == pytest.approx(30 / 6e-3)
    assert s["forward"]["docs_per_s"] == pytest.approx(3 / 6e-3)
    assert "forward" not in time_calls(fake.embed, [(["a"],)], [1], [10], warmup=0).summary()


def _row(tokens_per_s, forward=None):
    m = {"docs_per_s": tokens_per_s / 100, "tokens_per_s": tokens_per_s, "p50_ms": 1.0, "p99_ms": 2.0}
    if forward:
        m["forward"] = {**m, "tokens_per_s": forward, "docs_per_s": forward / 100}
    return m


def test_ratios_are_to_the_strongest_torch_row():
    from embedrank.bench.report import markdown
    from embedrank.bench.rows import baseline, describe, ratios

    section = {"onnx": _row(300.0), "torch": _row(100.0, 150.0),
               "torch-compile-causal": _row(240.0, 400.0)}
    assert baseline(section) == "torch-compile-causal"
    r = ratios(section)
    assert r["torch-compile-causal"] == {"call": 1.0, "forward": 1.0}
    assert r["onnx"] == {"call": pytest.approx(1.25), "forward": pytest.approx(0.75)}
    assert r["torch"] == {"call": pytest.approx(100 / 240), "forward": pytest.approx(0.375)}
    assert baseline({"onnx": _row(1.0)}) is None and ratios({"onnx": _row(1.0)}) == {}
    # an ONNX forward faster than every PyTorch row is measured against them, never the baseline
    faster = {**section, "onnx": _row(300.0, 600.0)}
    assert baseline(faster) == "torch-compile-causal"
    assert ratios(faster)["onnx"]["forward"] == pytest.approx(1.5)

    rows = {n: describe(n, "cuda", "fp16", "compiled with dynamic=True (one graph for 9 batch "
                        "shapes)") for n in section}
    assert "CUDA events" in rows["torch"]["forward"]
    assert "dynamic=True" in rows["torch-compile-causal"]["runs"]
    assert "max-autotune-no-cudagraphs" in rows["torch-compile-causal"]["runs"]
    full = {"model": "m", "device": "cuda:0 (H200)", "dtype": "fp16",
            "config": asdict(BenchConfig(device="cuda")), "padding_waste": {"unsorted": 0.4,
                                                                            "runtime_plan": 0.05},
            "embed": section, "baseline": {"embed": "torch-compile-causal"},
            "vs_baseline": {"embed": r}, "rows": {"embed": rows}}
    page = markdown(full, images=False)
    assert "| onnx | 300 | 3.0 | 1.00 | 2.00 | - | - | 1.25x | 0.75x (call) |" in page
    assert ("| **torch-compile-causal** (baseline) | 240 | 2.4 | 1.00 | 2.00 | 400 | 1.00 | 1.00x | "
            "1.00x |") in page
    assert "CUDA events" in page
