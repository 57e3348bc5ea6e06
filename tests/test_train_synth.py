"""Synthetic data: JSON parsing, the two-step retrieval recipe with a scripted LLM and a
bag-of-words encoder, the other task types, and a real (tiny, random) LLM whose garbage is
skipped and counted."""

from __future__ import annotations

import json
import re
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from embedrank.cli.main import main
from embedrank.errors import InputError
from embedrank.train import synth_prompts as P
from embedrank.train.data import Batcher, load_examples
from embedrank.train.synth import SynthConfig, parse_config, parse_json, run_synth, synthesize

PASSAGES = [
    "Bees collect nectar from flowers and turn it into honey inside the hive.",
    "The Eiffel Tower in Paris was finished in 1889 for the world fair.",
    "Photosynthesis lets green plants turn sunlight, water and carbon dioxide into sugar.",
    "BAD-CONFIG passage about volcanoes erupting lava and ash.",
    "BAD-QUERY passage about glaciers carving valleys slowly.",
    "LOW-COSINE passage about trains running on steel rails.",
]
PERSONAS = ["a beekeeper who sells honey at markets", "an architect visiting Paris towers",
            "a botanist studying green plants", "a geologist", "a railway engineer",
            "a retired teacher", "a chef"]


class BagOfWords:
    """Deterministic encoder: hashed word counts, L2-normalized."""

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(4096)
        for word in re.findall(r"[a-z]+", text.lower()):
            v[zlib.crc32(word.encode()) % 4096] += 1
        return v / max(np.linalg.norm(v), 1e-9)

    def embed_queries(self, texts, instruction=None):
        return np.stack([self._vec(t) for t in texts])

    def embed_documents(self, texts):
        return np.stack([self._vec(t) for t in texts])


def scripted_llm(seen: list[str]):
    """Answers config prompts with the first candidate, query prompts with passage words."""

    def generate(prompts: list[str]) -> list[str]:
        seen.extend(prompts)
        out = []
        for p in prompts:
            passage = p.split('"""')[1].strip()
            if "Candidate characters" in p:
                first = re.search(r"^1\. (.+)$", p, re.M).group(1)
                out.append("not json at all" if "BAD-CONFIG" in passage else
                           "Sure! ```json\n" + json.dumps({"Character": first,
                           "Question_Type": "Acquire Knowledge", "Difficulty": "University"})
                           + "\n```")
            elif "BAD-QUERY" in passage:
                out.append('{"Query": ""}')
            elif "LOW-COSINE" in passage:
                out.append('{"Query": "completely different words"}')
            elif "Take the role" in p:
                out.append(json.dumps({"Query": passage[:40]}) + " trailing chatter")
            elif "Translate" in p:
                out.append(json.dumps({"translation": passage.upper()}))
            elif "similarity" in p:
                out.append(json.dumps({"paraphrase": passage[:30], "related": "x y",
                                       "unrelated": "quantum chromodynamics"}))
            else:
                out.append(json.dumps({"label": "nature", "description": passage[:20]}))
        return out

    return generate


@pytest.mark.parametrize("text, expected", [
    ('{"Query": "a"}', {"Query": "a"}),
    ('```json\n{"Query": " spaced "}\n```', {"Query": "spaced"}),
    ('Here: {"other": 1} then {"Query": "b", "n": 2}.', {"Query": "b", "n": 2}),
    ('{"Query": {"nested": "x"}}', None),
    ('{"Query": ""}', None),
    ('{"Query": "truncated', None),
    ("", None),
    (None, None),
])
def test_parse_json(text, expected):
    assert parse_json(text, ("Query",)) == expected


def test_parse_config_normalizes_and_validates():
    ok = '{"Character": "c", "Question_Type": "Yes or No", "Difficulty": "PhD"}'
    assert parse_config(ok) == {"character": "c", "question_type": "yes_or_no",
                                "difficulty": "phd"}
    assert parse_config(ok.replace("Yes or No", "trivia")) is None
    assert parse_config(ok.replace("PhD", "kindergarten")) is None


def test_retrieval_two_steps_filter_and_negatives():
    seen: list[str] = []
    rows, stats = synthesize(PASSAGES, scripted_llm(seen), personas=PERSONAS,
                             encoder=BagOfWords(), min_cosine=0.5, negatives=2)
    assert stats == {"passages": 6, "bad_config": 1, "bad_query": 1, "bad_generation": 0,
                     "generated": 4,
                     "below_min_cosine": 1, "kept": 3, "skipped": 3}
    config_prompts = [p for p in seen if "Candidate characters" in p]
    assert len(config_prompts) == 6 and len(seen) == 6 + 5
    assert "1. a beekeeper" in config_prompts[0]  # top persona retrieved for the bee passage
    assert len(re.findall(r"^\d\. ", config_prompts[0], re.M)) == P.TOP_PERSONAS
    for row in rows:
        assert row["pos"][0] in PASSAGES and row["pos"][0] not in row["neg"]
        assert len(row["neg"]) == 2 and row["cosine"] > 0.5
        assert row["question_type"] == "acquire_knowledge" and row["difficulty"] == "university"
        assert row["length"] in P.QUERY_LENGTHS and "instruction" not in row
    query_prompt = next(p for p in seen if "Take the role" in p)
    assert "Language: English" in query_prompt and "university reader" in query_prompt


@pytest.mark.parametrize("task", ["bitext", "sts", "classification"])
def test_other_tasks(task):
    rows, stats = synthesize(PASSAGES[:3], scripted_llm([]), task=task, encoder=BagOfWords(),
                             min_cosine=-1.0, negatives=1, language="German")
    assert stats["kept"] == 3 and stats["bad_generation"] == 0
    for row in rows:
        assert row["instruction"] == P.TASK_INSTRUCTIONS[task] and row["task"] == task
        assert row["query"] in PASSAGES
    if task == "sts":
        assert all(r["neg"][0] == "quantum chromodynamics" and len(r["neg"]) == 2 for r in rows)
        assert rows[0]["levels"] == {"paraphrase": 5, "related": 3, "unrelated": 0}


def test_output_feeds_training_and_no_encoder_path(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "title": "", "text": t}) + "\n"
                              for i, t in enumerate(PASSAGES)))
    personas = tmp_path / "personas.txt"
    personas.write_text("\n".join(PERSONAS))
    cfg = SynthConfig(llm="unused", corpus=str(corpus), personas=str(personas),
                      out=str(tmp_path / "out.jsonl"), negatives=2)
    stats = run_synth(cfg, generate=scripted_llm([]))  # no encoder: no filter, random negatives
    assert stats["kept"] == 4 and stats["below_min_cosine"] == 0
    examples = load_examples(cfg.out)
    assert len(examples) == 4 and all(len(e.neg) == 2 for e in examples)
    assert Batcher(examples, 2, 2).batch(0, 0)
    assert json.loads((tmp_path / "out.jsonl.stats.json").read_text())["kept"] == 4


def test_retrieval_needs_personas():
    with pytest.raises(InputError, match="--personas"):
        synthesize(PASSAGES, scripted_llm([]))


def test_tiny_random_llm_output_is_skipped_and_counted(tiny_ckpt, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(PASSAGES[:3]))
    personas = tmp_path / "personas.jsonl"
    personas.write_text("".join(json.dumps({"persona": p}) + "\n" for p in PERSONAS))
    out = tmp_path / "synth.jsonl"
    res = CliRunner().invoke(main, [
        "synth", "--llm", str(tiny_ckpt), "--corpus", str(corpus), "--personas", str(personas),
        "--out", str(out), "--embedder", str(tiny_ckpt), "--max-new-tokens", "6",
        "--batch-size", "2", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    assert stats["passages"] == 3 and stats["kept"] == 0 and stats["bad_config"] == 3
    assert out.read_text() == ""
