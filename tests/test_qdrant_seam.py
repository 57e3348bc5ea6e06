"""The fastembed / qdrant-client seam: plain ``qdrant_client.QdrantClient`` embeds our names.

If an upgrade of qdrant-client or fastembed changes how local inference finds and calls a dense
text model, these tests fail: re-check embedrank.plugin.vectorizer._install_fastembed_seam.
"""

from __future__ import annotations

from importlib.metadata import version

import numpy as np
import pytest
import qdrant_client
from qdrant_client import models
from qdrant_support import QUERY, TEXTS, first_stage, make_collection, points

from embedrank.errors import InputError
from embedrank.plugin import Embedder, register_embedder
from embedrank.plugin.vectorizer import embed_in, map_documents

fastembed = pytest.importorskip("fastembed")


@pytest.fixture(scope="module")
def embedder(embedder_dir):
    register_embedder("seam-embedder", embedder_dir, instruction="Default task")
    return Embedder.load(embedder_dir)


def test_pinned_versions():
    major, minor = (int(x) for x in version("qdrant-client").split(".")[:2])
    assert (major, minor) < (1, 21), "qdrant-client is pinned <1.21: re-check the seam"


def test_registry_lists_the_name(embedder):
    from fastembed import TextEmbedding

    listed = {m["model"]: m["dim"] for m in TextEmbedding.list_supported_models()}
    assert listed["seam-embedder"] == 64
    assert qdrant_client.QdrantClient(":memory:").get_embedding_size("seam-embedder") == 64
    with pytest.raises(InputError, match="fastembed model name"):
        register_embedder("BAAI/bge-small-en-v1.5", embedder)


def test_plain_qdrant_client_embeds_registered_names(embedder):
    client = qdrant_client.QdrantClient(":memory:")
    make_collection(client)
    client.upsert("docs", points("seam-embedder"))
    stored = sorted(client.retrieve("docs", list(range(len(TEXTS))), with_vectors=True),
                    key=lambda r: r.id)
    np.testing.assert_allclose([r.vector for r in stored], embedder.embed_documents(TEXTS),
                               atol=1e-6)
    for options, instruction in ((None, "Default task"), ({"instruction": "Other"}, "Other")):
        query = models.Document(text=QUERY, model="seam-embedder", options=options)
        hits = client.query_points("docs", query=query, limit=len(TEXTS)).points
        expected = first_stage(embedder, QUERY, instruction=instruction)
        np.testing.assert_allclose([{h.id: h.score for h in hits}[i] for i in range(len(TEXTS))],
                                   expected, atol=1e-5)


def test_unknown_document_option_is_refused(embedder):
    query = models.Document(text=QUERY, model="seam-embedder", options={"instrction": "typo"})
    with pytest.raises(InputError, match="instrction"):
        embed_in(query, is_query=True)


def test_map_documents_leaves_other_values_alone(embedder):
    point = models.PointStruct(id=1, vector={"a": [0.5, 0.5], "b": models.Document(
        text="x", model="seam-embedder"), "c": models.Document(text="y", model="not-ours")})
    out = map_documents(point, lambda name, doc: name)
    assert out.vector == {"a": [0.5, 0.5], "b": "b", "c": point.vector["c"]}
    assert point.vector["b"].text == "x"  # the input is not modified
