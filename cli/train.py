"""``embedrank train embedder|reranker``, ``embedrank merge`` and ``embedrank synth``.

Commands only parse and call. Everything torch-side is imported inside the command functions,
so ``import embedrank.plugin`` (and ``embedrank --help``) never imports torch.
"""

from __future__ import annotations

import json

import click


@click.group()
def train() -> None:
    """Fine-tune a checkpoint (HF dir or hub id) into an HF checkpoint that export takes."""


def _options(options: list):
    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


_COMMON = [
    click.option("--model", "model", required=True, help="Source checkpoint (HF dir or id)."),
    click.option("--data", required=True, type=click.Path(exists=True),
                 help='JSONL: {"query","pos":[..],"neg":[..],"instruction"?} or '
                      '{"query","response","rejected_response"}; or a BEIR folder (train split).'),
    click.option("--out", required=True, type=click.Path(file_okay=False),
                 help="Output dir: final checkpoint, checkpoint-<step>/, train_log.jsonl."),
    click.option("--max-steps", type=int, default=None, help="Optimizer steps (overrides --epochs)."),
    click.option("--epochs", type=float, default=1.0, show_default=True,
                 help="Passes over the data when --max-steps is not given."),
    click.option("--batch-size", type=int, default=16, show_default=True,
                 help="Queries per micro-batch."),
    click.option("--grad-accum", type=int, default=1, show_default=True,
                 help="Micro-batches per optimizer step."),
    click.option("--lr", type=float, default=1e-4, show_default=True,
                 help="Peak learning rate (linear warmup and decay)."),
    click.option("--negatives", type=int, default=3, show_default=True,
                 help="Hard negatives per query (own first, then random documents)."),
    click.option("--instruction", default=None, help="Instruction for lines without one [model default]."),
    click.option("--lora/--full", default=True, show_default=True,
                 help="LoRA adapters (merged at save) or full fine-tuning."),
    click.option("--lora-r", type=int, default=16, show_default=True, help="LoRA rank."),
    click.option("--max-length", type=int, default=512, show_default=True,
                 help="Token limit per training sequence."),
    click.option("--eval", "eval_file", type=click.Path(exists=True), default=None,
                 help="Held-out JSONL (ranks its own documents) or BEIR folder (test split vs the "
                      "whole corpus): nDCG@10 / Recall@100 / MRR@10 at checkpoints."),
    click.option("--save-every", type=int, default=0, show_default=True,
                 help="Checkpoint every N steps (0 = at the end only)."),
    click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in OUT."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Seed of the data order, negative sampling and initialisation."),
    click.option("--device", default=None, help="cpu or cuda [cuda when available]."),
]
_EMBEDDER_ONLY = [
    click.option("--temperature", type=float, default=0.01, show_default=True,
                 help="InfoNCE temperature."),
    click.option("--pooling", type=click.Choice(["last", "mean"]), default="last", show_default=True,
                 help="last (Qwen3-style decoders) or mean (BERT-style encoders)."),
    click.option("--chunk-size", type=int, default=0, show_default=True,
                 help="GradCache chunk for large batches (0 = off)."),
]


def _run_train(kind: str, eval_file, **kwargs) -> None:
    from embedrank.train.trainer import TrainConfig
    from embedrank.train.trainer import train as run

    result = run(kind, TrainConfig(eval=eval_file, **kwargs))
    for scores in result.evals:
        click.echo(json.dumps(scores))
    click.echo(f"wrote {result.out} after {result.steps} steps")


@train.command("embedder")
@_options(_COMMON + _EMBEDDER_ONLY)
def train_embedder(**kwargs) -> None:
    """Embedder: improved InfoNCE with hard and in-batch negatives.

    The loss is Eq. 1 of the Qwen3 Embedding technical report (arXiv 2506.05176).
    """
    _run_train("embedder", **kwargs)


@train.command("reranker")
@_options(_COMMON)
def train_reranker(**kwargs) -> None:
    """Reranker: yes/no cross-entropy over positives and hard negatives.

    The loss is Eq. 2 of the Qwen3 Embedding technical report (arXiv 2506.05176).
    """
    _run_train("reranker", **kwargs)


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Merged checkpoint.")
@click.option("--t", "t", type=float, default=0.5, show_default=True,
              help="Slerp weight of the second checkpoint (two checkpoints only).")
def merge(checkpoints, out, t) -> None:
    """Slerp-merge HF checkpoints tensor by tensor (as mergekit).

    More than two: successive slerp with equal weights (the k-th enters with t = 1/k).
    Refuses checkpoints of different architectures or shapes.
    """
    from embedrank.errors import InputError
    from embedrank.train.merge import merge_checkpoints

    if len(checkpoints) < 2:
        raise InputError("give at least two checkpoints to merge")
    click.echo(f"wrote {merge_checkpoints(list(checkpoints), out, t)}")


@click.command()
@click.option("--llm", required=True, help="Instruction-tuned causal LM (HF dir or id).")
@click.option("--gguf-file", default=None, help="GGUF file name inside --llm (needs gguf).")
@click.option("--corpus", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Passages: JSONL with 'text' (BEIR corpus) or one passage per line.")
@click.option("--personas", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Personas: JSONL with 'persona' or one per line (retrieval task).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSONL.")
@click.option("--embedder", default=None,
              help="Embedder (torch checkpoint or exported model dir): personas, filter, "
                   "negatives.")
@click.option("--min-cosine", type=float, default=0.7, show_default=True,
              help="Keep pairs whose embedder cosine exceeds this.")
@click.option("--task", type=click.Choice(["retrieval", "bitext", "sts", "classification"]),
              default="retrieval", show_default=True, help="The kind of pairs to synthesize.")
@click.option("--language", default="English", show_default=True,
              help="Language the queries are written in.")
@click.option("--negatives", type=int, default=3, show_default=True,
              help="Mined hard negatives per pair.")
@click.option("--batch-size", type=int, default=8, show_default=True,
              help="Prompts per generate call.")
@click.option("--max-new-tokens", type=int, default=256, show_default=True,
              help="Token limit of each LLM answer.")
@click.option("--limit", type=int, default=None, help="Use only the first N passages.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random draws (personas without --embedder, query lengths, "
                   "negatives); generation itself is greedy.")
@click.option("--device", default=None, help="cpu or cuda [cuda when available].")
def synth(**kwargs) -> None:
    """Synthesize training pairs with a local LLM: JSONL that `train` reads.

    The recipe of §3.3 of the Qwen3 Embedding technical report (arXiv 2506.05176).
    """
    from embedrank.train.synth import SynthConfig, run_synth

    stats = run_synth(SynthConfig(**kwargs))
    click.echo(json.dumps(stats))
