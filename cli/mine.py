"""``embedrank mine``: parse the options and call :func:`embedrank.train.mine.mine`."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--embedder", required=True,
              help="Torch embedder checkpoint (HF dir or hub id) that ranks the documents.")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Training JSONL or BEIR folder (train split): the queries and the document "
                   "pool (its positives and negatives; never the test split).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help='Output JSONL: {"query", "pos", "neg": [mined]} per line (neg replaced).')
@click.option("--negatives", type=int, default=3, show_default=True,
              help="Negatives drawn per query.")
@click.option("--depth", type=int, default=30, show_default=True,
              help="Draw them from this many best-ranked non-positive documents.")
@click.option("--max-ratio", type=float, default=0.95, show_default=True,
              help="Skip documents scoring at least this times the positive's score "
                   "(likely unlabeled positives).")
@click.option("--pooling", type=click.Choice(["last", "mean"]), default="last", show_default=True,
              help="last: Qwen3-style decoder; mean: BERT-style encoder.")
@click.option("--instruction", default=None,
              help="Query instruction for lines without one [model default].")
@click.option("--max-length", type=int, default=512, show_default=True,
              help="Token limit per text.")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Texts per forward pass.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draws.")
@click.option("--device", default=None, help="cpu or cuda [cuda when available].")
def mine(**kwargs) -> None:
    """Mine hard negatives for a training file with an embedder (for `train`)."""
    from embedrank.train.mine import MineConfig
    from embedrank.train.mine import mine as run

    click.echo(json.dumps(run(MineConfig(**kwargs))))
