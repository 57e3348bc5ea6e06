"""benchmarks/debian_beir.py on a hand-written package index: parsing, deduplication, the split
by source package, and the files it writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PACKAGES = """\
Package: libfoo1
Source: foo (1.2-3)
Description: foo parsing library
Description-md5: aaa

Package: libfoo-dev
Source: foo
Description: foo parsing library - development files
Description-md5: bbb

Package: foo-tools
Source: foo
Description: tools for foo files
Description-md5: aaa

Package: bar
Description: bar game
Description-md5: ccc

Package: bar
Description: bar game (a second record of the same package is ignored)
Description-md5: ccc

Package: nodesc
Description: synopsis only
Description-md5: eee
"""
PACKAGES += "".join(f"""
Package: old{i}
Source: src{i}
Description: transitional package
Description-md5: t{i}
""" for i in range(5))
PACKAGES += "".join(f"""
Package: tool{i}
Description: tool number {i}
 Tool {i} does one thing
 .
 and does it  well.
""" for i in range(12))

TRANSLATIONS = """\
Package: libfoo1
Description-md5: aaa
Description-en: foo parsing library
 Foo reads foo files.
 .
 It is fast.

Package: libfoo-dev
Description-md5: bbb
Description-en: foo parsing library - development files
 Foo reads foo files. This package holds the headers.

Package: bar
Description-md5: ccc
Description-en: bar game
 Bar is a game.
""" + "".join(f"""
Package: old{i}
Description-md5: t{i}
Description-en: transitional package
 This package can be removed ({i}).
""" for i in range(5))


@pytest.fixture(scope="module")
def conv():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import debian_beir
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return debian_beir


def test_read_index(conv):
    recs = {r["package"]: r for r in conv.read_index(PACKAGES, [TRANSLATIONS])}
    assert recs["libfoo1"] == {"package": "libfoo1", "source": "foo",
                               "synopsis": "foo parsing library",
                               "text": "Foo reads foo files.\nIt is fast."}
    assert recs["foo-tools"]["text"] == recs["libfoo1"]["text"]  # same md5, same description
    assert recs["bar"]["synopsis"] == "bar game" and recs["bar"]["source"] == "bar"
    assert recs["nodesc"]["text"] == ""  # no translation, no inline long description
    assert recs["tool3"]["text"] == "Tool 3 does one thing\nand does it well."  # inline, collapsed
    assert len(recs) == 1 + 1 + 1 + 1 + 1 + 5 + 12


def test_build_dedups_drops_generic_and_never_splits_a_source(conv):
    data = conv.build(conv.read_index(PACKAGES, [TRANSLATIONS]), test_queries=4, seed=0,
                      max_sources=3, max_unit=50)
    assert data["generic"] == 1  # "transitional package": 5 source packages
    assert "transitional package" not in data["queries"].values()
    # libfoo1 and foo-tools share one document; 3 foo + bar + 5 old + 12 tools descriptions
    assert len(data["docs"]) == 2 + 1 + 5 + 12
    assert data["straddling"] == 0 and len(data["split"]["test"]) >= 4
    foo = {q for q, t in data["queries"].items() if t.startswith(("foo", "tools for foo"))}
    assert foo <= set(data["split"]["test"]) or not foo & set(data["split"]["test"])
    assert set(data["split"]["test"]).isdisjoint(data["split"]["train"])
    again = conv.build(conv.read_index(PACKAGES, [TRANSLATIONS]), 4, 0, 3, 50)
    assert again["split"] == data["split"]  # seeded


def test_write_beir_and_train_files(conv, tmp_path):
    data = conv.build(conv.read_index(PACKAGES, [TRANSLATIONS]), 4, 0, 3, 50)
    stats = conv.write(data, tmp_path)
    assert stats["documents"] == len(data["docs"]) and stats["sources_in_both_splits"] == 0
    from embedrank.beir import load_beir
    from embedrank.train.data import load_examples

    corpus, queries, qrels = load_beir(tmp_path, "test")
    assert len(corpus) == len(data["docs"]) and set(qrels) == set(data["split"]["test"])
    train = load_examples(tmp_path / "train.jsonl")
    assert len(train) == stats["train_queries"] and all(e.pos for e in train)
    assert json.loads((tmp_path / "stats.json").read_text()) == stats
