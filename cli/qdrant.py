"""``embedrank ingest | query | demo``: Qdrant from the command line (parse, then call).

qdrant-client is imported inside the commands: it takes a second to import.
"""

from __future__ import annotations

import click

from embedrank.cli.errors import check_url

_DIR = click.Path(exists=True, file_okay=False)


def _target(fn):
    fn = click.option("--api-key", default=None, envvar="QDRANT_API_KEY", show_envvar=True,
                      help="API key of the Qdrant server (never printed).")(fn)
    fn = click.option("--url", default=None, callback=check_url,
                      help="A Qdrant server, e.g. http://localhost:6333.")(fn)
    return click.option("--path", "db", default=None, type=click.Path(file_okay=False),
                        help="Qdrant local mode database directory.")(fn)


def _attempts(fn):
    return click.option("--attempts", default=6, show_default=True, type=click.IntRange(min=1),
                        help="Tries per call to Qdrant (exponential backoff with jitter "
                             "between them).")(fn)


def _connect(embedder: str, db: str | None, url: str | None, api_key: str | None):
    """Register ``embedder`` under its model name and open the client: (client, name)."""
    from embedrank.plugin.ingest import model_name, open_client
    from embedrank.plugin.vectorizer import register_embedder

    if not db and not url:
        raise click.UsageError("give --path DB (local mode) or --url URL (a Qdrant server)")
    name = model_name(embedder)
    register_embedder(name, embedder)
    return open_client(db, url, api_key), name


@click.command()
@click.argument("collection")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--embedder", required=True, type=_DIR, help="Exported embedder directory.")
@click.option("--text-field", default="text", show_default=True,
              help="Field (JSONL key or CSV column) that holds the text to embed.")
@click.option("--id-field", default="id", show_default=True,
              help="Field whose value makes the point id (uuid5); records without it use the text.")
@_target
@click.option("--batch-size", default=64, show_default=True, type=int,
              help="Records embedded and written per Qdrant call.")
@click.option("--on-duplicate", default="last", show_default=True,
              type=click.Choice(["first", "last", "fail"]),
              help="Records that name one point (the same id, or the same text without one): "
                   "keep the first or the last of them, or fail before writing anything. "
                   "They are counted and reported either way.")
@_attempts
def ingest(collection, file, embedder, text_field, id_field, db, url, api_key, batch_size,
           on_duplicate, attempts) -> None:
    """Embed a JSONL or CSV FILE into COLLECTION (created if missing); a rerun resumes, and
    updates the points whose record changed."""
    from tqdm import tqdm

    from embedrank.plugin.ingest import count_lines, ingest_records, read_records
    from embedrank.plugin.retry import Backoff

    client, name = _connect(embedder, db, url, api_key)
    try:
        with tqdm(total=count_lines(file), unit="line", desc=collection) as bar:
            result = ingest_records(client, collection, lambda: read_records(file), name,
                                    text_field=text_field, id_field=id_field,
                                    batch_size=batch_size, source=file, progress=bar.update,
                                    backoff=Backoff(attempts=attempts), on_duplicate=on_duplicate)
    finally:
        client.close()
    click.echo(result.summary(collection))


@click.command()
@click.argument("collection")
@click.argument("text")
@click.option("--embedder", required=True, type=_DIR, help="Exported embedder directory.")
@click.option("--reranker", default=None, type=_DIR,
              help="Exported reranker: rerank the top-k with it, for this query only "
                   "[default: the collection's own reranker, if set_reranker recorded one].")
@click.option("--limit", default=10, show_default=True, type=int, help="Hits to print.")
@click.option("--top-k", default=100, show_default=True, type=int,
              help="Candidates the reranker reads.")
@click.option("--text-field", default="text", show_default=True,
              help="Payload field whose text is shown (and reranked).")
@click.option("--instruction", default=None, help="Task instruction for the query.")
@_target
@_attempts
def query(collection, text, embedder, reranker, limit, top_k, text_field, instruction, db,
          url, api_key, attempts) -> None:
    """Search COLLECTION for TEXT and print rank, id, score and a text snippet."""
    from qdrant_client import models

    from embedrank.errors import InputError
    from embedrank.plugin.ingest import hits_table
    from embedrank.plugin.retry import Backoff, retry_call

    client, name = _connect(embedder, db, url, api_key)
    try:
        backoff = Backoff(attempts=attempts)
        if not retry_call(client.collection_exists, collection, what="reaching Qdrant",
                          backoff=backoff):
            raise InputError(f"collection {collection!r} does not exist in {db or 'that server'}: "
                             "create it with `embedrank ingest` first")
        rerank = True  # the collection's own reranker, if it has one; --reranker for this query only
        if reranker:
            from embedrank.plugin.rerank import configure

            rerank = configure(reranker, text_field=text_field, top_k=top_k)
        options = {"instruction": instruction} if instruction is not None else None
        hits = retry_call(client.query_points, collection, query=models.Document(
            text=text, model=name, options=options), limit=limit, rerank=rerank,
            what=f"querying {collection!r}", backoff=backoff).points
    finally:
        client.close()
    click.echo(hits_table(hits, text_field))


@click.command()
@click.option("--embedder", default=None, type=_DIR,
              help="Exported embedder [default: export Qwen/Qwen3-Embedding-0.6B from the hub].")
@click.option("--reranker", default=None, type=_DIR,
              help="Exported reranker [default: export Qwen/Qwen3-Reranker-0.6B from the hub].")
@click.option("--path", "db", default=None, type=click.Path(file_okay=False),
              help="Qdrant local mode directory [default: in memory].")
def demo(embedder, reranker, db) -> None:
    """Ingest a small corpus and answer queries without and with rerank, side by side."""
    from embedrank.cli.demo import default_model
    from embedrank.plugin.demo import run_demo

    embedder = embedder or default_model("embedder", click.echo)
    reranker = reranker or default_model("reranker", click.echo)
    run_demo(embedder, reranker, db, echo=click.echo)
