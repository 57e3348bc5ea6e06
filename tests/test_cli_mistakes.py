"""A newcomer's mistakes on the command line: one clear line each (issue 14), and the labels,
help texts and wording that hold."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from embedrank.cli.main import main
from embedrank.errors import ManifestError
from embedrank.export.parity import ParityReport
from embedrank.plugin.ingest import count_lines, read_records
from embedrank.runtime import Reranker

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("embedrank", "runtime", "ops", "train", "export", "plugin", "serve", "bench", "cli")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result, *needles: str) -> str:
    """The output holds exactly one ``error:`` line, no traceback, and every needle."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------ mistakes


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_export_on_cuda_without_cuda_fails_before_loading(tiny_ckpt, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the device check")

    monkeypatch.setattr("embedrank.export.onnx.load_module", never)
    out = tmp_path / "out"
    one_error_line(run("export", "embedder", tiny_ckpt, out, "--device", "cuda"),
                   "device='cuda' but PyTorch sees no CUDA GPU", "--device cpu")
    assert not out.exists()
    one_error_line(run("export", "embedder", tiny_ckpt, out, "--device", "gpu"),
                   "unknown device 'gpu'")


def test_bench_against_torch_with_a_missing_source(embedder_dir, tmp_path):
    base = ("bench", "--embedder", embedder_dir, "--against", "torch", "--docs", "4")
    one_error_line(run(*base, "--source", tmp_path / "gone"),
                   f"checkpoint directory '{tmp_path / 'gone'}' does not exist",
                   "pass the embedder's PyTorch checkpoint with --source DIR")
    # a hub id with no hub (HF_HUB_OFFLINE=1 in the tests) and not in the cache: at once
    one_error_line(run(*base, "--source", "nobody/no-such-model"),
                   "neither in the local Hugging Face cache nor downloadable", "--source DIR")
    one_error_line(run(*base, "--source", embedder_dir),
                   "is an exported embedrank model directory, not a PyTorch checkpoint")
    one_error_line(run("bench", "--embedder", embedder_dir, "--source", tmp_path),
                   "--source / --reranker-source name the PyTorch checkpoints for --against")


def test_bench_sources_default_to_the_manifests_absolute_path(embedder_dir, reranker_dir,
                                                               tiny_ckpt, tmp_path, monkeypatch):
    from embedrank.bench.run import torch_sources

    monkeypatch.chdir(tmp_path)  # anywhere: the manifest records the checkpoint's absolute path
    expected = str(Path(tiny_ckpt).resolve())
    assert torch_sources(embedder_dir, reranker_dir) == {"embedder": expected, "reranker": expected}
    assert torch_sources(embedder_dir, None, {"embedder": str(tiny_ckpt)}) == {
        "embedder": str(tiny_ckpt)}


def test_verify_against_an_exported_directory(embedder_dir, tiny_ckpt):
    one_error_line(run("verify", embedder_dir, "--against", embedder_dir),
                   "is an exported embedrank model directory, not a PyTorch checkpoint",
                   f"its manifest names '{Path(tiny_ckpt).resolve()}'")


def test_verify_fail_prints_the_next_step(embedder_dir, tmp_path):
    from conftest import make_tiny_qwen3

    other = make_tiny_qwen3(tmp_path / "other", seed=1)
    result = run("verify", embedder_dir, "--against", other)
    assert result.exit_code == 1 and "FAIL: embedder fp32" in result.output, result.output
    nexts = [line for line in result.output.splitlines() if line.startswith("next: ")]
    assert len(nexts) == 1 and "re-export: embedrank export embedder" in nexts[0]
    assert "--overwrite" in nexts[0] and "Traceback" not in result.output


def test_parity_tables_show_only_meaningful_columns():
    reranker = ParityReport("reranker", "fp32", {"query 0 (default instr.)": {
        "n": 5.0, "max_abs_diff": 2.5e-7}}, max_abs_diff=2.5e-7, top1_agreement=1.0, passed=True)
    head, row, verdict = reranker.table().splitlines()
    assert head.split() == ["check", "n", "max", "|d|"]
    assert row.split() == ["query", "0", "(default", "instr.)", "5", "2.50e-07"]
    assert "nan" not in reranker.table() and verdict.startswith("PASS: reranker fp32")
    embedder = ParityReport("embedder", "fp32", {"documents": {
        "n": 5.0, "max_abs_diff": 1e-6, "min_cosine": 0.99999, "mean_cosine": 1.0}})
    assert embedder.table().splitlines()[1].split() == ["documents", "5", "0.999990", "1.000000",
                                                        "1.00e-06"]


def test_progress_counts_records_not_the_csv_header(tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("id,text\n1,a\n2,b\n3,c\n")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert count_lines(csv_file) == 3 == len(list(read_records(csv_file)))
    assert count_lines(jsonl) == 2 == len(list(read_records(jsonl)))


def test_an_embedder_not_a_embedder(embedder_dir):
    with pytest.raises(ManifestError, match="holds an embedder, not a reranker"):
        Reranker.load(embedder_dir)


def test_bad_json_keeps_its_position(tmp_path):
    from embedrank.beir import load_beir

    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "b", "text": \n')
    ((number, error),) = list(read_records(data))
    assert number == 1 and str(error) == "invalid JSON (Expecting value at column 21)"
    (tmp_path / "beir").mkdir()
    (tmp_path / "beir" / "corpus.jsonl").write_text('{"_id": "1", "text": "x"}\n{"_id": 2,,}\n')
    with pytest.raises(Exception, match=r"corpus.jsonl:2: invalid JSON \(Expecting property name "
                                        r"enclosed in double quotes at column 11\)"):
        load_beir(tmp_path / "beir")


def test_eval_labels_recall_with_the_actual_k():
    from embedrank.plugin.evaluate import score

    run_ = {"q": {"d1": 0.9, "d2": 0.5}}
    qrels = {"q": {"d2": 1, "d3": 1}}
    assert score(run_, qrels, 10) == {"ndcg@10": pytest.approx(0.63093 / 1.63093, abs=1e-5),
                                      "recall@10": 0.5, "mrr@10": 0.5}
    assert list(score(run_, qrels, 5)) == ["ndcg@5", "recall@5", "mrr@5"]
    assert list(score(run_, qrels, 100)) == ["ndcg@10", "recall@100", "mrr@10"]


# ------------------------------------------------------------------------------ help and wording


def commands(cmd: click.Command, path: tuple[str, ...] = ("embedrank",)):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from commands(sub, (*path, name))


def test_every_option_of_every_command_has_help():
    missing = [(" ".join(path), p.opts[0]) for path, cmd in commands(main) for p in cmd.params
               if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert missing == []
    assert len(list(commands(main))) > 15  # the walk reached the subcommands


def test_train_reranker_lists_only_its_options():
    def options(*args):
        return set(re.findall(r"^\s+(--[a-z-]+)", run(*args, "--help").output, re.M))

    embedder, reranker = options("train", "embedder"), options("train", "reranker")
    only_embedder = {"--temperature", "--pooling", "--chunk-size"}
    assert only_embedder <= embedder and not only_embedder & reranker
    assert {"--model", "--data", "--negatives", "--lr", "--eval"} <= reranker


def test_citations_of_the_report_name_it():
    """A docstring or comment citing a section or equation names the report it cites."""
    for package in PRODUCT:
        for file in (ROOT / package).glob("*.py"):
            text = file.read_text(encoding="utf-8")
            for number, line in enumerate(text.splitlines(), 1):
                if re.search(r"§\s*\d|\bEq\. \d", line):
                    assert "2506.05176" in text, f"{file.name}:{number}: {line.strip()}"
                assert "REFERENCE" not in line, f"{file.name}:{number} cites a file not shipped"
    cli_help = run("train", "embedder", "--help").output
    assert "Qwen3 Embedding technical report (arXiv 2506.05176)" in " ".join(cli_help.split())
