"""Evaluation data on disk: BEIR folders, the passage text BEIR embeds, and TREC run files.

Torch-free and shared by every side that evaluates (training-time eval in PyTorch, ``embedrank
eval`` over the ONNX runtime in Qdrant), so both score the very same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from embedrank.errors import InputError
from embedrank.jsonline import parse_json_line
from embedrank.metrics import Run, rank


def document_text(doc: Mapping[str, str]) -> str:
    """The passage BEIR embeds: ``title + " " + text`` stripped, or the text when no title."""
    title = doc.get("title") or ""
    return (title + " " + doc["text"]).strip() if title else doc["text"].strip()


def passages(corpus: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """``{docid: passage}`` for every document with some text (empty ones cannot be embedded)."""
    return {docid: text for docid, doc in corpus.items() if (text := document_text(doc))}


# ---------------------------------------------------------------- TREC run files


def _check_token(kind: str, value: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise InputError(
            f"{kind} {value!r} is empty or contains whitespace, which the TREC run format "
            "cannot hold; rename it"
        )


def write_trec_run(run: Run, path: str | Path, tag: str = "embedrank") -> None:
    """Write ``qid Q0 docid rank score tag`` lines, each query in trec_eval order."""
    _check_token("run tag", tag)
    lines = []
    for qid, scores in run.items():
        _check_token("query id", qid)
        for i, docid in enumerate(rank(scores), start=1):
            _check_token("doc id", docid)
            lines.append(f"{qid} Q0 {docid} {i} {float(scores[docid])!r} {tag}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


def read_trec_run(path: str | Path) -> dict[str, dict[str, float]]:
    """Read a TREC run file into ``{qid: {docid: score}}`` (the rank column is ignored)."""
    run: dict[str, dict[str, float]] = {}
    for lineno, line in _lines(Path(path)):
        fields = line.split()
        if len(fields) != 6:
            raise InputError(
                f"{path}:{lineno}: expected 6 fields 'qid Q0 docid rank score tag', "
                f"got {len(fields)}"
            )
        qid, _, docid, _, score, _ = fields
        try:
            value = float(score)
        except ValueError:
            raise InputError(f"{path}:{lineno}: score {score!r} is not a number") from None
        if math.isnan(value):
            raise InputError(f"{path}:{lineno}: score is NaN")
        docs = run.setdefault(qid, {})
        if docid in docs:
            raise InputError(f"{path}:{lineno}: doc {docid!r} listed twice for query {qid!r}")
        docs[docid] = value
    return run


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; a missing file is an InputError."""
    if not path.is_file():
        raise InputError(f"{path} not found")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                yield lineno, line.rstrip("\n")


# ---------------------------------------------------------------- BEIR folders


def _read_jsonl(path: Path, fields: tuple[str, ...]) -> Iterable[tuple[int, dict]]:
    for lineno, line in _lines(path):
        try:
            obj = parse_json_line(line)
        except InputError as exc:
            raise InputError(f"{path}:{lineno}: {exc}") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object")
        for f in fields:
            if f in obj and not isinstance(obj[f], str):
                raise InputError(f"{path}:{lineno}: field {f!r} must be a string")
        if not obj.get("_id"):
            raise InputError(f"{path}:{lineno}: missing '_id'")
        if "text" not in obj:
            raise InputError(f"{path}:{lineno}: missing 'text'")
        yield lineno, obj


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in _lines(path):
        fields = line.split("\t")
        if len(fields) != 3:
            fields = line.split()
        if lineno == 1 and [f.strip() for f in fields] == ["query-id", "corpus-id", "score"]:
            continue
        if len(fields) != 3:
            raise InputError(
                f"{path}:{lineno}: expected 3 tab-separated fields "
                f"'query-id corpus-id score', got {len(fields)}"
            )
        qid, docid, score = (f.strip() for f in fields)
        try:
            rel = int(score)
        except ValueError:
            raise InputError(f"{path}:{lineno}: score {score!r} is not an integer") from None
        qrels.setdefault(qid, {})[docid] = rel
    return qrels


def load_beir(
    folder: str | Path, split: str = "test"
) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    """Read a BEIR dataset folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

    Returns ``(corpus {id: {"title", "text"}}, queries {id: text}, qrels)``. As in BEIR's
    ``GenericDataLoader``, queries are restricted to those with qrels in the split.
    """
    folder = Path(folder)
    corpus: dict[str, dict[str, str]] = {}
    path = folder / "corpus.jsonl"
    for lineno, obj in _read_jsonl(path, ("_id", "title", "text")):
        if obj["_id"] in corpus:
            raise InputError(f"{path}:{lineno}: duplicate _id {obj['_id']!r}")
        corpus[obj["_id"]] = {"title": obj.get("title") or "", "text": obj["text"]}
    all_queries: dict[str, str] = {}
    path = folder / "queries.jsonl"
    for lineno, obj in _read_jsonl(path, ("_id", "text")):
        if obj["_id"] in all_queries:
            raise InputError(f"{path}:{lineno}: duplicate _id {obj['_id']!r}")
        all_queries[obj["_id"]] = obj["text"]
    qrels_path = folder / "qrels" / f"{split}.tsv"
    qrels = _read_qrels(qrels_path)
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise InputError(
            f"{qrels_path}: {len(missing)} query ids have no entry in queries.jsonl "
            f"(first: {missing[:3]}); the files do not belong together"
        )
    queries = {q: all_queries[q] for q in qrels}
    return corpus, queries, qrels
