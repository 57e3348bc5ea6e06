"""CPU int8 benchmark: PyTorch fp32 vs ONNX Runtime fp32 vs int8 recipes, side by side.

Real text (a BEIR folder; by default the ChatterBot corpus, converted on the fly) through the
real tokenizer, on a real checkpoint (``--model DIR``, or ``--gguf FILE`` converted first).
Every variant embeds the same queries (with the default instruction) and documents in the
same token-budget batches; the table gives throughput, its ratio to PyTorch fp32, cosine to
the PyTorch fp32 embeddings, top-10 agreement of retrieval over the corpus and nDCG@10.
Figures: docs/int8.md.

Recipes: the product's (``embedrank.export.quantize.RECIPES``) and, for comparison, the
measured-and-removed ones that the two remaining methods still express (:data:`EXTRA_RECIPES`).

    python benchmarks/quant_bench.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_line

from embedrank.beir import document_text
from embedrank.errors import InputError
from embedrank.export.onnx import export_model
from embedrank.export.quantize import DEFAULT_RECIPE, RECIPES, QuantRecipe, calibration_ids, quantize
from embedrank.formats import EOT_TOKEN, plan_batches
from embedrank.manifest import GRAPH_NAME, read_manifest

TOKEN_BUDGET = 4096
# The decoder's sensitive linears: the first and last blocks and every MLP down projection (its
# input, the gated product, holds the largest activation outliers).
SENSITIVE = (r"/layers\.0/", r"/layers\.{last}/", r"/mlp/down_proj/")
# Recipes measured against the product's and left out of it (docs/int8.md has why); kept here as
# data for comparisons. ONNX Runtime's quantize_dynamic recipes (dynamic, dynamic-pc...) left with
# their method.
EXTRA_RECIPES = {r.name: r for r in (
    QuantRecipe("pertoken", "pertoken", help="per-token int8 activations, no smoothing"),
    QuantRecipe("int8-block32-keep", "blockwise", keep_fp32=SENSITIVE,
                help="int8-block32, first/last block and every down_proj kept fp32"),
    QuantRecipe("int8-block32-keepdown", "blockwise", keep_fp32=(r"/mlp/down_proj/",),
                help="int8-block32, every down_proj kept fp32"),
    QuantRecipe("int8-block128", "blockwise", block_size=128, help="int8 blocks of 128"),
    QuantRecipe("int4-block32", "blockwise", bits=4, help="speed reference: 4-bit weights"),
)}


def gguf_to_checkpoint(gguf: Path, out: Path) -> Path:
    """A GGUF file (dequantized by transformers) saved as a plain HF checkpoint directory."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists():
        return out
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    plain = type(model)(config)  # a GGUF-loaded model refuses save_pretrained; copy its weights
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def beir_folder(data: Path | None, work: Path) -> Path:
    """``data``, or the ChatterBot corpus converted into ``work`` [default]."""
    from embedrank.datasets import chatterbot_to_beir

    if data is None:
        data = work / "chatterbot"
        if not (data / "corpus.jsonl").exists():
            chatterbot_to_beir(data)
    return data


def load_texts(data: Path, splits: tuple[str, ...] = ("train", "test")):
    """(doc ids, doc texts, query ids, query texts, qrels) of a BEIR folder: the queries of
    ``splits``, the whole corpus."""
    from embedrank.beir import load_beir

    qrels: dict[str, dict[str, int]] = {}
    texts: dict[str, str] = {}
    for split in splits:
        if not (data / "qrels" / f"{split}.tsv").exists():
            raise InputError(f"{data}: no qrels/{split}.tsv")
        corpus, queries, split_qrels = load_beir(data, split)
        qrels.update(split_qrels)
        texts.update(queries)  # load_beir keeps only its split's queries
    doc_ids, query_ids = sorted(corpus), sorted(qrels)
    docs = [document_text(corpus[d]) for d in doc_ids]
    return doc_ids, docs, query_ids, [texts[q] for q in query_ids], qrels


def subset(doc_ids, docs, query_ids, queries, qrels, limit: int):
    """The first ``limit // 2`` queries and ``limit`` documents: their positives, then the
    corpus in order (so every kept query can find what it is looking for)."""
    query_ids, queries = query_ids[:limit // 2], queries[:limit // 2]
    positives = dict.fromkeys(d for q in query_ids for d, rel in qrels[q].items() if rel > 0)
    chosen = set(list({**positives, **dict.fromkeys(doc_ids)})[:max(limit, 1)])
    pairs = [(d, t) for d, t in zip(doc_ids, docs, strict=True) if d in chosen]
    return [d for d, _ in pairs], [t for _, t in pairs], query_ids, queries


def calibration_texts(source: str, data: Path, count: int, seed: int = 0):
    """(documents, queries) to calibrate on: ``train`` = ``count`` random queries of the BEIR
    folder's train split and one positive document of each (so never a test query), or a
    JSONL file (``{"text"}`` / ``{"query"}`` lines, export/smooth.py)."""
    from embedrank.beir import load_beir
    from embedrank.export.smooth import read_calibration_texts

    if source != "train":
        return read_calibration_texts(source)
    corpus, queries, qrels = load_beir(data, "train")
    picked = np.random.default_rng(seed).permutation(sorted(qrels))[:count]
    docs = [document_text(corpus[next(d for d, r in sorted(qrels[q].items()) if r > 0)]) for q in picked]
    return docs, [queries[q] for q in picked]


def parse_recipe(spec: str) -> QuantRecipe:
    """A recipe name, or ``NAME+key=value...`` for a variant of one: ``alpha=0.65``
    (smoothing, ``none`` for off), ``down=0.5`` (alpha of the down_proj inputs, 0 = not
    smoothed), ``keep=RE,RE`` (node-name regexes kept fp32, ``{last}`` = the last layer),
    ``outliers=R`` (activation channels over R x the median kept fp32, ``none`` for off)."""
    base, *changes = spec.split("+")
    known = {**RECIPES, **EXTRA_RECIPES}
    if base not in known:
        raise InputError(f"unknown recipe {base!r}; choose one of {sorted(known)}")
    optional = lambda v: None if v == "none" else float(v)  # noqa: E731
    fields = {"alpha": ("smooth", optional), "down": ("smooth_down", float),
              "outliers": ("outliers", optional),
              "keep": ("keep_fp32", lambda v: tuple(filter(None, v.split(","))))}
    recipe = dataclasses.replace(known[base], name=spec)
    for change in changes:
        key, _, value = change.partition("=")
        if key not in fields:
            raise InputError(f"recipe variant {spec!r}: unknown key {key!r} ({', '.join(fields)})")
        recipe = dataclasses.replace(recipe, **{fields[key][0]: fields[key][1](value)})
    return recipe


def set_pooled_token(model_dir: Path, token: str) -> None:
    """Pool (and append) ``token`` instead of the manifest's EOT: the graph pools the last
    position whatever its id, so only the manifest changes (and is sealed again: its
    fingerprint covers the prompts). For checkpoints whose ``<|endoftext|>`` state carries no
    text (SmolLM2: an attention-sink token); the export default stays Qwen3's ``<|endoftext|>``."""
    from embedrank.formats import load_tokenizer, token_id

    manifest = read_manifest(model_dir)
    tid = token_id(load_tokenizer(model_dir / "tokenizer.json"), token)
    manifest = dataclasses.replace(manifest, eot_token_id=tid,
                                   prompts=dataclasses.replace(manifest.prompts, eot_token=token))
    manifest.sealed(model_dir).write(model_dir)


def make_variant(fp32_dir: Path, out: Path, recipe: QuantRecipe, calibration=None,
                 reuse: bool = False) -> float:
    """Copy the fp32 model directory with its graph quantized by ``recipe``; seconds taken.
    ``reuse``: keep ``out`` when an earlier run made it from the same fp32 graph, recipe and
    calibration (0.0 s)."""
    calibration = calibration if recipe.calibrated else None
    stamp = hashlib.sha256(json.dumps([read_manifest(fp32_dir).fingerprint, repr(recipe),
                                       calibration]).encode()).hexdigest()[:16]
    if reuse and (out / "embedrank.json").exists() and read_manifest(out).extra.get("stamp") == stamp:
        return 0.0
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(fp32_dir, out, ignore=shutil.ignore_patterns(GRAPH_NAME + "*"))
    start = time.perf_counter()
    quantize(fp32_dir / GRAPH_NAME, out / GRAPH_NAME, recipe, calibration=calibration)
    seconds = time.perf_counter() - start
    manifest = dataclasses.replace(read_manifest(out), dtype="int8",
                                   extra={"int8_recipe": recipe.name, "stamp": stamp}).sealed(out)
    manifest.write(out)
    return seconds


@dataclasses.dataclass
class Row:
    name: str
    embed: object  # (queries, docs) -> (q_emb, d_emb)
    size_mb: float = float("nan")
    queries: np.ndarray | None = None
    docs: np.ndarray | None = None
    seconds: float = float("inf")  # best of the timing rounds
    cache: Path | None = None  # .npz of this row's embeddings of the quality texts


def torch_row(src: Path, budget: int, pooled_token: str | None) -> Row:
    from embedrank.train.modeling import Embedder

    module = Embedder.from_pretrained(src, max_length=512)
    if pooled_token:
        module = Embedder(module.model, module.hf_tokenizer, max_length=512,
                          prompts=dataclasses.replace(module.prompts, eot_token=pooled_token))

    @torch.no_grad()
    def run(seqs):
        out = np.zeros((len(seqs), module.dim), dtype=np.float32)
        for batch in plan_batches([len(s) for s in seqs], budget, 128):
            out[batch] = module(**module.batch([seqs[i] for i in batch])).numpy()
        return out

    def embed(queries, docs):
        return run(module.tokenize_queries(queries)), run(module.tokenize_documents(docs))

    embed.count = lambda q, d: (sum(map(len, module.tokenize_queries(q)))
                                + sum(map(len, module.tokenize_documents(d))))
    return Row("pytorch fp32", embed)


def onnx_row(name: str, model_dir: Path, budget: int, threads: int) -> Row:
    from embedrank.runtime import Embedder

    runtime = Embedder.load(model_dir, token_budget=budget, threads=threads)
    size = sum(p.stat().st_size for p in model_dir.glob(GRAPH_NAME + "*")) / 2**20
    return Row(name, lambda q, d: (runtime.embed_queries(q), runtime.embed_documents(d)), size)


def measure(rows: list[Row], queries, docs, timing: int, rounds: int, quality: bool = True) -> None:
    """Embed everything once per variant (quality), then time ``timing`` queries + ``timing``
    documents in ``rounds`` round-robin rounds, keeping each variant's best: the variants
    see the same machine load, and a burst of load elsewhere is dropped, not averaged in.
    A row's ``cache`` (.npz) holds or receives its quality embeddings."""
    for row in rows if quality else []:
        start = time.perf_counter()
        if row.cache is not None and row.cache.exists():
            saved = np.load(row.cache)
            row.queries, row.docs = saved["queries"], saved["docs"]
            print(f"embeddings of {row.name} from {row.cache}", flush=True)
            continue
        row.queries, row.docs = row.embed(queries, docs)
        if row.cache is not None:
            np.savez(row.cache, queries=row.queries, docs=row.docs)
        print(f"embedded all texts with {row.name} in {time.perf_counter() - start:.0f} s",
              flush=True)
    sub_q, sub_d = queries[:timing], docs[:timing]
    for _ in range(rounds):
        for row in rows:
            start = time.perf_counter()
            row.embed(sub_q, sub_d)
            row.seconds = min(row.seconds, time.perf_counter() - start)


def _top10(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    return np.argsort(-(q @ d.T), axis=1, kind="stable")[:, :10]


def compare(rows: list[Row], tokens: int, doc_ids, query_ids, qrels) -> str:
    from embedrank.metrics import ndcg_at_k

    ref = rows[0]
    width = max(22, *(len(r.name) for r in rows))
    lines = [f"{'variant':<{width}} {'MB':>6} {'tok/s':>8} {'x torch':>8} {'mean cos':>9} "
             f"{'min cos':>8} {'top10 agr':>9} {'nDCG@10':>8}"]
    for row in rows:
        rate = tokens / row.seconds
        ratio = ref.seconds / row.seconds if np.isfinite(row.seconds) else float("nan")
        if ref.queries is None:  # timing only
            lines.append(f"{row.name:<{width}} {row.size_mb:>6.0f} {rate:>8.0f} {ratio:>8.2f}")
            continue
        ref_top = _top10(ref.queries, ref.docs)
        emb = np.concatenate([row.queries, row.docs])
        cos = (emb * np.concatenate([ref.queries, ref.docs])).sum(-1)
        top = _top10(row.queries, row.docs)
        agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, ref_top, strict=True)])
        scores = row.queries @ row.docs.T
        run = {q: {doc_ids[j]: float(scores[i, j]) for j in np.argsort(-scores[i])[:100]}
               for i, q in enumerate(query_ids)}
        lines.append(f"{row.name:<{width}} {row.size_mb:>6.0f} {rate:>8.0f} "
                     f"{ratio:>8.2f} {cos.mean():>9.4f} {cos.min():>8.4f} "
                     f"{agree:>9.3f} {ndcg_at_k(run, qrels, 10):>8.4f}")
    return "\n".join(lines)


def _stamp(src: Path) -> list:
    """Sizes and mtimes of a checkpoint directory's files (part of the reference cache key)."""
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in src.iterdir() if p.is_file())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="HF checkpoint directory")
    source.add_argument("--gguf", type=Path, help="a GGUF file, converted to a checkpoint first")
    parser.add_argument("--data", type=Path, default=None,
                        help="BEIR folder [default: the ChatterBot corpus]")
    parser.add_argument("--work", type=Path, default=Path("quant-bench"))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES),
                        help=f"recipe names ({', '.join([*RECIPES, *EXTRA_RECIPES])}), or variants "
                             "NAME+alpha=A+down=A+keep=RE,RE [the product's: %(default)s]")
    parser.add_argument("--eval-split", default="all", choices=["all", "test"],
                        help="queries ranked: all splits, or the test split only (held out "
                             "from training and calibration)")
    parser.add_argument("--calibration", default="train",
                        help="smoothing calibration texts: 'train' (train-split queries and "
                             "their positives) or a JSONL file of {text} / {query} lines")
    parser.add_argument("--calibration-texts", type=int, default=64,
                        help="with --calibration train: queries (and as many documents)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--token-budget", type=int, default=TOKEN_BUDGET)
    parser.add_argument("--timing-texts", type=int, default=128,
                        help="queries and documents (each) in a timing round")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (0: quality only)")
    parser.add_argument("--fused-fp32", action="store_true",
                        help="add a row for the fused fp32 graph (the fp32 export default)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep variants an earlier run in --work made the same way")
    parser.add_argument("--timing-only", action="store_true",
                        help="skip the quality pass (embedding every text with every variant)")
    parser.add_argument("--limit", type=int, default=None,
                        help="the first LIMIT/2 queries and LIMIT documents (positives first)")
    parser.add_argument("--pooled-token", default=None,
                        help="pool this token instead of <|endoftext|> (non-Qwen checkpoints)")
    return parser


def fp32_rows(args, src: Path) -> tuple[list[Row], list[Path]]:
    """PyTorch fp32, the TorchScript fp32 graph the recipes start from, and (``--fused-fp32``)
    the fused fp32 export default; the model directories of the ONNX rows."""
    fp32_dir = args.work / "fp32"
    if not (fp32_dir / "embedrank.json").exists():
        # the int8 recipes start from the TorchScript graph (export_model does so for int8)
        export_model("embedder", str(src), fp32_dir, max_length=512, overwrite=True, optimize="none")
    set_pooled_token(fp32_dir, args.pooled_token or EOT_TOKEN)
    rows = [torch_row(src, args.token_budget, args.pooled_token),
            onnx_row("onnx fp32 (torchscript)", fp32_dir, args.token_budget, args.threads)]
    dirs = [fp32_dir]
    if args.fused_fp32:
        fused_dir = args.work / "fp32-fused"
        if not (fused_dir / "embedrank.json").exists():
            export_model("embedder", str(src), fused_dir, max_length=512, overwrite=True)
        set_pooled_token(fused_dir, args.pooled_token or EOT_TOKEN)
        rows.append(onnx_row("onnx fp32 (fused)", fused_dir, args.token_budget, args.threads))
        dirs.append(fused_dir)
    return rows, dirs


def recipe_rows(args, recipes: list[QuantRecipe], fp32_dir: Path, data: Path):
    """One quantized model directory and row per recipe (calibrated when a recipe smooths)."""
    calibration = None
    if any(r.calibrated for r in recipes):
        cal_docs, cal_queries = calibration_texts(args.calibration, data, args.calibration_texts)
        calibration = calibration_ids(fp32_dir, cal_docs, cal_queries)
        print(f"calibration: {len(cal_docs)} documents + {len(cal_queries)} queries "
              f"({sum(map(len, calibration))} tokens) from {args.calibration}", flush=True)
    rows, dirs = [], []
    for number, recipe in enumerate(recipes):
        out = args.work / f"v{number}-{re.sub(r'[^A-Za-z0-9_.=+-]', '_', recipe.name)[:60]}"
        seconds = make_variant(fp32_dir, out, recipe, calibration, args.reuse)
        print(f"quantized {recipe.name} in {seconds:.0f} s", flush=True)
        star = "*" if recipe.name == DEFAULT_RECIPE else ""
        rows.append(onnx_row(f"{recipe.name}{star}", out, args.token_budget, args.threads))
        dirs.append(out)
    return rows, dirs


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    src = args.model or gguf_to_checkpoint(args.gguf, args.work / "checkpoint")
    recipes = [parse_recipe(spec) for spec in args.recipes]
    data = beir_folder(args.data, args.work)
    splits = ("test",) if args.eval_split == "test" else ("train", "test")
    doc_ids, docs, query_ids, queries, qrels = load_texts(data, splits)
    if args.limit:
        doc_ids, docs, query_ids, queries = subset(doc_ids, docs, query_ids, queries, qrels, args.limit)
    rows, dirs = fp32_rows(args, src)
    more_rows, more_dirs = recipe_rows(args, recipes, dirs[0], data)
    rows, dirs = rows + more_rows, dirs + more_dirs
    texts = hashlib.sha256(json.dumps([queries, docs]).encode()).hexdigest()[:16]
    key = hashlib.sha256(json.dumps([str(Path(src).resolve()), _stamp(Path(src)),
                                     args.pooled_token, texts]).encode()).hexdigest()[:16]
    cache = args.work / "cache"  # outside the model directories: their fingerprint covers every file
    cache.mkdir(exist_ok=True)
    rows[0].cache = cache / f"reference-{key}.npz"
    if args.reuse:  # a variant directory is rebuilt when its graph changes, and gets a new key
        for row, out in zip(rows[1:], dirs, strict=True):
            row.cache = cache / f"{out.name}-{texts}-{read_manifest(out).fingerprint[:12]}.npz"
    measure(rows, queries, docs, args.timing_texts, args.rounds, quality=not args.timing_only)
    tokens = rows[0].embed.count(queries[:args.timing_texts], docs[:args.timing_texts])
    print(f"quality: {len(queries)} queries (default instruction) x {len(docs)} documents; "
          f"speed: best of {args.rounds} rounds over {args.timing_texts} queries + "
          f"{args.timing_texts} documents ({tokens} tokens), {args.threads} threads, "
          f"token budget {args.token_budget}; * = export default")
    print(f"pooled token: {args.pooled_token or read_manifest(dirs[0]).prompts.eot_token}; "
          f"machine: {machine_line(args.threads)}")
    print(compare(rows, tokens, doc_ids, query_ids, qrels))


if __name__ == "__main__":
    main()
