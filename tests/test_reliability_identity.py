"""Ingest identity: duplicates in the input are counted, reported and resolved the same way
whatever the batch size; a changed record updates its point; ids equal only as strings are
refused; a resume with another embedder is refused.

Sizes: 300 records in CI, 3,000 with ``EMBEDRANK_RELIABILITY_FULL=1``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from qdrant_support import other_fingerprint_dir
from reliability_support import TALLY, contents, size

from embedrank.cli.main import main
from embedrank.errors import CollectionMismatchError, InputError
from embedrank.plugin import Embedder, QdrantClient, register_embedder
from embedrank.plugin.ingest import ingest_records, model_name, point_id

pytestmark = pytest.mark.reliability

N = size(300, 3_000)
BATCHES = (1, 3, 7, 64, N)


@pytest.fixture(scope="module")
def model(embedder_dir) -> str:
    name = model_name(embedder_dir)
    register_embedder(name, embedder_dir)
    return name


def with_duplicates(n: int = N) -> tuple[list[tuple[int, dict]], dict[str, int], dict[str, int]]:
    """Numbered records where every 7th repeats an earlier id (another text) and every 11th an
    earlier id-less text; and, per point id, the line of its first and of its last record."""
    rows = []
    for i in range(n):
        if i % 7 == 6:
            rows.append({"id": f"doc-{i // 2}", "text": f"revised note {i}"})
        elif i % 11 == 10:
            rows.append({"text": f"a note without id, {i % 3}"})
        else:
            rows.append({"id": f"doc-{i}", "text": f"note {i} about tides"})
    numbered = list(enumerate(rows, 1))
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for line, row in numbered:
        pid = point_id(row, row["text"], "id")
        first.setdefault(pid, line)
        last[pid] = line
    return numbered, first, last


def ingest(numbered, model, batch_size, on_duplicate="last", client=None):
    client = client or QdrantClient(":memory:")
    result = ingest_records(client, "docs", numbered, model, batch_size=batch_size,
                            on_duplicate=on_duplicate)
    return client, result


def test_duplicates_resolve_alike_whatever_the_batch_size(model):
    numbered, first, last = with_duplicates()
    rows = dict(numbered)
    repeats = len(numbered) - len(first)
    tried = same = 0
    for on_duplicate, keep in (("first", first), ("last", last)):
        expected = {pid: rows[line] for pid, line in keep.items()}
        for batch_size in BATCHES:
            client, result = ingest(numbered, model, batch_size, on_duplicate)
            got = contents(client, "docs")
            ok = {pid: payload for pid, (_, payload) in got.items()} == expected
            ok = ok and len(result.duplicates) == repeats and result.added == len(first)
            tried, same = tried + 1, same + ok
            client.close()
    client = QdrantClient(":memory:")
    with pytest.raises(InputError, match=rf"{repeats} duplicates in input \(line 7 repeats line 4"):
        ingest(numbered, model, 64, "fail", client)
    assert not client.collection_exists("docs")  # nothing written
    TALLY.add("ingest", f"{N} records with {repeats} duplicates, first / last x batch sizes "
              f"{', '.join(map(str, BATCHES))}; fail", tried + 1, same + 1, tried - same,
              "same points for every batch size")
    assert same == tried


def test_cli_reports_duplicates_and_updates_changed_records(tmp_path, embedder_dir):
    numbered, first, last = with_duplicates(40)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for _, row in numbered), encoding="utf-8")
    db = tmp_path / "db"
    args = ["ingest", "docs", str(corpus), "--embedder", str(embedder_dir), "--path", str(db)]
    out = CliRunner().invoke(main, args + ["--batch-size", "4"])
    repeats = len(numbered) - len(first)
    assert out.exit_code == 0, out.output
    assert f"{len(first)} added, 0 already present, 0 updated" in out.output
    assert f"{repeats} duplicates in input (line 7 repeats line 4, " in out.output
    assert "the last of each was kept" in out.output
    refused = CliRunner().invoke(main, args + ["--on-duplicate", "fail"])
    assert refused.exit_code == 1 and "Nothing was written" in refused.output

    rows = [row for _, row in numbered]
    rows[0] = {**rows[0], "text": "note 0, rewritten about comets"}  # the text changed
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    out = CliRunner().invoke(main, args)
    assert f"0 added, {len(first) - 1} already present, 1 updated" in out.output, out.output
    client = QdrantClient(path=str(db))
    record = client.retrieve("docs", [point_id(rows[0], rows[0]["text"], "id")],
                             with_vectors=True)[0]
    client.close()
    assert record.payload == rows[0]
    expected = Embedder.load(embedder_dir).embed_documents([rows[0]["text"]])[0]
    np.testing.assert_allclose(record.vector, expected, atol=1e-6)
    TALLY.add("ingest", "`embedrank ingest`: duplicates reported; --on-duplicate fail; a "
              "changed text rerun", 3, 3, 0, "reported; nothing written; point updated")


def test_ids_equal_only_as_strings_do_not_collide(model):
    client = QdrantClient(":memory:")
    mixed = [(1, {"id": 1, "text": "one as a number"}), (2, {"id": "1", "text": "one as text"})]
    with pytest.raises(InputError, match=r"<records>:2: id '1' and the id 1 of line 1 are equal "
                                         r"as strings"):
        ingest_records(client, "docs", mixed, model)
    assert not client.collection_exists("docs")
    ingest_records(client, "docs", mixed[:1], model)  # a later run brings the other one
    with pytest.raises(InputError, match=r"<records>:2: point .* holds the record with id 1"):
        ingest_records(client, "docs", mixed[1:], model)
    assert [r.payload for r in client.scroll("docs")[0]] == [mixed[0][1]]
    client.close()
    TALLY.add("ingest", "ids equal only as strings (1 and '1'), one run and across runs", 2, 2,
              0, "refused, nothing overwritten")


def test_a_resume_with_another_embedder_is_refused(tmp_path, embedder_dir, model):
    other = other_fingerprint_dir(embedder_dir, tmp_path / "other")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": f"line {i}"}) + "\n"
                              for i in range(200)), encoding="utf-8")
    db = tmp_path / "db"
    assert CliRunner().invoke(main, ["ingest", "docs", str(corpus), "--embedder",
                                     str(embedder_dir), "--path", str(db)]).exit_code == 0
    out = CliRunner().invoke(main, ["ingest", "docs", str(corpus), "--embedder", str(other),
                                    "--path", str(db)])
    assert out.exit_code == 1 and "already present" not in out.output
    assert "was built with embedder 'embedder'" in out.output
    register_embedder("identity-other", other)
    client = QdrantClient(path=str(db))
    with pytest.raises(CollectionMismatchError):
        ingest_records(client, "docs", [(1, {"id": 0, "text": "line 0"})], "identity-other")
    client.close()
    TALLY.add("ingest", "resume (every id present) with another embedder: CLI and library", 2,
              2, 0, "CollectionMismatchError")
