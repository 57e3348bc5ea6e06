"""``embedrank eval``: parse the options and call :mod:`embedrank.plugin.evaluate`."""

from __future__ import annotations

import json

import click

from embedrank.cli.errors import check_url

_DIR = click.Path(exists=True, file_okay=False)


@click.command("eval")
@click.option("--data", required=True, type=_DIR,
              help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv.")
@click.option("--embedder", required=True, type=_DIR, help="Exported embedder directory.")
@click.option("--reranker", default=None, type=_DIR,
              help="Exported reranker directory: also score the reranked top-k.")
@click.option("--top-k", default=100, show_default=True, type=int,
              help="Candidates retrieved per query (and reranked).")
@click.option("--path", "db", default=None, type=click.Path(file_okay=False),
              help="Qdrant local mode database directory [default: in memory].")
@click.option("--url", default=None, callback=check_url,
              help="A Qdrant server, e.g. http://localhost:6333.")
@click.option("--api-key", default=None, envvar="QDRANT_API_KEY", show_envvar=True,
              help="API key of the Qdrant server (never printed).")
@click.option("--collection", default="embedrank-eval", show_default=True,
              help="Collection to index into (with --path / --url; a rerun resumes).")
@click.option("--split", default="test", show_default=True, help="Qrels split to evaluate.")
@click.option("--instruction", default=None,
              help="Query and rerank instruction [default: the model's].")
@click.option("--batch-size", default=64, show_default=True, type=int,
              help="Documents per upsert and queries per batch request.")
@click.option("--run-out", default=None, type=click.Path(dir_okay=False),
              help="Write the final ranking as a TREC run file.")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help='Write {"embed": {..}, "rerank": {..}} metrics as JSON.')
@click.option("--report", "report_dir", default=None, type=click.Path(file_okay=False),
              help="Write a markdown report with a metrics chart into this directory.")
@click.option("--device", default="cpu", show_default=True,
              help="Where ONNX Runtime runs the models: cpu, cuda or cuda:N (needs onnxruntime-gpu).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_cmd(data, embedder, reranker, top_k, db, url, api_key, collection, split, instruction,
             batch_size, run_out, json_out, report_dir, device, quiet) -> None:
    """nDCG@10, Recall@k (k = --top-k) and MRR@10 on a BEIR folder: embed only, and embed + rerank."""
    from embedrank.beir import write_trec_run
    from embedrank.plugin.evaluate import EvalConfig, dataset_name, run_eval, table

    cfg = EvalConfig(top_k=top_k, split=split, instruction=instruction, batch_size=batch_size,
                     collection=collection, progress=not quiet, device=device)
    result = run_eval(data, embedder, reranker, cfg, path=db, url=url, api_key=api_key,
                      log=lambda s: click.echo(f"eval: {s}", err=True))
    click.echo(f"{dataset_name(data)} ({split}), top-{top_k}")
    click.echo(table(result.metrics))
    if json_out:
        with open(json_out, "w", encoding="utf-8") as fh:
            json.dump(result.metrics, fh, indent=2)
    if run_out:
        write_trec_run(result.final_run, run_out,
                       tag="embedrank-rerank" if "rerank" in result.runs else "embedrank-embed")
    if report_dir:
        from embedrank.plugin.eval_report import write_report

        click.echo(f"wrote {write_report(result, report_dir)}")
