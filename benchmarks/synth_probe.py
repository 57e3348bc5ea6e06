"""Can a small instruct LM write `embedrank synth` queries when its reply is started for it?

`embedrank synth` asks for a JSON reply; SmolLM2-135M-Instruct never gives one (docs/training.md).
This probe skips the configuration step (a fixed character, question type, difficulty and
length) and sends the synth query prompt of each passage twice: as is, and with the assistant's
reply prefilled with ``{"Query": "`` so that the model only has to continue the string. For each
answer it reports whether a query can be read (the JSON parses, or the prefilled string is
closed) and whether the text copies the passage (its first 8 words appear in it verbatim).

    python benchmarks/synth_probe.py --llm runs/smol --corpus data/debian/corpus.jsonl --limit 20
"""

from __future__ import annotations

import argparse
import json
import re

from embedrank.train import synth_prompts as P
from embedrank.train.synth import HFGenerator, parse_json, read_texts

PREFIX = '{"Query": "'


class ProbeGenerator(HFGenerator):
    """HFGenerator whose assistant reply starts with :attr:`prefix` (the model continues it)."""

    prefix = ""

    def _chat(self, prompt: str) -> str:
        return super()._chat(prompt) + self.prefix


def prefilled_query(completion: str) -> str | None:
    """The string the model closed after the prefilled ``{"Query": "``, else None."""
    end = re.search(r'(?<!\\)"', completion)
    if end is None:
        return None
    return completion[:end.start()].strip() or None


def copies(text: str, passage: str, words: int = 8) -> bool:
    head = " ".join(text.split()[:words])
    return len(head.split()) == words and head in " ".join(passage.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", required=True, help="instruct LM checkpoint directory")
    parser.add_argument("--corpus", required=True, help="BEIR corpus.jsonl or one passage per line")
    parser.add_argument("--limit", type=int, default=20, help="passages probed")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    passages = read_texts(args.corpus, "text")[:args.limit]
    prompts = [P.query_prompt(p, "a Debian system administrator", "keywords", "university", 8,
                              "English") for p in passages]
    llm = ProbeGenerator(args.llm, device=args.device, max_new_tokens=args.max_new_tokens,
                         batch_size=8, progress=False)
    free = llm(prompts)
    llm.prefix = PREFIX
    prefilled = llm(prompts)
    counts = {"free_parsed": 0, "prefilled_closed": 0, "free_copies": 0, "prefilled_copies": 0}
    for passage, a, b in zip(passages, free, prefilled, strict=True):
        query = (parse_json(a, P.QUERY_KEYS) or {}).get("Query")
        closed = prefilled_query(b)
        counts["free_parsed"] += query is not None
        counts["prefilled_closed"] += closed is not None
        counts["free_copies"] += copies(a, passage)
        counts["prefilled_copies"] += copies(b, passage)
        print(json.dumps({"passage": passage[:80], "free": a[:120], "prefilled": PREFIX + b[:120]},
                         ensure_ascii=False))
    print(json.dumps({"passages": len(passages), **counts}))


if __name__ == "__main__":
    main()
