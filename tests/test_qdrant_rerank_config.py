"""The reranker lives in the collection's metadata: one record, read by one pure function."""

from __future__ import annotations

import numpy as np
import pytest
import qdrant_client
from qdrant_client import models
from qdrant_support import CORPUS, QUERY, brute_force, make_collection, other_fingerprint_dir, points

from embedrank.errors import CollectionMismatchError, InputError, ModelDirError
from embedrank.plugin import Embedder, QdrantClient, Reranker, register_embedder
from embedrank.plugin.collections import RERANK_KEY, RerankConfig, reranker_config
from embedrank.plugin.rerank import load_reranker

ALL = list(range(len(CORPUS)))


@pytest.fixture(scope="module")
def embedder(embedder_dir):
    embedder = Embedder.load(embedder_dir)
    register_embedder("rc-embedder", embedder)
    return embedder


@pytest.fixture(scope="module")
def reranker(reranker_dir):
    return Reranker.load(reranker_dir)


def doc(text=QUERY):
    return models.Document(text=text, model="rc-embedder")


def ranked(hits):
    return [h.id for h in hits], [h.score for h in hits]


def test_reranker_config_is_a_pure_reading_of_the_metadata():
    assert reranker_config(None) is None and reranker_config({"other": 1}) is None
    value = {"model_dir": "/m/r", "fingerprint": "ab" * 32, "text_field": "body", "top_k": 7,
             "instruction": "Find it"}
    assert reranker_config({RERANK_KEY: value}) == RerankConfig("/m/r", "ab" * 32, "body", 7,
                                                                "Find it")
    for bad in ({"model_dir": "/m/r"}, {**value, "top_k": 0}, {**value, "text_field": ""},
                {**value, "surprise": 1}, "not a dict"):
        with pytest.raises(CollectionMismatchError, match=f"{RERANK_KEY}.*set_reranker"):
            reranker_config({RERANK_KEY: bad}, "docs")


def test_set_reranker_records_path_and_fingerprint_and_another_client_reranks_alike(
        tmp_path, embedder, reranker, reranker_dir):
    db = str(tmp_path / "db")
    client = QdrantClient(path=db)
    make_collection(client)
    client.upsert("docs", points("rc-embedder"))
    client.set_reranker("docs", str(reranker_dir), top_k=7, instruction="Find the fact")
    expected = ranked(client.query_points("docs", query=doc(), limit=4).points)
    client.close()

    plain = qdrant_client.QdrantClient(path=db)  # what `embedrank serve` reads
    metadata = plain.get_collection("docs").config.metadata
    plain.close()
    assert metadata[RERANK_KEY] == {"model_dir": str(reranker_dir.resolve()),
                                    "fingerprint": reranker.fingerprint, "text_field": "text",
                                    "top_k": 7, "instruction": "Find the fact"}
    config = reranker_config(metadata)
    assert (config.top_k, config.fingerprint) == (7, reranker.fingerprint)

    other = QdrantClient(path=db)  # a fresh client: nothing held in memory but the metadata
    assert other.collection_reranker("docs") == config
    hits = other.query_points("docs", query=doc(), limit=4).points
    ids, scores = brute_force(embedder, reranker, QUERY, ALL, top_k=7, limit=4,
                              rerank_instruction="Find the fact")
    assert ranked(hits)[0] == ids == expected[0]
    np.testing.assert_allclose(ranked(hits)[1], scores, rtol=1e-5)
    np.testing.assert_allclose(expected[1], scores, rtol=1e-5)
    other.set_reranker("docs", None)
    assert other.collection_reranker("docs") is None
    plain_hits = other.query_points("docs", query=doc(), limit=4).points
    assert ranked(plain_hits) == ranked(other.query_points("docs", query=doc(), limit=4,
                                                           rerank=False).points)
    other.close()


def test_a_loaded_reranker_is_recorded_by_path_and_used_as_given(embedder, reranker):
    client = QdrantClient(":memory:")
    make_collection(client)
    client.upsert("docs", points("rc-embedder"))
    client.set_reranker("docs", reranker, text_field="text", top_k=5)
    config = client.collection_reranker("docs")
    assert config == RerankConfig(str(reranker.path.resolve()), reranker.fingerprint, "text", 5)
    assert load_reranker(config) is reranker  # not loaded a second time
    hits = client.query_points("docs", query=doc(), limit=3).points
    assert [h.id for h in hits] == brute_force(embedder, reranker, QUERY, ALL, 5, 3)[0]
    client.close()


def test_a_directory_with_another_fingerprint_is_refused(tmp_path, embedder, reranker,
                                                         reranker_dir):
    client = QdrantClient(":memory:")
    make_collection(client)
    client.upsert("docs", points("rc-embedder"))
    changed = other_fingerprint_dir(reranker_dir, tmp_path / "changed")  # same path, new files
    record = {"model_dir": str(changed), "fingerprint": reranker.fingerprint, "text_field": "text",
              "top_k": 10, "instruction": None}
    client.update_collection("docs", metadata={RERANK_KEY: record})
    with pytest.raises(CollectionMismatchError, match=r"now holds fingerprint .*set_reranker"):
        client.query_points("docs", query=doc(), limit=3)
    client.update_collection("docs", metadata={RERANK_KEY: {**record, "model_dir": str(
        tmp_path / "gone")}})
    with pytest.raises(ModelDirError, match="collection 'docs' reranks with .*gone"):
        client.query_points("docs", query=doc(), limit=3)
    assert client.query_points("docs", query=doc(), limit=3, rerank=False).points
    client.close()


def test_a_per_call_config_is_used_and_not_stored(embedder, reranker, reranker_dir):
    from embedrank.plugin.rerank import configure

    client = QdrantClient(":memory:")
    make_collection(client)
    client.upsert("docs", points("rc-embedder"))
    once = configure(reranker_dir, top_k=6)
    hits = client.query_points("docs", query=doc(), limit=3, rerank=once).points
    assert [h.id for h in hits] == brute_force(embedder, reranker, QUERY, ALL, 6, 3)[0]
    assert client.collection_reranker("docs") is None
    with pytest.raises(InputError, match="rerank must be"):
        client.query_points("docs", query=doc(), rerank="yes")
    client.close()
