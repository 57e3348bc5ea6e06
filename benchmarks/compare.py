"""Exported embedders side by side on this machine: same token ids, same batches, round-robin.

Which export of one checkpoint is fastest here (``--optimize none`` / ``fused``, ``--attention
gqa`` / ``mha``, a dtype), with PyTorch eager on the same batches as the reference row. Every
variant embeds the same documents (lengths drawn from MIN:MAX, seeded) in rounds; the table
keeps each variant's best round, so a burst of load from elsewhere costs every row alike.
Every row runs the runtime's length-sorted token-budget batches. Figures: docs/bench.md.

    python benchmarks/compare.py EXPORT_DIR [EXPORT_DIR ...] --torch CKPT --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import GraphRunner, budget_plan, machine_line, run_planned


def _documents(vocab: int, eot: int, n: int, lengths: tuple[int, int], seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(lengths[0], lengths[1] + 1, size=n)
    return [[*rng.integers(1000, min(vocab, 30000), size=int(k) - 1).tolist(), eot] for k in sizes]


def _onnx_runner(path: Path, threads: int):
    graph = GraphRunner(path, "cpu", threads)
    return lambda seqs: run_planned(graph, seqs, budget_plan(seqs))


def _torch_runner(ckpt: str, threads: int):
    """PyTorch eager fp32 on the CPU, left-padded, in the runtime's batches."""
    import torch

    from embedrank.formats import pad_left
    from embedrank.train.modeling import Embedder

    torch.set_num_threads(threads)
    module = Embedder.from_pretrained(ckpt).eval()

    @torch.inference_mode()
    def forward(rows):
        ids, mask = pad_left(rows, module.pad_id)
        return module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    return lambda seqs: run_planned(forward, seqs, budget_plan(seqs))


def compare(dirs: list[Path], torch_ckpt: str | None, *, docs: int = 256, lengths=(32, 512),
            rounds: int = 3, threads: int = 2, seed: int = 0) -> list[dict]:
    """Best-of-``rounds`` tokens/s per variant and cosine to the first row's embeddings."""
    from embedrank.manifest import read_manifest

    first = read_manifest(dirs[0])
    runners = {}
    if torch_ckpt:
        runners["pytorch eager fp32"] = _torch_runner(torch_ckpt, threads)
    for path in dirs:
        m = read_manifest(path)
        label = f"{path.name} ({m.extra.get('optimize', '?')}"
        label += f", {m.extra['attention']})" if "attention" in m.extra else ")"
        runners[label] = _onnx_runner(path, threads)
    seqs = _documents(151643, first.eot_token_id, docs, lengths, seed)
    tokens = sum(len(s) for s in seqs)
    best = dict.fromkeys(runners, float("inf"))
    outputs = {}
    for name, run in runners.items():  # warm-up, and the embeddings for the cosine
        outputs[name] = run(seqs)
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run(seqs)
            best[name] = min(best[name], time.perf_counter() - start)
    ref = next(iter(outputs.values()))
    base = tokens / best[next(iter(runners))]
    return [{"variant": name, "tokens_per_s": tokens / best[name],
             "ratio": tokens / best[name] / base,
             "min_cosine": float((outputs[name] * ref).sum(1).min())} for name in runners]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path, help="exported embedder directories")
    p.add_argument("--torch", dest="torch_ckpt", help="checkpoint for the PyTorch eager row (first)")
    p.add_argument("--docs", type=int, default=256, help="documents [%(default)s]")
    p.add_argument("--lengths", default="32:512", help="MIN:MAX tokens per document [%(default)s]")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds, best kept [%(default)s]")
    p.add_argument("--threads", type=int, default=2, help="threads of every row [%(default)s]")
    a = p.parse_args(argv)
    low, high = (int(x) for x in a.lengths.split(":"))
    rows = compare(a.dirs, a.torch_ckpt, docs=a.docs, lengths=(low, high), rounds=a.rounds,
                   threads=a.threads)
    print(f"{a.docs} documents of {low}-{high} tokens, best of {a.rounds} rounds; "
          f"{machine_line(a.threads)}\n")
    print("| variant | tokens/s | x first row | min cosine to first row |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['ratio']:.2f} | {r['min_cosine']:.6f} |")


if __name__ == "__main__":
    main()
