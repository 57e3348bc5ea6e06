"""Fine-tuning drivers: the embedder with the improved InfoNCE, the reranker with the yes/no
loss. Pieces (data, losses, evaluation, checkpoints) live elsewhere or in small functions here;
:func:`train` only wires them.

Output layout of ``cfg.out``: the final HF checkpoint (LoRA merged: config + safetensors +
tokenizer, what ``embedrank export`` and ``embedrank merge`` take), ``checkpoint-<step>/`` every
``save_every`` steps (same HF files + ``trainer_state.pt`` for ``resume``) and
``train_log.jsonl`` (one line per step: loss, lr, examples/s; eval metrics at checkpoints).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from embedrank.errors import InputError, TrainingError
from embedrank.outputs import check_no_overlap
from embedrank.train.data import Batcher, EvalSet, Group, load_examples, text_id
from embedrank.train.evaluate import autocast, embedder_run, ranking_metrics, reranker_run
from embedrank.train.losses import cached_infonce_backward, improved_infonce, reranker_loss
from embedrank.train.modeling import Embedder, Reranker

STATE_FILE = "trainer_state.pt"
LOG_FILE = "train_log.jsonl"
MAX_BAD_STEPS = 10  # consecutive non-finite steps before the run stops
SKIPPED = "skipped: non-finite loss or gradient, weights unchanged"


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Settings of one fine-tuning run (the CLI flags map one to one)."""

    model: str = _opt("", "Source checkpoint: local HF directory or hub id.")
    data: str = _opt("", "Training JSONL: {query, pos, neg, instruction?} or "
                         "{query, response, rejected_response}.")
    out: str = _opt("", "Output directory: final HF checkpoint, checkpoint-<step>/, log.")
    max_steps: int | None = _opt(None, "Optimizer steps; overrides epochs when set.")
    epochs: float = _opt(1.0, "Passes over the data when max_steps is not set.")
    batch_size: int = _opt(16, "Queries per micro-batch (in-batch negatives come from it).")
    grad_accum: int = _opt(1, "Micro-batches per optimizer step.")
    lr: float = _opt(1e-4, "Peak learning rate (linear warmup, then linear decay to 0).")
    warmup: float = _opt(0.05, "Fraction of the steps spent warming up.")
    weight_decay: float = _opt(0.0, "AdamW weight decay.")
    max_grad_norm: float = _opt(1.0, "Gradient clipping (0 disables).")
    temperature: float = _opt(0.01, "InfoNCE temperature tau (embedder).")
    margin: float = _opt(0.1, "False-negative mask margin of the improved InfoNCE (embedder).")
    negatives: int = _opt(3, "Hard negatives K per query (own negatives first, then random).")
    instruction: str | None = _opt(None, "Instruction for lines without one [model default].")
    pooling: str = _opt("last", "Embedder pooling: last (Qwen3-style decoder) or mean (BERT-style "
                                "encoder, training side only).")
    lora: bool = _opt(True, "Train LoRA adapters (merged into the weights at save) or all "
                            "weights.")
    lora_r: int = _opt(16, "LoRA rank.")
    lora_alpha: int = _opt(32, "LoRA alpha.")
    max_length: int = _opt(512, "Token limit per sequence during training.")
    chunk_size: int = _opt(0, "GradCache chunk (embedder): >0 trades compute for memory.")
    eval: str | None = _opt(None, "Held-out JSONL (same format): nDCG@10 / Recall@100 / MRR@10 at "
                                  "checkpoints, ranking all its documents.")
    save_every: int = _opt(0, "Checkpoint (and eval) every N steps; 0 = only at the end.")
    resume: bool = _opt(False, "Continue from the latest checkpoint-<step> in out.")
    seed: int = _opt(0, "Seed of the data order, negative sampling and init.")
    device: str | None = _opt(None, "cpu / cuda [cuda when available]; bf16 autocast on CUDA.")
    progress: bool = _opt(True, "Show a progress bar.")


@dataclass
class TrainResult:
    out: Path
    steps: int
    losses: list[float]
    evals: list[dict]  # {"step": n, "ndcg@10": .., "recall@100": .., "mrr@10": ..}


# --------------------------------------------------------------------------- model setup


def load_model(kind: str, cfg: TrainConfig, device: torch.device) -> Embedder | Reranker:
    cls = {"embedder": Embedder, "reranker": Reranker}[kind]
    if kind == "embedder" and cfg.pooling == "mean":
        from embedrank.train.encoder import MeanPoolEmbedder as cls
    elif cfg.pooling not in ("last", "mean"):
        raise InputError(f"pooling must be 'last' or 'mean', got {cfg.pooling!r}")
    module = cls.from_pretrained(cfg.model, device=device, max_length=cfg.max_length)
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                          target_modules="all-linear")
        module.model = get_peft_model(module.model, lora)
    return module.train()


def save_hf(module: Embedder | Reranker, out: Path) -> None:
    """An HF checkpoint without peft: LoRA merged into a copy, the training model untouched."""
    inner = module.model
    if hasattr(inner, "merge_and_unload"):
        inner = copy.deepcopy(inner).merge_and_unload()
    inner.save_pretrained(out)
    module.hf_tokenizer.save_pretrained(out)


def _trainable(module) -> list[tuple[str, Tensor]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def _schedule(total: int, warmup: float) -> Callable[[int], float]:
    warm = max(1, int(total * warmup))
    return lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))


# --------------------------------------------------------------------------- losses per batch


def _instr(g: Group, cfg: TrainConfig) -> str | None:
    return g.instruction if g.instruction is not None else cfg.instruction


def embedder_loss(model: Embedder, groups: Sequence[Group], cfg: TrainConfig) -> Tensor:
    """Improved InfoNCE of one micro-batch. With ``chunk_size`` the GradCache variant has
    already accumulated the gradients and returns a detached loss."""
    q = model.batch([model.tokenize_queries([g.query], _instr(g, cfg))[0] for g in groups])
    p = model.batch(model.tokenize_documents([g.pos for g in groups]))
    negs = [t for g in groups for t in g.negs]
    n = model.batch(model.tokenize_documents(negs)) if negs else None
    pos_ids = torch.tensor([text_id(g.pos) for g in groups], device=model.device)
    kw = dict(temperature=cfg.temperature, margin=cfg.margin, pos_ids=pos_ids)
    if cfg.chunk_size:
        return cached_infonce_backward(lambda b: model(**b), q, p, n, chunk_size=cfg.chunk_size,
                                       **kw)
    d_neg = model(**n).view(len(groups), cfg.negatives, -1) if n is not None else None
    return improved_infonce(model(**q), model(**p), d_neg, **kw)


def reranker_batch_loss(model: Reranker, groups: Sequence[Group], cfg: TrainConfig) -> Tensor:
    """Yes/no cross-entropy over each query's positive (yes) and K hard negatives (no)."""
    seqs, labels = [], []
    for g in groups:
        seqs += model.tokenize(g.query, [g.pos, *g.negs], _instr(g, cfg))
        labels += [1.0] + [0.0] * len(g.negs)
    return reranker_loss(model(**model.batch(seqs)), labels)


LOSSES = {"embedder": embedder_loss, "reranker": reranker_batch_loss}


# --------------------------------------------------------------------------- checkpoints


def checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(module, opt, sched, step: int, out: Path) -> Path:
    path = out / f"checkpoint-{step}"
    save_hf(module, path)
    state = {"step": step, "trainable": {n: p.detach().cpu() for n, p in _trainable(module)},
             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "rng": torch.get_rng_state()}
    torch.save(state, path / STATE_FILE)
    return path


def restore(module, opt, sched, path: Path) -> int:
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)  # never unpickle
    params = dict(_trainable(module))
    if set(params) != set(state["trainable"]):
        raise InputError(f"{path} was saved with other trainable weights (LoRA vs full, or "
                         "another rank): resume with the same --lora/--full and settings")
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return state["step"]


def _prepare_out(out: Path, resume: bool) -> Path | None:
    found = checkpoints(out) if out.is_dir() else []
    if resume:
        if not found:
            raise InputError(f"--resume: no checkpoint-<step>/{STATE_FILE} under {out}")
        return found[-1]
    if found:
        raise InputError(f"{out} already holds checkpoints: pass --resume to continue, or choose "
                         "a new --out")
    out.mkdir(parents=True, exist_ok=True)
    return None


def run_eval(kind: str, module, data: EvalSet) -> dict[str, float]:
    run = embedder_run(module, data) if kind == "embedder" else reranker_run(module, data)
    return ranking_metrics(run, data.qrels)


def _load_eval(cfg: TrainConfig) -> EvalSet | None:
    if not cfg.eval:
        return None
    data = EvalSet.load(cfg.eval)
    queries = {q: (t, i if i is not None else cfg.instruction) for q, (t, i) in
               data.queries.items()}
    return dataclasses.replace(data, queries=queries)


# --------------------------------------------------------------------------- the driver


def _log(out: Path, record: dict) -> None:
    with (out / LOG_FILE).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _apply(params: list[Tensor], opt, sched, cfg: TrainConfig, loss: float) -> bool:
    """Average the accumulated gradients, clip them and step; when the loss or the gradient norm
    is not finite nothing is applied (the schedule still advances) and False is returned."""
    for p in params:
        if p.grad is not None:
            p.grad /= cfg.grad_accum
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
    applied = math.isfinite(loss) and bool(torch.isfinite(norm))
    if applied:
        opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return applied


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but torch sees no CUDA device: use cpu")
    return torch.device(name)


def train(kind: str, cfg: TrainConfig) -> TrainResult:
    """Fine-tune ``cfg.model`` as an ``embedder`` or a ``reranker``; see the module docstring."""
    from tqdm.auto import tqdm

    if kind not in LOSSES:
        raise InputError(f"kind must be one of {sorted(LOSSES)}, got {kind!r}")
    if cfg.grad_accum < 1:
        raise InputError(f"grad_accum must be >= 1, got {cfg.grad_accum}")
    out = Path(cfg.out)
    check_no_overlap(out, cfg.model)  # never write the fine-tuned model over its source
    latest = _prepare_out(out, cfg.resume)
    torch.manual_seed(cfg.seed)
    device = _device(cfg.device)
    batcher = Batcher(load_examples(cfg.data), cfg.batch_size, cfg.negatives, cfg.seed)
    evalset = _load_eval(cfg)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(batcher) / cfg.grad_accum))
    module = load_model(kind, cfg, device)
    params = [p for _, p in _trainable(module)]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(total, cfg.warmup))
    step = restore(module, opt, sched, latest) if latest else 0
    result = TrainResult(out, step, [], [])

    def checkpoint() -> None:
        if evalset is not None:
            scores = {"step": step, **run_eval(kind, module, evalset)}
            result.evals.append(scores)
            _log(out, {"eval": scores})
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()
                                                   if k != "step"))
        if step and cfg.save_every:
            save_checkpoint(module, opt, sched, step, out)

    stream = batcher.stream(step * cfg.grad_accum)
    bar = tqdm(total=total, initial=step, desc=f"train {kind}", disable=not cfg.progress)
    if step == 0:
        checkpoint()  # the baseline figures
    bad = 0  # consecutive steps skipped for a non-finite loss or gradient
    while step < total:
        start, seen, loss_sum = time.perf_counter(), 0, 0.0
        for _ in range(cfg.grad_accum):
            groups = next(stream)
            with autocast(device):
                loss = LOSSES[kind](module, groups, cfg)
            if loss.requires_grad:
                loss.backward()
            loss_sum += loss.item()
            seen += len(groups)
        loss_avg = loss_sum / cfg.grad_accum
        applied = _apply(params, opt, sched, cfg, loss_avg)
        step += 1
        bad = 0 if applied else bad + 1
        if bad >= MAX_BAD_STEPS:
            raise TrainingError(f"{bad} steps in a row up to step {step} had a non-finite loss "
                                "or gradient: lower --lr or raise --temperature (check bf16 "
                                "with --device cpu, which trains in fp32)")
        speed = seen / (time.perf_counter() - start)
        result.losses.append(loss_avg)
        _log(out, {"step": step, "loss": loss_avg, "lr": sched.get_last_lr()[0],
                   "examples_per_s": speed, **({} if applied else {"skipped": SKIPPED})})
        if not applied:
            bar.write(f"step {step}: {SKIPPED}")
        bar.set_postfix(loss=f"{loss_avg:.4f}", ex_s=f"{speed:.1f}")
        bar.update()
        if (cfg.save_every and step % cfg.save_every == 0) or step == total:
            checkpoint()
    bar.close()
    save_hf(module, out)
    result.steps = step
    return result
