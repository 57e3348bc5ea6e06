"""Training data: both JSONL forms, line-numbered errors, deterministic batches, eval sets."""

from __future__ import annotations

import json

import pytest

from embedrank.errors import InputError
from embedrank.train.data import Batcher, EvalSet, Example, load_examples, text_id


def _write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_both_forms_and_instruction(tmp_path):
    path = _write(tmp_path / "d.jsonl", [
        {"query": "q1", "pos": ["a", "b"], "neg": ["c"], "instruction": "Find it"},
        "",
        {"query": "q2", "response": "r", "rejected_response": ["x", "y"], "extra": 1},
        {"query": "q3", "pos": "only", "neg": "one"},
        {"query": "q4", "response": ["r1"]},
    ])
    assert load_examples(path) == [
        Example("q1", ("a", "b"), ("c",), "Find it"),
        Example("q2", ("r",), ("x", "y"), None),
        Example("q3", ("only",), ("one",), None),
        Example("q4", ("r1",), (), None),
    ]


@pytest.mark.parametrize("bad, reason", [
    ("{not json", "Expecting"),
    ('["a list"]', "JSON object"),
    ('{"pos": ["a"]}', "'query'"),
    ('{"query": "q"}', "missing 'pos'"),
    ('{"query": "q", "pos": []}', "empty list"),
    ('{"query": "q", "pos": ["a", 3]}', "'pos' must be"),
    ('{"query": "q", "pos": ["a"], "neg": [""]}', "'neg' must be"),
    ('{"query": "q", "response": "a", "rejected_response": [1]}', "'rejected_response'"),
    ('{"query": "q", "pos": ["a"], "response": "b"}', "either"),
    ('{"query": "q", "pos": ["a"], "instruction": 5}', "'instruction'"),
])
def test_bad_line_reports_its_number(tmp_path, bad, reason):
    path = _write(tmp_path / "d.jsonl", [{"query": "ok", "pos": ["a"]}, "", bad])
    with pytest.raises(InputError, match=rf"d\.jsonl:3: .*{reason}"):
        load_examples(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="no examples"):
        load_examples(_write(tmp_path / "e.jsonl", [""]))


def test_batcher_is_deterministic_and_fills_negatives():
    examples = [Example(f"q{i}", (f"p{i}",), (f"n{i}",) if i % 2 else ()) for i in range(10)]
    batcher = Batcher(examples, batch_size=4, negatives=2, seed=3)
    assert len(batcher) == 3
    first = [batcher.batch(e, b) for e in range(2) for b in range(3)]
    again = Batcher(examples, batch_size=4, negatives=2, seed=3)
    assert first == [again.batch(e, b) for e in range(2) for b in range(3)]
    stream = again.stream(start=4)
    assert next(stream) == first[4]  # resuming mid-stream sees the same batches
    for group in (g for batch in first for g in batch):
        i = int(group.query[1:])
        assert len(group.negs) == 2 and len(set(group.negs)) == 2
        assert group.pos == f"p{i}" and group.pos not in group.negs
        if i % 2:
            assert f"n{i}" in group.negs  # own hard negative first
    assert sum(len(b) for b in first[:3]) == 10  # one epoch covers every example once


def test_batcher_refuses_too_few_documents():
    with pytest.raises(InputError, match="lower --negatives"):
        Batcher([Example("q", ("p",))], 1, 2).batch(0, 0)


def test_eval_set_and_text_ids():
    data = EvalSet.from_examples([Example("q", ("a",), ("b",)), Example("r", ("b",), ("a", "c"))])
    assert len(data.corpus) == 3 and list(data.queries) == ["q0", "q1"]
    assert data.qrels["q0"] == {f"d{text_id('a'):016x}": 1}
    assert text_id("a") == text_id("a") != text_id("b") and 0 <= text_id("a") < 2**63
