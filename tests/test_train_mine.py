"""Hard-negative mining: the selection rule on fixed scores, and `embedrank mine` end to end."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from click.testing import CliRunner

from embedrank.cli.main import main
from embedrank.errors import InputError
from embedrank.train.mine import pick_negatives

#                 0    1     2     3     4     5     6
SCORES = np.array([0.9, 0.95, 0.88, 0.50, 0.87, 0.10, 0.70])


def test_skips_positives_and_near_duplicates_keeps_rank_order():
    # positive 0 (0.9): ceiling 0.95 * 0.9 = 0.855 drops 1 (0.95), 2 (0.88) and 4 (0.87)
    got = pick_negatives(SCORES, [0], negatives=2, depth=2, max_ratio=0.95,
                         rng=random.Random(0))
    assert got == [6, 3]
    # without the ceiling the best non-positives come first
    assert pick_negatives(SCORES, [0], 3, 3, 10.0, random.Random(0)) == [1, 2, 4]


def test_draws_from_the_band_deterministically():
    picks = {tuple(pick_negatives(SCORES, [5], 2, 5, 10.0, random.Random(seed)))
             for seed in range(20)}
    assert len(picks) > 1  # a draw, not the top two every time
    for pick in picks:
        assert set(pick) <= {0, 1, 2, 4, 6} and list(pick) == sorted(pick, key=lambda j: -SCORES[j])
    assert pick_negatives(SCORES, [5], 2, 5, 10.0, random.Random(3)) == \
        pick_negatives(SCORES, [5], 2, 5, 10.0, random.Random(3))


def test_fewer_candidates_than_asked_and_bad_arguments():
    assert pick_negatives(SCORES, [1], 3, 6, 0.5, random.Random(0)) == [5]  # only 0.10 < 0.475
    # a positive scoring below zero sets no ceiling (a ratio of it would exclude everything)
    assert pick_negatives(SCORES - 0.95, [1], 2, 2, 0.95, random.Random(0)) == [0, 2]
    with pytest.raises(InputError):
        pick_negatives(SCORES, [0], 3, 2, 0.95, random.Random(0))


def _reference(scores, positives, depth, max_ratio):
    """The rule spelled out: walk the full ranking, skip positives and near-duplicates."""
    best = max(scores[p] for p in positives)
    ceiling = max_ratio * best if best > 0 else np.inf
    ranked = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
    return [j for j in ranked if j not in positives and scores[j] < ceiling][:depth]


@pytest.mark.parametrize("max_ratio", [0.95, 0.5, 10.0])
def test_matches_the_full_ranking_on_a_large_pool(max_ratio):
    # a compressed score range (an early checkpoint: most documents within 5% of the positive)
    # once made the selection walk tens of thousands of documents per query in Python
    rng = np.random.default_rng(0)
    scores = 0.9 + 0.1 * rng.random(20000)
    for positive in (int(np.argmax(scores)), 123, int(np.argmin(scores))):
        want = _reference(scores, [positive], 30, max_ratio)
        got = pick_negatives(scores, [positive], 30, 30, max_ratio, random.Random(0))
        assert got == want


ROWS = [
    {"query": "capital of france", "pos": ["Paris is the capital of France."]},
    {"query": "how do bees make honey", "pos": ["Bees turn flower nectar into honey."]},
    {"query": "who wrote hamlet", "pos": ["Hamlet is a tragedy by Shakespeare."],
     "neg": ["Goethe wrote Faust."]},
    {"query": "largest planet", "pos": ["Jupiter is the largest planet."],
     "instruction": "Given a question, retrieve the answer"},
    {"query": "speed of light", "pos": ["Light travels at about 300,000 km/s."]},
]


def test_mine_command_writes_training_lines(tiny_ckpt, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "mined.jsonl"
    args = ["mine", "--embedder", str(tiny_ckpt), "--data", str(data), "--out", str(out),
            "--negatives", "2", "--depth", "4", "--max-ratio", "10", "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"queries": 5, "pool": 6,
                                                                   "short": 0}
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    pool = {t for r in ROWS for t in (*r["pos"], *r.get("neg", []))}
    for row, line in zip(ROWS, lines, strict=True):
        assert line["query"] == row["query"] and line["pos"] == row["pos"]
        assert len(line["neg"]) == 2 and set(line["neg"]) <= pool - set(row["pos"])
        assert line.get("instruction") == row.get("instruction")
    CliRunner().invoke(main, [*args[:6], str(tmp_path / "again.jsonl"), *args[7:]])
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()  # seeded
