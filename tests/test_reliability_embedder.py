"""One collection, one embedder: every write path, both clients, racing writers, stale views.

A second embedder (same dim, another fingerprint) is refused on every write path of both clients
and in queries; the record is written compare-and-set (every interleaving of two first writers
is tried); concurrent first writes from threads (one client) and from separate clients of one
server end with the points of one embedder only; a client never trusts an old view.

Sizes: 6 rounds of 8 concurrent writers in CI, 60 with ``EMBEDRANK_RELIABILITY_FULL=1``.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import qdrant_client
from qdrant_client import models
from qdrant_support import open_client, other_fingerprint_dir
from reliability_support import TALLY, FlakyQdrant, flaky_client, size

from embedrank.errors import CollectionMismatchError
from embedrank.plugin import Embedder, QdrantClient, register_embedder
from embedrank.plugin.collections import CollectionState
from embedrank.plugin.core import ensure_records
from embedrank.plugin.vectorizer import registration

pytestmark = pytest.mark.reliability

X, Y, X2 = "one-x", "one-y", "one-x-again"  # X2: X's model under another name
ROUNDS = size(6, 60)
WRITERS = 8


@pytest.fixture(scope="module", autouse=True)
def embedders(embedder_dir, tmp_path_factory):
    embedder = Embedder.load(embedder_dir)
    register_embedder(X, embedder)
    register_embedder(X2, embedder)
    register_embedder(Y, other_fingerprint_dir(embedder_dir, tmp_path_factory.mktemp("y") / "y"))
    assert registration(X).fingerprint != registration(Y).fingerprint


def doc(text: str, model: str) -> models.Document:
    return models.Document(text=text, model=model)


def point(i: int, model: str) -> models.PointStruct:
    return models.PointStruct(id=i, vector=doc(f"passage {i} on tides", model),
                              payload={"model": model})


def create(client, name: str = "docs") -> None:
    client.create_collection(name, vectors_config=models.VectorParams(
        size=64, distance=models.Distance.COSINE))


def vectors_of(pts):
    return [models.PointVectors(id=p.id, vector=p.vector) for p in pts]


WRITES = {
    "upsert": lambda c, n, pts: c.upsert(n, pts),
    "upload_points (list)": lambda c, n, pts: c.upload_points(n, pts),
    "upload_points (iterator)": lambda c, n, pts: c.upload_points(n, iter(pts)),
    "upload_collection (list)": lambda c, n, pts: c.upload_collection(
        n, [p.vector for p in pts], ids=[p.id for p in pts]),
    "upload_collection (iterator)": lambda c, n, pts: c.upload_collection(
        n, iter([p.vector for p in pts]), ids=[p.id for p in pts]),
    "batch_update_points (upsert)": lambda c, n, pts: c.batch_update_points(
        n, [models.UpsertOperation(upsert=models.PointsList(points=pts))]),
    "batch_update_points (vectors)": lambda c, n, pts: c.batch_update_points(
        n, [models.UpdateVectorsOperation(update_vectors=models.UpdateVectors(
            points=vectors_of(pts)))]),
    "update_vectors": lambda c, n, pts: c.update_vectors(n, vectors_of(pts)),
}
QUERIES = {
    "query_points": lambda c, m: c.query_points("docs", doc("q", m)),
    "prefetch": lambda c, m: c.query_points("docs", [0.1] * 64, prefetch=models.Prefetch(
        query=doc("q", m))),
    "query_batch_points": lambda c, m: c.query_batch_points("docs", [models.QueryRequest(
        query=doc("q", X)), models.QueryRequest(query=doc("q", m))]),
    "query_points_groups": lambda c, m: c.query_points_groups("docs", "model", doc("q", m)),
}


def snapshot(client, name: str):
    records, _ = client.scroll(name, limit=100, with_payload=True, with_vectors=True)
    return sorted((str(r.id), r.vector, r.payload) for r in records), client.collection_models(name)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_every_write_path_and_query_refuses_a_second_embedder(kind):
    client = open_client(kind, ":memory:")
    create(client)
    client.upsert("docs", [point(i, X) for i in range(4)])
    refused = 0
    for k, write in enumerate(WRITES.values()):
        before = snapshot(client, "docs")
        with pytest.raises(CollectionMismatchError, match="was built with embedder 'one-x'"):
            write(client, "docs", [point(1, Y), point(2, Y)])
        fresh = f"fresh{k}"
        create(client, fresh)
        with pytest.raises(CollectionMismatchError, match="one request uses embedders"):
            write(client, fresh, [point(0, X), point(1, Y)])
        assert snapshot(client, "docs") == before and snapshot(client, fresh) == ([], {})
        refused += 2
    for query in QUERIES.values():
        with pytest.raises(CollectionMismatchError):
            query(client, Y)
        refused += 1
    client.close()
    TALLY.add("embedder", f"{kind}: {len(WRITES)} write paths x (2nd fingerprint, 2 in one "
              f"request), {len(QUERIES)} query paths", refused, refused, 0,
              "refused, nothing written")
    assert refused == 2 * len(WRITES) + len(QUERIES)


def interleave(server, a: str, b: str, schedule) -> tuple[dict, list]:
    """Run two first writers' ``ensure_records`` step by step, in ``schedule`` order."""
    ops = {"A": ensure_records("c", {"": registration(a)}),
           "B": ensure_records("c", {"": registration(b)})}
    values, result, trace = {"A": None, "B": None}, {}, []
    order = list(schedule)
    while len(result) < 2:
        who = order.pop(0) if order else "AB"[("A" in result)]
        who = who if who not in result else "AB"[who == "A"]
        trace.append(who)
        try:
            request = ops[who].send(values[who])
        except StopIteration:
            result[who] = "ok"
            continue
        except CollectionMismatchError:
            result[who] = "refused"
            continue
        values[who] = getattr(server, request.method)(**request.kwargs)
    return result, trace


def test_the_record_is_written_compare_and_set():
    server = qdrant_client.QdrantClient(":memory:")
    tried, held, both_refused = 0, 0, 0
    for a, b in ((X, Y), (X, X2)):
        traces = set()
        for schedule in itertools.product("AB", repeat=8):
            server.delete_collection("c")
            create(server, "c")
            result, trace = interleave(server, a, b, schedule)
            if tuple(trace) in traces:
                continue
            traces.add(tuple(trace))
            state = CollectionState.from_info("c", server.get_collection("c"))
            winners = [m for who, m in (("A", a), ("B", b)) if result[who] == "ok"]
            ok = not state.claims and (
                (len(winners) == 2) if a == X2 or b == X2 else len(winners) <= 1)
            if winners:
                ok = ok and state.records[""].fingerprint == registration(winners[0]).fingerprint
            else:
                ok = ok and not state.records
                both_refused += 1
            tried, held = tried + 1, held + ok
    server.close()
    TALLY.add("embedder", "record compare-and-set: every interleaving of 2 first writers "
              "(2 embedders / 1 under 2 names)", tried, held, tried - held,
              f"at most one embedder recorded; {both_refused} both refused")
    assert held == tried and tried > 20


def race(clients, name: str) -> list[str]:
    """8 writers (X and Y alternately) start their first write at one barrier."""
    barrier = threading.Barrier(WRITERS)

    def writer(k: int) -> str:
        model = (X, Y)[k % 2]
        barrier.wait()
        try:
            clients[k].upsert(name, [point(10 * k + j, model) for j in range(3)])
            return model
        except CollectionMismatchError:
            return "refused"

    with ThreadPoolExecutor(WRITERS) as pool:
        return list(pool.map(writer, range(WRITERS)))


@pytest.mark.parametrize("setup", ["one client, 8 threads", "8 clients, one server"])
def test_concurrent_first_writes_keep_one_embedder(setup):
    consistent = 0
    for _ in range(ROUNDS):
        if setup.startswith("one client"):
            clients = [QdrantClient(":memory:")] * WRITERS
            server = clients[0]
        else:
            flaky = FlakyQdrant(p=0.0)
            clients = [flaky_client(flaky) for _ in range(WRITERS)]
            server = flaky.backend
        create(clients[0])
        outcome = race(clients, "docs")
        records, _ = server.scroll("docs", limit=100, with_payload=True)
        state = CollectionState.from_info("docs", server.get_collection("docs"))
        winner = state.records[""].embedder if state.records else None
        assert not state.claims
        ok = {r.payload["model"] for r in records} <= {winner} and set(outcome) - {"refused"} \
            <= {winner} and len(records) == 3 * sum(o != "refused" for o in outcome)
        if setup.startswith("one client"):  # the client's lock: the first writer wins, no tie
            ok = ok and outcome.count(winner) == WRITERS // 2
        consistent += ok
        for client in set(clients):
            client.close()
    TALLY.add("embedder", f"concurrent first writes, {setup} ({ROUNDS} rounds)",
              ROUNDS * WRITERS, consistent * WRITERS, (ROUNDS - consistent) * WRITERS,
              "points of one embedder only")
    assert consistent == ROUNDS


def test_a_stale_view_or_a_recreated_collection_is_not_trusted():
    flaky = FlakyQdrant(p=0.0)
    a, b = flaky_client(flaky), flaky_client(flaky)
    other = qdrant_client.QdrantClient(url="http://flaky.invalid:6333", check_compatibility=False,
                                       transport=flaky.transport())  # someone else
    create(a)
    assert b.collection_models("docs") == {}  # b saw the collection empty
    a.upsert("docs", [point(i, X) for i in range(3)])
    cases = 0
    for attempt in (lambda: b.upsert("docs", [point(9, Y)]),
                    lambda: b.query_points("docs", doc("q", Y))):
        with pytest.raises(CollectionMismatchError, match="one-x"):
            attempt()
        cases += 1
    other.delete_collection("docs")  # deleted and recreated under the same name
    create(other)
    b.upsert("docs", [point(i, Y) for i in range(2)])
    with pytest.raises(CollectionMismatchError, match="was built with embedder 'one-y'"):
        a.upsert("docs", [point(5, X)])  # a wrote X there before: not trusted
    cases += 1
    stored, _ = flaky.backend.scroll("docs", limit=10, with_payload=True)
    assert sorted(r.payload["model"] for r in stored) == [Y, Y]
    TALLY.add("embedder", "stale view, collection deleted and recreated by someone else", cases,
              cases, 0, "refused against the state now")


def test_a_claim_left_by_a_dead_writer():
    from dataclasses import asdict

    from embedrank.plugin.collections import ModelRecord, claim_key

    client = QdrantClient(":memory:")
    create(client)
    dead_y = claim_key("", "dead1")
    client.update_collection("docs", metadata={dead_y: asdict(ModelRecord.of(registration(Y)))})
    with pytest.raises(CollectionMismatchError, match=rf"another writer is recording embedder "
                                                      rf"'one-y'.*'{dead_y}': None"):
        client.upsert("docs", [point(0, X)])
    assert client.count("docs").count == 0
    client.update_collection("docs", metadata={dead_y: None})  # as the message says
    dead_x = claim_key("", "dead2")  # one of X's own: replaced by the record
    client.update_collection("docs", metadata={dead_x: asdict(ModelRecord.of(registration(X2)))})
    client.upsert("docs", [point(0, X)])
    state = CollectionState.from_info("docs", client.get_collection("docs"))
    assert state.records[""].embedder == X and not state.claims
    client.close()
    TALLY.add("embedder", "claim left by a dead writer: another embedder's, the same one's", 2, 2,
              0, "refused with the fix; replaced")
