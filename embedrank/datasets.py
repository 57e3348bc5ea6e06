"""Turn small public corpora into the BEIR folder layout that :func:`embedrank.beir.load_beir` reads.

``chatterbot_to_beir`` converts the ChatterBot corpus (pip ``chatterbot-corpus==1.3.3``,
BSD-3-Clause): each YAML conversation ``[line_1, line_2, ...]`` gives

* a query: ``line_1`` (the question);
* a relevant doc: ``line_2 .. line_n`` joined with newlines (the answer; several lines when
  the corpus lists alternative phrasings or a short dialogue continues).

Identical questions share one query id, identical answers share one doc id, so a query may have
several relevant docs and a doc may answer several queries. Ids are stable across runs and
machines: ``q``/``d`` + the first 16 hex digits of the SHA-1 of the text. The query set is split
into test/train with a seeded shuffle of the sorted query ids; corpus and queries files hold
everything, ``qrels/test.tsv`` and ``qrels/train.tsv`` the two halves (relevance 1).

Needs PyYAML (imported lazily). The corpus package is located with
``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from pathlib import Path
from typing import Any

from embedrank.errors import InputError, MissingDependencyError, require

CHATTERBOT_PACKAGE = "chatterbot_corpus"
CHATTERBOT_PIP = "chatterbot-corpus==1.3.3"
DATASETS_EXTRA = "datasets"  # the pip extra that should carry pyyaml + chatterbot-corpus


def stable_id(prefix: str, text: str) -> str:
    """``prefix`` + first 16 hex digits of SHA-1(text): same text, same id, everywhere."""
    return prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def chatterbot_data_dir(language: str = "english") -> Path:
    """The folder of YAML files for ``language`` inside the installed chatterbot-corpus."""
    spec = importlib.util.find_spec(CHATTERBOT_PACKAGE)  # locates, does not import
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the ChatterBot corpus is not installed: pip install '{CHATTERBOT_PIP}' "
            f"(or pip install 'embedrank[{DATASETS_EXTRA}]')"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    folder = data / language
    if not folder.is_dir():
        known = sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
        raise InputError(f"no ChatterBot corpus for language {language!r}; available: {known}")
    return folder


def _load_yaml(path: Path) -> Any:
    yaml = require("yaml", DATASETS_EXTRA)
    try:
        with path.open(encoding="utf-8") as fh:
            # BaseLoader keeps every scalar a string: "yes" stays "yes", "22" stays "22".
            return yaml.load(fh, Loader=yaml.BaseLoader)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc}); fix or remove the file") from None


def _conversations(path: Path) -> list[Any]:
    doc = _load_yaml(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("conversations", []), list):
        raise InputError(f"{path}: expected a mapping with a 'conversations' list")
    return doc.get("conversations", [])


def _as_pair(conversation: Any) -> tuple[str, str] | None:
    """(question, answer) or None when the entry is malformed (not a list of >= 2 strings)."""
    if not isinstance(conversation, list) or len(conversation) < 2:
        return None
    if not all(isinstance(line, str) and line.strip() for line in conversation):
        return None
    lines = [line.strip() for line in conversation]
    return lines[0], "\n".join(lines[1:])


def _split(qids: list[str], test_fraction: float, seed: int) -> set[str]:
    """The test query ids: a seeded shuffle of the sorted ids, first round(n * fraction)."""
    order = sorted(qids)
    random.Random(seed).shuffle(order)
    return set(order[: round(len(order) * test_fraction)])


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_qrels(path: Path, pairs: list[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, docid in pairs:
            fh.write(f"{qid}\t{docid}\t1\n")


def _intern(table: dict[str, str], prefix: str, text: str) -> str:
    """Id for ``text`` in ``table`` (text -> id, in first-seen order)."""
    if text not in table:
        table[text] = stable_id(prefix, text)
    return table[text]


def _check_unique(table: dict[str, str]) -> None:
    if len(set(table.values())) != len(table):
        raise InputError("two different texts got the same 16-hex-digit id; report this")


def chatterbot_to_beir(
    out_dir: str | Path,
    language: str = "english",
    test_fraction: float = 0.2,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> dict[str, int]:
    """Write the ChatterBot corpus of ``language`` as a BEIR folder in ``out_dir``.

    ``data_dir`` reads ``*.yml`` files from there instead of the installed package (tests).
    Returns counts: files, conversations, skipped (malformed entries), queries, docs, qrels,
    test_queries, train_queries, test_qrels, train_qrels.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise InputError(f"test_fraction must lie in [0, 1], got {test_fraction!r}")
    folder = Path(data_dir) if data_dir is not None else chatterbot_data_dir(language)
    files = sorted(folder.glob("*.yml")) + sorted(folder.glob("*.yaml"))
    if not files:
        raise InputError(f"no .yml files in {folder}")

    query_ids: dict[str, str] = {}  # text -> id, in first-seen order
    doc_ids: dict[str, str] = {}
    pairs: dict[tuple[str, str], None] = {}  # ordered set of (qid, docid)
    n_conv = n_skipped = 0
    for path in files:
        for conversation in _conversations(path):
            n_conv += 1
            pair = _as_pair(conversation)
            if pair is None:
                n_skipped += 1
                continue
            qid = _intern(query_ids, "q", pair[0])
            pairs[(qid, _intern(doc_ids, "d", pair[1]))] = None

    _check_unique(query_ids)
    _check_unique(doc_ids)
    out = Path(out_dir)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    _write_jsonl(
        out / "corpus.jsonl",
        [{"_id": i, "title": "", "text": t} for t, i in doc_ids.items()],
    )
    _write_jsonl(out / "queries.jsonl", [{"_id": i, "text": t} for t, i in query_ids.items()])
    test = _split(list(query_ids.values()), test_fraction, seed)
    test_pairs = [p for p in pairs if p[0] in test]
    train_pairs = [p for p in pairs if p[0] not in test]
    _write_qrels(out / "qrels" / "test.tsv", test_pairs)
    _write_qrels(out / "qrels" / "train.tsv", train_pairs)
    return {
        "files": len(files),
        "conversations": n_conv,
        "skipped": n_skipped,
        "queries": len(query_ids),
        "docs": len(doc_ids),
        "qrels": len(pairs),
        "test_queries": len(test),
        "train_queries": len(query_ids) - len(test),
        "test_qrels": len(test_pairs),
        "train_qrels": len(train_pairs),
    }
