"""Ingest under faults: random Qdrant failures, and a process killed mid-run, lose nothing.

Sizes: 2,000 documents in CI, 100,000 with ``EMBEDRANK_RELIABILITY_FULL=1`` or
``--reliability-full``. Every run ends by comparing the collection with a clean run: the same
ids (0 missing, 0 duplicated), the same payloads, the same vectors.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from qdrant_client import models
from reliability_support import TALLY, FlakyQdrant, contents, flaky_client, size

from embedrank.cli.main import main
from embedrank.plugin import QdrantClient, register_embedder
from embedrank.plugin.ingest import ingest_records, model_name, point_id
from embedrank.plugin.retry import Backoff, retry_call

pytestmark = pytest.mark.reliability

N = size(2_000, 100_000)
# qdrant-client's local mode on disk commits every point (~50-300 points/s): a smaller corpus
KILL_N = size(2_000, 10_000)
KILL_AT = size((0.4,), (0.25, 0.6))  # fractions of KILL_N at which the ingest is killed
P_FAIL = 0.2
TOPICS = ["rivers", "bread", "comets", "violins", "tides", "ferns", "glass", "owls", "maps", "salt"]


def rows(n: int = N) -> list[dict]:
    return [{"id": f"doc-{i}", "text": f"note {i}: a short line about {TOPICS[i % 10]} and "
             f"{TOPICS[(i * 7) % 10]}"} for i in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("reliability") / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model(embedder_dir) -> str:
    name = model_name(embedder_dir)  # the name `embedrank ingest` registers
    register_embedder(name, embedder_dir)
    return name


@pytest.fixture(scope="module")
def clean(model) -> dict[str, tuple]:
    """A clean run: the same ingest, no faults, into an in-memory database."""
    client = QdrantClient(":memory:")
    ingest_records(client, "docs", enumerate(rows(), 1), model, batch_size=256)
    return contents(client, "docs")


def compare(got: dict[str, tuple], clean: dict[str, tuple]) -> tuple[int, int]:
    """(missing, unexpected) ids; asserts equal payloads and vectors for the ids present."""
    missing = len(clean.keys() - got.keys())
    extra = len(got.keys() - clean.keys())
    common = sorted(clean.keys() & got.keys())
    assert all(got[i][1] == clean[i][1] for i in common), "a payload changed"
    if common:
        a = np.array([got[i][0] for i in common], dtype=np.float32)
        b = np.array([clean[i][0] for i in common], dtype=np.float32)
        np.testing.assert_allclose(a, b, atol=1e-5)  # batch composition may differ
    return missing, extra


def test_ingest_cli_survives_random_qdrant_failures(corpus, clean, embedder_dir, monkeypatch):
    flaky = FlakyQdrant(p=P_FAIL, seed=1)
    monkeypatch.setattr("embedrank.plugin.ingest.open_client",
                        lambda path, url, api_key=None: flaky_client(flaky))
    result = CliRunner().invoke(main, [
        "ingest", "docs", str(corpus), "--embedder", str(embedder_dir),
        "--url", "http://flaky.invalid:6333", "--batch-size", "64", "--attempts", "10"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"{N} added, 0 already present" in result.output
    missing, extra = compare(contents(flaky.backend, "docs"), clean)
    TALLY.add("ingest", f"`embedrank ingest`, {flaky.failures} of {flaky.calls} Qdrant calls "
              "failed", N, N - missing, missing, f"{extra} duplicated/unexpected")
    assert flaky.failures > 0 and missing == extra == 0


def test_upload_points_survives_random_qdrant_failures(clean, model):
    flaky = FlakyQdrant(p=P_FAIL, seed=2)
    client = flaky_client(flaky)
    client.create_collection("docs", vectors_config=models.VectorParams(
        size=64, distance=models.Distance.COSINE))
    points = [models.PointStruct(id=point_id(r, r["text"], "id"), payload=r,
                                 vector=models.Document(text=r["text"], model=model))
              for r in rows()]
    reruns = []
    with pytest.warns(UserWarning, match="Batch upload failed"):  # qdrant-client's own retry
        retry_call(client.upload_points, "docs", points, batch_size=128, max_retries=5,
                   backoff=Backoff(attempts=20, base=0.01), sleep=reruns.append)
    missing, extra = compare(contents(flaky.backend, "docs"), clean)
    TALLY.add("ingest", f"`upload_points`, {flaky.failures} of {flaky.calls} Qdrant calls "
              f"failed, {len(reruns)} whole reruns", N, N - missing, missing,
              f"{extra} duplicated/unexpected")
    assert flaky.failures > 0 and missing == extra == 0


# ------------------------------------------------------------------------------ kill -9, resume


def spawn_ingest(corpus, db, embedder_dir) -> subprocess.Popen:
    code = "from embedrank.cli.main import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "ingest", "docs", str(corpus), "--embedder",
         str(embedder_dir), "--path", str(db), "--batch-size", "32"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_when(proc: subprocess.Popen, fraction: float, timeout: float = size(300, 1500)) -> int:
    """SIGKILL ``proc`` once its progress bar passes ``fraction`` of KILL_N; returns lines seen."""
    seen = [0]

    def watch():
        buffer = b""
        while chunk := proc.stderr.read1(4096):
            buffer = (buffer + chunk)[-200:]
            found = re.findall(rb"(\d+)/(\d+)", buffer)
            if found:
                seen[0] = int(found[-1][0])

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while seen[0] < fraction * KILL_N:
        assert proc.poll() is None, "ingest finished before it could be killed"
        assert time.monotonic() < deadline, "ingest made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    thread.join(timeout=10)
    return seen[0]


def stored(db) -> dict[str, tuple]:
    client = QdrantClient(path=str(db))
    try:
        return contents(client, "docs") if client.collection_exists("docs") else {}
    finally:
        client.close()


def test_ingest_killed_mid_run_resumes_to_exactly_the_input(tmp_path, clean, embedder_dir):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows(KILL_N)), encoding="utf-8")
    clean = {i: clean[i] for i in {point_id(r, r["text"], "id") for r in rows(KILL_N)}}
    db = tmp_path / "db"
    kept = []
    for fraction in KILL_AT:
        proc = spawn_ingest(corpus, db, embedder_dir)
        kill_when(proc, fraction)
        assert proc.returncode == -signal.SIGKILL
        survived = stored(db)
        assert compare(survived, clean)[1] == 0  # what was written is right, nothing extra
        kept.append(len(survived))
    assert 0 < kept[0] and kept == sorted(kept) and kept[-1] < KILL_N
    result = CliRunner().invoke(main, ["ingest", "docs", str(corpus), "--embedder",
                                       str(embedder_dir), "--path", str(db)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"{KILL_N - kept[-1]} added, {kept[-1]} already present" in result.output
    missing, extra = compare(stored(db), clean)
    TALLY.add("ingest", f"`embedrank ingest --path`, SIGKILL x{len(kept)} (stored "
              f"{', '.join(map(str, kept))}), rerun", KILL_N, KILL_N - missing, missing,
              f"{extra} duplicated/unexpected")
    assert missing == extra == 0
