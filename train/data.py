"""Training data: JSONL loading, deterministic batching with hard negatives, eval sets.

One example per line, either ours::

    {"query": "...", "pos": ["..."], "neg": ["...", ...], "instruction": "..."}

or the official Qwen3-Embedding fine-tuning form::

    {"query": "...", "response": "...", "rejected_response": ["...", ...]}

``pos``/``response`` may be a string or a non-empty list; ``neg``/``rejected_response`` a string,
a list, or absent; ``instruction`` is optional (``None`` = the model's default). Unknown keys are
ignored. A bad line raises :class:`InputError` naming the file and the line number.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from embedrank.beir import document_text, load_beir
from embedrank.errors import InputError
from embedrank.jsonline import parse_json_line


@dataclass(frozen=True)
class Example:
    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...] = ()
    instruction: str | None = None


def text_id(text: str) -> int:
    """A stable 63-bit id of a document text (same text, same id): the loss's ``pos_ids``."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") >> 1


def _texts(value, field: str, required: bool) -> tuple[str, ...]:
    if value is None:
        if required:
            raise ValueError(f"missing {field!r}")
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) and t.strip() for t in items):
        raise ValueError(f"{field!r} must be a non-empty string or a list of non-empty strings")
    if required and not items:
        raise ValueError(f"{field!r} is an empty list; give at least one positive")
    return tuple(items)


def parse_example(obj) -> Example:
    """One decoded JSON line -> :class:`Example` (ValueError with the reason otherwise)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    query = obj.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ValueError("'query' must be a non-empty string")
    official = "response" in obj
    if official and "pos" in obj:
        raise ValueError("give either 'pos'/'neg' or 'response'/'rejected_response', not both")
    pos = _texts(obj.get("response" if official else "pos"), "response" if official else "pos",
                 True)
    neg = _texts(obj.get("rejected_response" if official else "neg"),
                 "rejected_response" if official else "neg", False)
    instruction = obj.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise ValueError("'instruction' must be a string")
    return Example(query, pos, neg, instruction)


def _load_beir(folder: Path, split: str):
    corpus, queries, qrels = load_beir(folder, split)
    return {d: document_text(doc) for d, doc in corpus.items()}, queries, qrels


def beir_examples(folder: str | Path, split: str = "train") -> list[Example]:
    """A BEIR folder's split as examples: each query with its relevant documents (no negatives:
    the batcher draws random ones)."""
    corpus, queries, qrels = _load_beir(Path(folder), split)
    examples = [Example(queries[q], tuple(corpus[d] for d, rel in sorted(docs.items()) if rel > 0))
                for q, docs in qrels.items()]
    return [e for e in examples if e.pos]


def load_examples(path: str | Path, split: str = "train") -> list[Example]:
    """Read a JSONL file; blank lines are skipped, anything else must be a valid example.

    A directory is read as a BEIR folder (``corpus.jsonl``, ``queries.jsonl``,
    ``qrels/<split>.tsv``), see :func:`beir_examples`."""
    path = Path(path)
    if path.is_dir():
        return beir_examples(path, split)
    if not path.is_file():
        raise InputError(f"data file {str(path)!r} not found")
    examples = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                examples.append(parse_example(parse_json_line(line)))
            except ValueError as exc:  # InputError is a ValueError
                raise InputError(f"{path}:{lineno}: {exc}. Expected "
                                 '{"query", "pos": [...], "neg": [...]} or '
                                 '{"query", "response", "rejected_response"}') from None
    if not examples:
        raise InputError(f"{path} holds no examples")
    return examples


# --------------------------------------------------------------------------- batching


@dataclass(frozen=True)
class Group:
    """One query with the positive drawn for this step and its K negatives."""

    query: str
    instruction: str | None
    pos: str
    negs: tuple[str, ...]


class Batcher:
    """Deterministic micro-batches: the order of epoch ``e`` and the draws of batch ``b`` depend
    only on ``(seed, e, b)``, so a resumed run sees exactly the batches it would have seen.

    Each group holds one positive and exactly ``negatives`` hard negatives: the example's own,
    sampled without replacement; when it has fewer, the rest are random documents of the
    dataset that are not among its positives.
    """

    def __init__(self, examples: Sequence[Example], batch_size: int, negatives: int,
                 seed: int = 0) -> None:
        if batch_size < 1 or negatives < 0:
            raise InputError(f"batch_size must be >= 1 and negatives >= 0, got {batch_size}, "
                             f"{negatives}")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.negatives = negatives
        self.seed = seed
        self.pool = sorted({t for e in self.examples for t in (*e.pos, *e.neg)})

    def __len__(self) -> int:
        """Micro-batches per epoch (the last, short one included)."""
        return -(-len(self.examples) // self.batch_size)

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(f"{self.seed}-order-{epoch}").shuffle(order)
        return order

    def _group(self, example: Example, rng: random.Random) -> Group:
        negs = rng.sample(example.neg, min(self.negatives, len(example.neg)))
        banned = set(example.pos) | set(negs)
        while len(negs) < self.negatives and len(self.pool) > len(banned):
            cand = rng.choice(self.pool)
            if cand not in banned:
                negs.append(cand)
                banned.add(cand)
        if len(negs) < self.negatives:
            raise InputError(f"the data holds too few distinct documents for {self.negatives} "
                             "negatives per query: lower --negatives")
        return Group(example.query, example.instruction, rng.choice(example.pos), tuple(negs))

    def batch(self, epoch: int, index: int) -> list[Group]:
        rows = self._order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        rng = random.Random(f"{self.seed}-draw-{epoch}-{index}")
        return [self._group(self.examples[i], rng) for i in rows]

    def stream(self, start: int = 0) -> Iterator[list[Group]]:
        """Micro-batches forever (epoch after epoch), skipping the first ``start``."""
        n = len(self)
        step = start
        while True:
            yield self.batch(step // n, step % n)
            step += 1


# --------------------------------------------------------------------------- eval sets


@dataclass(frozen=True)
class EvalSet:
    """Queries ranked against every document of the eval file (positives and negatives)."""

    queries: dict[str, tuple[str, str | None]]  # qid -> (text, instruction)
    corpus: dict[str, str]  # docid -> text
    qrels: dict[str, dict[str, int]]

    @classmethod
    def from_examples(cls, examples: Sequence[Example]) -> EvalSet:
        corpus = {f"d{text_id(t):016x}": t for e in examples for t in (*e.pos, *e.neg)}
        queries, qrels = {}, {}
        for i, e in enumerate(examples):
            qid = f"q{i}"
            queries[qid] = (e.query, e.instruction)
            qrels[qid] = {f"d{text_id(t):016x}": 1 for t in e.pos}
        return cls(queries, dict(sorted(corpus.items())), qrels)

    @classmethod
    def from_beir(cls, folder: str | Path, split: str = "test") -> EvalSet:
        """The split's queries ranked against the folder's whole corpus."""
        corpus, queries, qrels = _load_beir(Path(folder), split)
        return cls({q: (queries[q], None) for q in qrels}, corpus,
                   {q: dict(docs) for q, docs in qrels.items()})

    @classmethod
    def load(cls, path: str | Path) -> EvalSet:
        """A JSONL file (ranked against its own documents) or a BEIR folder (its test split)."""
        if Path(path).is_dir():
            return cls.from_beir(path)
        return cls.from_examples(load_examples(path))
