"""Debian's package index -> a BEIR folder (query = synopsis, document = long description).

    apt-get -o Acquire::Languages=en update        # the long descriptions live in Translation-en
    python benchmarks/debian_beir.py data/debian    # reads apt-cache dumpavail + the translations

Writes ``corpus.jsonl``, ``queries.jsonl``, ``qrels/train.tsv``, ``qrels/test.tsv``,
``train.jsonl`` (embedrank's train format: ``{"query", "pos": [...]}``) and ``stats.json``.

* A document is one distinct long description (whitespace normalized); packages sharing it
  (``foo`` / ``foo-data`` often do) share one document. A query is one distinct synopsis; when
  several packages carry the same synopsis, every one of their descriptions is relevant.
  Synopses carried by packages of more than ``--max-sources`` source packages (``transitional
  package``, ``debug symbols``) say nothing about which one is meant and are dropped.
* The split is by source package (``Source``, without its version; absent = ``Package``), and a
  little wider: sources that share a description or a synopsis are one unit. So ``libfoo1``,
  ``libfoo-dev`` and anything reusing their text are on the same side. Units are drawn in a
  seeded order until the test side holds ``--test-queries`` queries; units with more than
  ``--max-unit`` queries (the gcc cross-compiler family) stay in train.
* Every document is in the corpus; test queries are ranked against all of it.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import random
import re
import subprocess
from collections import defaultdict
from pathlib import Path

TRANSLATIONS = "/var/lib/apt/lists/*_i18n_Translation-en*"


def stanzas(text: str):
    """deb822 records: ``{field: value}``, continuation lines kept (with their leading space)."""
    for block in re.split(r"\n\s*\n", text):
        record, key = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                record[key] += "\n" + line
            elif ":" in line:
                key, value = line.split(":", 1)
                record[key] = value.strip()
        if record:
            yield record


def long_text(description: str) -> str:
    """The extended description as plain text: paragraphs (`` .`` lines) joined by newlines,
    the lines of a paragraph by spaces, whitespace collapsed."""
    paragraphs, current = [], []
    for line in description.split("\n")[1:]:
        line = line.strip()
        if line == ".":
            paragraphs.append(" ".join(current))
            current = []
        elif line:
            current.append(line)
    paragraphs.append(" ".join(current))
    return "\n".join(re.sub(r"\s+", " ", p).strip() for p in paragraphs if p.strip())


def read_index(packages: str, translations: list[str]) -> list[dict]:
    """``[{package, source, synopsis, text}]``, one per package name (the first record wins)."""
    long_by_md5 = {}
    for text in translations:
        for rec in stanzas(text):
            if "Description-md5" in rec and "Description-en" in rec:
                long_by_md5[rec["Description-md5"]] = rec["Description-en"]
    seen, out = set(), []
    for rec in stanzas(packages):
        name = rec.get("Package")
        if not name or name in seen or "Description" not in rec:
            continue
        seen.add(name)
        full = long_by_md5.get(rec.get("Description-md5", ""), rec["Description"])
        out.append({"package": name, "source": (rec.get("Source") or name).split()[0],
                    "synopsis": re.sub(r"\s+", " ", rec["Description"].split("\n")[0]).strip(),
                    "text": long_text(full)})
    return out


class _Units:
    """Union-find over string keys."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def _hid(prefix: str, text: str) -> str:
    return prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def build(records: list[dict], test_queries: int, seed: int, max_sources: int,
          max_unit: int) -> dict:
    records = [r for r in records if r["text"] and r["synopsis"]]
    sources_of = defaultdict(set)
    for r in records:
        sources_of[r["synopsis"].lower()].add(r["source"])
    generic = {s for s, srcs in sources_of.items() if len(srcs) > max_sources}
    units, docs, qrels = _Units(), {}, defaultdict(set)
    queries, doc_sources = {}, defaultdict(set)
    for r in records:
        did = _hid("d", r["text"])
        docs[did] = r["text"]
        doc_sources[did].add(r["source"])
        units.join("s:" + r["source"], did)
        if r["synopsis"].lower() in generic:
            continue
        qid = _hid("q", r["synopsis"].lower())
        queries.setdefault(qid, r["synopsis"])
        qrels[qid].add(did)
        units.join(qid, did)
    by_unit = defaultdict(list)
    for qid in sorted(qrels):
        by_unit[units.find(qid)].append(qid)
    order = sorted(by_unit)
    random.Random(seed).shuffle(order)
    test: list[str] = []
    for unit in order:
        if len(test) >= test_queries:
            break
        if len(by_unit[unit]) <= max_unit:
            test += by_unit[unit]
    test_set = set(test)
    split = {"test": sorted(test_set), "train": sorted(q for q in qrels if q not in test_set)}
    sides = [{src for q in qids for d in qrels[q] for src in doc_sources[d]}
             for qids in split.values()]
    return {"docs": docs, "queries": queries, "qrels": qrels, "split": split,
            "generic": len(generic), "packages": len(records), "straddling": len(set.intersection(*sides))}


def write(data: dict, out: Path) -> dict:
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for did in sorted(data["docs"]):
            fh.write(json.dumps({"_id": did, "title": "", "text": data["docs"][did]}) + "\n")
    with (out / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for qid in sorted(data["queries"]):
            if qid in data["qrels"]:
                fh.write(json.dumps({"_id": qid, "text": data["queries"][qid]}) + "\n")
    for name, qids in data["split"].items():
        with (out / "qrels" / f"{name}.tsv").open("w", encoding="utf-8") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for qid in qids:
                fh.writelines(f"{qid}\t{did}\t1\n" for did in sorted(data["qrels"][qid]))
    with (out / "train.jsonl").open("w", encoding="utf-8") as fh:
        for qid in data["split"]["train"]:
            pos = [data["docs"][d] for d in sorted(data["qrels"][qid])]
            fh.write(json.dumps({"query": data["queries"][qid], "pos": pos}) + "\n")
    stats = {"packages_with_text": data["packages"], "documents": len(data["docs"]),
             "queries": len(data["qrels"]), "generic_synopses_dropped": data["generic"],
             **{f"{k}_queries": len(v) for k, v in data["split"].items()},
             **{f"{k}_pairs": sum(len(data["qrels"][q]) for q in v)
                for k, v in data["split"].items()},
             "sources_in_both_splits": data["straddling"]}
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


def _apt_inputs(packages: str | None, translations: list[str] | None) -> tuple[str, list[str]]:
    if packages:
        pkg_text = Path(packages).read_text(encoding="utf-8", errors="replace")
    else:
        pkg_text = subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True,
                                  text=True, errors="replace").stdout
    if translations is None:
        translations = sorted(glob.glob(TRANSLATIONS))
        if not translations:
            raise SystemExit("no Translation-en under /var/lib/apt/lists: run "
                             "`apt-get -o Acquire::Languages=en update` first")
        texts = [subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", p], check=True,
                                capture_output=True, text=True, errors="replace").stdout
                 for p in translations]
    else:
        texts = [Path(p).read_text(encoding="utf-8", errors="replace") for p in translations]
    return pkg_text, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="Output BEIR folder.")
    ap.add_argument("--packages", help="A saved `apt-cache dumpavail` [default: run it].")
    ap.add_argument("--translations", nargs="*", default=None,
                    help="Uncompressed Translation-en files [default: apt's lists].")
    ap.add_argument("--test-queries", type=int, default=1500, help="Test queries (at least).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the unit order.")
    ap.add_argument("--max-sources", type=int, default=3,
                    help="Drop synopses shared by more source packages than this.")
    ap.add_argument("--max-unit", type=int, default=50,
                    help="Units with more queries than this stay in train.")
    args = ap.parse_args()
    pkg_text, texts = _apt_inputs(args.packages, args.translations)
    data = build(read_index(pkg_text, texts), args.test_queries, args.seed, args.max_sources,
                 args.max_unit)
    print(json.dumps(write(data, args.out), indent=2))


if __name__ == "__main__":
    main()
