"""``embedrank data``: offline evaluation data in BEIR format."""

from __future__ import annotations

import click


@click.group()
def data() -> None:
    """Offline evaluation data (BEIR folders for `embedrank eval` and `train --data`)."""


@data.command("chatterbot")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--test-fraction", type=float, default=0.2, show_default=True,
              help="Share of the questions held out as the test split (the rest is train).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")
def chatterbot(out, test_fraction, seed) -> None:
    """The chatterbot corpus (2,026 English question -> answer pairs, from PyPI) as a BEIR folder:
    query = question, relevant document = its answer. Needs `pip install 'embedrank[datasets]'`."""
    from embedrank.datasets import chatterbot_to_beir

    n = chatterbot_to_beir(out, test_fraction=test_fraction, seed=seed)
    click.echo(f"wrote {out}: {n['docs']} documents, {n['test_queries']} test and "
               f"{n['train_queries']} train queries")
