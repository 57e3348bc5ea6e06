"""ChatterBot -> BEIR conversion: counts on a hand-made corpus and on the real package."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path

import pytest

from embedrank.beir import load_beir
from embedrank.datasets import chatterbot_data_dir, chatterbot_to_beir, stable_id
from embedrank.errors import InputError

pytest.importorskip("yaml", reason="pyyaml is needed by the converter")

A_YML = """\
categories: [ai]
conversations:
- - What is AI?
  - A field of science.
- - What is AI?
  - Machines that think.
- - Define AI
  - A field of science.
- - yes
  - 22
- - Lonely line
- Just a string, not a conversation
- - What is AI?
  - A field of science.
"""
B_YML = """\
conversations:
- - Hello
  - Hi
  - How are you?
"""


@pytest.fixture()
def yaml_dir(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.yml").write_text(A_YML)
    (src / "b.yml").write_text(B_YML)
    return src


def _all_qrels(out: Path) -> tuple[dict, dict, dict]:
    corpus, test_q, test = load_beir(out, "test")
    _, train_q, train = load_beir(out, "train")
    assert not test_q.keys() & train_q.keys()  # a query is in one split only
    return corpus, {**test_q, **train_q}, {**test, **train}


def test_counts_and_dedup(yaml_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "beir"
    counts = chatterbot_to_beir(out, test_fraction=0.5, data_dir=yaml_dir)
    assert counts == {
        "files": 2,
        "conversations": 8,  # 7 entries in a.yml + 1 in b.yml
        "skipped": 2,  # "Lonely line" (one line) and the plain string
        "queries": 4,  # What is AI? / Define AI / yes / Hello
        "docs": 4,  # field of science / machines / 22 / "Hi\nHow are you?"
        "qrels": 5,  # AI->field, AI->machines, Define->field, yes->22, Hello->Hi...; dup pair once
        "test_queries": 2,  # round(4 * 0.5)
        "train_queries": 2,
        "test_qrels": counts["test_qrels"],
        "train_qrels": counts["train_qrels"],
    }
    assert counts["test_qrels"] + counts["train_qrels"] == 5

    corpus, queries, qrels = _all_qrels(out)
    ai, define = stable_id("q", "What is AI?"), stable_id("q", "Define AI")
    science = stable_id("d", "A field of science.")
    assert qrels[ai] == {science: 1, stable_id("d", "Machines that think."): 1}
    assert qrels[define] == {science: 1}  # identical answers share one doc id
    assert queries[stable_id("q", "yes")] == "yes"  # not YAML's boolean True
    assert corpus[stable_id("d", "22")]["text"] == "22"
    assert corpus[stable_id("d", "Hi\nHow are you?")] == {"title": "", "text": "Hi\nHow are you?"}


def test_stable_ids() -> None:
    digest = hashlib.sha1(b"What is AI?").hexdigest()[:16]
    assert stable_id("q", "What is AI?") == "q" + digest


def test_split_is_deterministic_and_seeded(yaml_dir: Path, tmp_path: Path) -> None:
    def test_split(seed: int, name: str) -> str:
        chatterbot_to_beir(tmp_path / name, test_fraction=0.5, seed=seed, data_dir=yaml_dir)
        return (tmp_path / name / "qrels" / "test.tsv").read_text()

    assert test_split(0, "a") == test_split(0, "b")
    assert len({test_split(seed, f"s{seed}") for seed in range(8)}) > 1


@pytest.mark.parametrize(("fraction", "n_test"), [(0.0, 0), (1.0, 4)])
def test_split_extremes(yaml_dir: Path, tmp_path: Path, fraction: float, n_test: int) -> None:
    counts = chatterbot_to_beir(tmp_path / "o", test_fraction=fraction, data_dir=yaml_dir)
    assert counts["test_queries"] == n_test
    assert counts["train_queries"] == 4 - n_test


def test_bad_inputs(yaml_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="test_fraction"):
        chatterbot_to_beir(tmp_path / "o", test_fraction=1.5, data_dir=yaml_dir)
    with pytest.raises(InputError, match="no .yml files"):
        chatterbot_to_beir(tmp_path / "o", data_dir=tmp_path / "o")
    (yaml_dir / "c.yml").write_text("conversations:\n- - a\n  - [unclosed\n")
    with pytest.raises(InputError, match=r"c\.yml: not valid YAML"):
        chatterbot_to_beir(tmp_path / "o", data_dir=yaml_dir)


def _require_corpus() -> None:
    if importlib.util.find_spec("chatterbot_corpus") is not None:
        return
    if os.environ.get("CI"):
        pytest.fail("chatterbot-corpus==1.3.3 must be installed in CI")
    pytest.skip("chatterbot-corpus is not installed (pip install chatterbot-corpus==1.3.3)")


def test_unknown_language() -> None:
    _require_corpus()
    with pytest.raises(InputError, match="available: .*english"):
        chatterbot_data_dir("klingon")


def test_real_english_corpus(tmp_path: Path) -> None:
    _require_corpus()
    counts = chatterbot_to_beir(tmp_path, language="english", test_fraction=0.2, seed=0)
    if importlib.metadata.version("chatterbot-corpus") == "1.3.3":
        # 21 files, 2026 entries; trivia.yml holds one plain string instead of a list
        assert counts == {
            "files": 21, "conversations": 2026, "skipped": 1, "queries": 748, "docs": 876,
            "qrels": 898, "test_queries": 150, "train_queries": 598,
            "test_qrels": counts["test_qrels"], "train_qrels": 898 - counts["test_qrels"],
        }  # fmt: skip
    corpus, queries, qrels = _all_qrels(tmp_path)
    assert len(queries) == counts["queries"]
    assert sum(len(d) for d in qrels.values()) == counts["qrels"]
    for qid, docs in qrels.items():
        assert qid in queries
        assert all(docid in corpus and rel == 1 for docid, rel in docs.items())
    assert all(text.strip() for text in queries.values())
    assert all(doc["text"].strip() for doc in corpus.values())
