"""Synthetic training pairs from a local instruction-tuned LLM (the Qwen3 Embedding technical
report, arXiv 2506.05176, §3.3).

:func:`synthesize` is the pure pipeline over two injected callables: ``generate`` (prompts ->
completions) and an optional ``encoder`` (``embed_queries`` / ``embed_documents`` -> unit
vectors as numpy). :func:`run_synth` wires files, :class:`HFGenerator` (any causal LM through
transformers, batched greedy decoding, left padding) and an embedder (torch checkpoint or
exported model dir) to it. Prompts live in :mod:`embedrank.train.synth_prompts`.

Robustness: a completion that holds no JSON object with the required keys and valid values is
skipped and counted in the returned stats; nothing a model writes can crash the run.

Hard negatives: the pool is every corpus passage and every generated positive; for each kept
pair, the top-scored pool texts except the positive itself and anything scoring at least
``0.95 x`` the positive's score (likely false negatives). Without an encoder: random pool texts.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embedrank.errors import InputError
from embedrank.hub import check_source
from embedrank.jsonline import parse_json_line
from embedrank.train import synth_prompts as P

Generate = Callable[[list[str]], list[str]]
FALSE_NEGATIVE_RATIO = 0.95


# --------------------------------------------------------------------------- JSON parsing


def parse_json(text: str, required: Sequence[str]) -> dict | None:
    """The first JSON object in ``text`` holding every ``required`` key with a non-empty string
    value (code fences and surrounding chatter are ignored); None when there is none."""
    if not isinstance(text, str):
        return None
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and all(isinstance(obj.get(k), str) and obj[k].strip()
                                         for k in required):
            return {k: (v.strip() if isinstance(v, str) else v) for k, v in obj.items()}
        start = text.find("{", start + 1)
    return None


def _norm_choice(value: str, allowed: Sequence[str]) -> str | None:
    key = value.strip().lower().replace(" ", "_").replace("-", "_")
    return key if key in allowed else None


def parse_config(text: str) -> dict | None:
    obj = parse_json(text, P.CONFIG_KEYS)
    if obj is None:
        return None
    qtype = _norm_choice(obj["Question_Type"], tuple(P.QUESTION_TYPES))
    level = _norm_choice(obj["Difficulty"], P.DIFFICULTIES)
    if qtype is None or level is None:
        return None
    return {"character": obj["Character"], "question_type": qtype, "difficulty": level}


# --------------------------------------------------------------------------- pipeline


@dataclass
class Pair:
    query: str
    pos: str
    neg: list[str]
    instruction: str | None
    meta: dict

    def row(self) -> dict:
        row = {"query": self.query, "pos": [self.pos], "neg": self.neg}
        if self.instruction is not None:
            row["instruction"] = self.instruction
        return {**row, **self.meta}


def _candidate_personas(passages, personas, encoder, rng) -> list[list[str]]:
    k = min(P.TOP_PERSONAS, len(personas))
    if encoder is None:
        return [rng.sample(personas, k) for _ in passages]
    sims = (encoder.embed_queries(passages, P.PERSONA_INSTRUCTION)
            @ encoder.embed_documents(personas).T)
    return [[personas[j] for j in np.argsort(-row, kind="stable")[:k]] for row in sims]


def _retrieval_pairs(passages, personas, generate, encoder, language, rng, stats) -> list[Pair]:
    if not personas:
        raise InputError("the retrieval task needs --personas (one persona per line or JSONL "
                         "with 'persona')")
    candidates = _candidate_personas(passages, personas, encoder, rng)
    configs = [parse_config(t) for t in
               generate([P.config_prompt(p, c) for p, c in zip(passages, candidates, strict=True)])]
    stats["bad_config"] += sum(c is None for c in configs)
    todo = [(p, c, rng.choice(P.QUERY_LENGTHS))
            for p, c in zip(passages, configs, strict=True) if c]
    prompts = [P.query_prompt(p, c["character"], c["question_type"], c["difficulty"], n, language)
               for p, c, n in todo]
    pairs = []
    texts = generate(prompts) if prompts else []
    for (passage, config, length), text in zip(todo, texts, strict=True):
        obj = parse_json(text, P.QUERY_KEYS)
        if obj is None:
            stats["bad_query"] += 1
            continue
        pairs.append(Pair(obj["Query"], passage, [], None, {**config, "length": length}))
    return pairs


def _task_pairs(task, passages, generate, language, stats) -> list[Pair]:
    keys = P.TASK_PROMPTS[task][1]
    instruction = P.TASK_INSTRUCTIONS[task]
    pairs = []
    for passage, text in zip(passages, generate([P.task_prompt(task, p, language)
                                                 for p in passages]), strict=True):
        obj = parse_json(text, keys)
        if obj is None:
            stats["bad_generation"] += 1
        elif task == "bitext":
            pairs.append(Pair(passage, obj["translation"], [], instruction,
                              {"language": language}))
        elif task == "sts":
            levels = {k: P.STS_LEVELS[k] for k in keys}
            pairs.append(Pair(passage, obj["paraphrase"], [obj["unrelated"]], instruction,
                              {"related": obj["related"], "levels": levels}))
        else:  # classification: text -> label description
            pairs.append(Pair(passage, f"{obj['label']}: {obj['description']}", [], instruction,
                              {"label": obj["label"]}))
    return pairs


def _filter_and_mine(pairs: list[Pair], pool: list[str], encoder, min_cosine: float,
                     negatives: int, rng: random.Random, stats: Counter) -> list[Pair]:
    if encoder is None:
        for pair in pairs:
            options = [t for t in pool if t != pair.pos and t not in pair.neg]
            pair.neg += rng.sample(options, min(negatives, len(options)))
        return pairs
    index = {t: i for i, t in enumerate(pool)}
    docs = encoder.embed_documents(pool)
    kept = []
    for instruction in {p.instruction for p in pairs}:
        group = [p for p in pairs if p.instruction == instruction]
        sims = encoder.embed_queries([p.query for p in group], instruction) @ docs.T
        for pair, row in zip(group, sims, strict=True):
            pos_score = float(row[index[pair.pos]])
            if pos_score <= min_cosine:
                stats["below_min_cosine"] += 1
                continue
            pair.meta["cosine"] = round(pos_score, 4)
            target = len(pair.neg) + negatives
            for j in np.argsort(-row, kind="stable"):
                if len(pair.neg) >= target:
                    break
                if pool[j] != pair.pos and pool[j] not in pair.neg \
                        and row[j] < FALSE_NEGATIVE_RATIO * pos_score:
                    pair.neg.append(pool[j])
            kept.append(pair)
    return kept


def synthesize(passages: Sequence[str], generate: Generate, *, task: str = "retrieval",
               personas: Sequence[str] = (), encoder=None, min_cosine: float = 0.7,
               language: str = "English", negatives: int = 3,
               seed: int = 0) -> tuple[list[dict], dict[str, int]]:
    """Training rows ``{"query","pos","neg","instruction"?, ...meta}`` and counts."""
    if task != "retrieval" and task not in P.TASK_PROMPTS:
        raise InputError(f"unknown task {task!r}: retrieval, {', '.join(P.TASK_PROMPTS)}")
    passages = list(dict.fromkeys(passages))
    rng = random.Random(seed)
    stats: Counter = Counter(passages=len(passages))
    if task == "retrieval":
        pairs = _retrieval_pairs(passages, list(personas), generate, encoder, language, rng, stats)
    else:
        pairs = _task_pairs(task, passages, generate, language, stats)
    stats["generated"] = len(pairs)
    pool = list(dict.fromkeys([*passages, *(p.pos for p in pairs)]))
    pairs = _filter_and_mine(pairs, pool, encoder, min_cosine, negatives, rng, stats)
    stats["kept"] = len(pairs)
    stats["skipped"] = stats["passages"] - stats["kept"]
    for key in ("bad_config", "bad_query", "bad_generation", "below_min_cosine"):
        stats.setdefault(key, 0)
    return [{**p.row(), "task": task} for p in pairs], dict(stats)


# --------------------------------------------------------------------------- models and files


class HFGenerator:
    """Greedy batched generation with any local causal LM (chat template when it has one)."""

    def __init__(self, src: str, *, gguf_file: str | None = None, device: str | None = None,
                 max_new_tokens: int = 256, batch_size: int = 8, progress: bool = True) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        check_source(src, hint="give --llm a local model directory")  # at once, no hub retries
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        kw = {"gguf_file": gguf_file} if gguf_file else {}
        self.tok = AutoTokenizer.from_pretrained(src, **kw)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        weights = kw or {"use_safetensors": True}  # never unpickle: GGUF or safetensors only
        self.model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **weights)
        self.model.to(self.device).eval()
        self.max_new_tokens, self.batch_size, self.progress = max_new_tokens, batch_size, progress

    def _chat(self, prompt: str) -> str:
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template([{"role": "user", "content": prompt}],
                                                tokenize=False, add_generation_prompt=True)
        return prompt

    def __call__(self, prompts: list[str]) -> list[str]:
        import torch
        from tqdm.auto import tqdm

        out = []
        starts = range(0, len(prompts), self.batch_size)
        for start in tqdm(starts, desc="generate", disable=not self.progress):
            texts = [self._chat(p) for p in prompts[start:start + self.batch_size]]
            enc = self.tok(texts, return_tensors="pt", padding=True,
                           add_special_tokens=False).to(self.device)
            with torch.no_grad():
                ids = self.model.generate(**enc, max_new_tokens=self.max_new_tokens,
                                          do_sample=False, pad_token_id=self.tok.pad_token_id)
            out += self.tok.batch_decode(ids[:, enc["input_ids"].shape[1]:],
                                         skip_special_tokens=True)
        return out


class TorchEncoder:
    """The encoder interface over a torch :class:`Embedder` checkpoint (unit vectors, numpy)."""

    def __init__(self, src: str, device: str | None = None, batch_size: int = 32) -> None:
        from embedrank.train.modeling import Embedder

        self.model = Embedder.from_pretrained(src, device=device)
        self.batch_size = batch_size

    def embed_queries(self, texts: Sequence[str], instruction: str | None = None) -> np.ndarray:
        from embedrank.train.evaluate import embed_queries

        queries = {str(i): (t, instruction) for i, t in enumerate(texts)}
        return embed_queries(self.model, queries, self.batch_size).numpy()

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        from embedrank.train.evaluate import _encode

        seqs = self.model.tokenize_documents(list(texts))
        return _encode(self.model, seqs, self.batch_size).numpy()


def load_encoder(src: str, device: str | None = None):
    """An exported model dir (``embedrank.json``) runs on ONNX Runtime, anything else on torch."""
    if (Path(src) / "embedrank.json").is_file():
        from embedrank.runtime import Embedder

        return Embedder.load(src, device=device or "cpu")
    return TorchEncoder(src, device)


def read_texts(path: str | Path, key: str) -> list[str]:
    """JSONL rows with ``key`` (BEIR corpus: ``title`` + ``text``) or one text per line."""
    texts = []
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            if not line.startswith("{"):
                texts.append(line)
                continue
            try:
                obj = parse_json_line(line)
                text = obj[key]
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{path}:{lineno}: expected a JSON object with {key!r} or a "
                                 "plain text line") from None
            title = obj.get("title") or ""
            texts.append(f"{title}\n{text}".strip() if title else str(text))
    if not texts:
        raise InputError(f"{path} holds no texts")
    return texts


@dataclass
class SynthConfig:
    llm: str
    corpus: str
    out: str
    personas: str | None = None
    gguf_file: str | None = None
    embedder: str | None = None
    min_cosine: float = 0.7
    task: str = "retrieval"
    language: str = "English"
    negatives: int = 3
    batch_size: int = 8
    max_new_tokens: int = 256
    limit: int | None = None
    seed: int = 0
    device: str | None = None


def run_synth(cfg: SynthConfig, generate: Generate | None = None, encoder=None) -> dict[str, int]:
    """Read files, synthesize, write ``cfg.out``; returns the counts (also in
    ``<out>.stats.json``); every LLM completion goes to ``<out>.raw.jsonl``."""
    passages = read_texts(cfg.corpus, "text")[:cfg.limit]
    personas = read_texts(cfg.personas, "persona") if cfg.personas else []
    if encoder is None and cfg.embedder:
        encoder = load_encoder(cfg.embedder, cfg.device)
    if generate is None:
        generate = HFGenerator(cfg.llm, gguf_file=cfg.gguf_file, device=cfg.device,
                               max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    generate = _Recorder(generate)
    rows, stats = synthesize(passages, generate, task=cfg.task, personas=personas,
                             encoder=encoder, min_cosine=cfg.min_cosine, language=cfg.language,
                             negatives=cfg.negatives, seed=cfg.seed)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    stats_path = out.with_name(out.name + ".stats.json")
    stats_path.write_text(json.dumps({"config": asdict(cfg), **stats}, indent=2))
    with out.with_name(out.name + ".raw.jsonl").open("w", encoding="utf-8") as fh:
        for row in generate.rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return stats


class _Recorder:
    """Passes prompts to the LLM and keeps every completion (``<out>.raw.jsonl``: what the LLM
    answered, parsed or not, to see why completions were skipped)."""

    def __init__(self, generate: Generate) -> None:
        self.generate = generate
        self.rows: list[dict] = []

    def __call__(self, prompts: list[str]) -> list[str]:
        texts = self.generate(prompts)
        self.rows += [{"prompt": p, "completion": t} for p, t in zip(prompts, texts, strict=True)]
        return texts
