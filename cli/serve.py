"""``embedrank serve``: the HTTP server (Qdrant inference hook, rerank, embeddings, proxy)."""

from __future__ import annotations

import os

import click

from embedrank.serve.batcher import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_QUEUE, DEFAULT_WORKERS


@click.command()
@click.option("--embedder", "embedders", multiple=True, metavar="NAME=DIR[:DIM]",
              help="Serve the embedder model directory DIR as model NAME (repeatable); DIM truncates "
                   "to that Matryoshka size. NAME is the model Qdrant's Document names.")
@click.option("--reranker", "rerankers", multiple=True, metavar="NAME=DIR",
              help="Serve the reranker model directory DIR as model NAME (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 for every interface, e.g. inside Docker).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535),
              help="TCP port to listen on.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the models run (cuda needs onnxruntime-gpu: pip install 'embedrank[gpu]').")
@click.option("--token-env", metavar="VAR", default=None,
              help="Require the bearer token held by environment variable VAR (Authorization: Bearer, "
                   "or the body's token as Qdrant sends QDRANT__INFERENCE__TOKEN).")
@click.option("--qdrant", metavar="URL", default=None,
              help="Also proxy Qdrant's REST API to URL, reranking text queries on collections "
                   "with a reranker set (e.g. http://localhost:6333).")
@click.option("--batch-tokens", default=DEFAULT_BATCH_TOKENS, show_default=True,
              type=click.IntRange(min=1),
              help="Padded tokens per forward pass when merging concurrent requests.")
@click.option("--max-queue", default=DEFAULT_MAX_QUEUE, show_default=True, type=click.IntRange(min=1),
              help="Inputs waiting or running at most (all models); past it requests get a 503.")
@click.option("--workers", default=DEFAULT_WORKERS, show_default=True, type=click.IntRange(min=1),
              help="Forward passes of one model running at once.")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="ONNX Runtime threads per model [default: cores / --workers on CPU].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info",
              show_default=True, help="Logging level (info: one line per request).")
def serve(embedders, rerankers, host, port, device, token_env, qdrant, batch_tokens, max_queue,
          workers, threads, log_level) -> None:
    """Serve models over HTTP: POST /qdrant/infer (Qdrant's inference hook), /rerank,
    /v1/embeddings; GET /health, /metrics; with --qdrant, a reranking Qdrant REST proxy."""
    from embedrank.errors import InputError, require

    require("starlette", "serve")
    require("uvicorn", "serve")
    from embedrank.serve import ModelSpec, ServeOptions, run

    token = None
    if token_env is not None:
        token = os.environ.get(token_env)
        if not token:
            raise InputError(f"--token-env {token_env}: the environment variable {token_env} is "
                             "unset or empty; export it with the token clients must send")
    options = ServeOptions(
        embedders=tuple(ModelSpec.parse(s) for s in embedders),
        rerankers=tuple(ModelSpec.parse(s, allow_dim=False) for s in rerankers),
        device=device, token=token, qdrant=qdrant, batch_tokens=batch_tokens, max_queue=max_queue,
        workers=workers, threads=threads)
    run(options, host, port, log_level)
