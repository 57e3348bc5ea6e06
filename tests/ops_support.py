"""Support of the tests of the opt-in ops library: ONNX Runtime's C API headers, and a rewritten
export checked against the plain one.

The product never downloads them (it reads an installed libonnxruntime-dev, or --ort-include).
This Debian 12 machine has no such package, so the tests take the headers from the Debian 13
package in Debian's own archive (a package index), pinned by SHA-256 and unpacked into the
test cache; offline, the tests that need them skip with the reason.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import urllib.request
from pathlib import Path

HEADERS_DEB = ("http://deb.debian.org/debian/pool/main/o/onnxruntime/"
               "libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb",
               "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08")


def unpack_deb_headers(deb: bytes, dest: Path) -> None:
    """usr/include/onnxruntime/* of a .deb (an ar archive holding data.tar.xz) into ``dest``."""
    if not deb.startswith(b"!<arch>\n"):
        raise ValueError("not a .deb")
    pos, data = 8, None
    while pos + 60 <= len(deb):
        name, size = deb[pos:pos + 16].decode().strip().rstrip("/"), int(deb[pos + 48:pos + 58])
        if name.startswith("data.tar"):
            data = deb[pos + 60:pos + 60 + size]
        pos += 60 + size + size % 2
    if data is None:
        raise ValueError("no data.tar member")
    prefix = "./usr/include/onnxruntime/"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            rel = member.name[len(prefix):] if member.name.startswith(prefix) else None
            if rel and member.isfile() and ".." not in Path(rel).parts:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                (dest / rel).write_bytes(tar.extractfile(member).read())


def debian_headers(cache: Path) -> Path:
    """The pinned package's headers under ``cache`` (fetched once); OSError/ValueError if not."""
    dest = cache / "onnxruntime-headers-1.21"
    if (dest / "onnxruntime_cxx_api.h").is_file():
        return dest
    url, sha256 = HEADERS_DEB
    with urllib.request.urlopen(url, timeout=60) as response:
        deb = response.read()
    if hashlib.sha256(deb).hexdigest() != sha256:
        raise ValueError(f"{url} does not match its pinned SHA-256")
    tmp = cache / f".headers.{os.getpid()}"
    unpack_deb_headers(deb, tmp)
    tmp.rename(dest) if not dest.exists() else None
    return dest


TEXTS = ["short", "a somewhat longer document about vector databases and rerankers", "x " * 30]


def assert_same_outputs(rewritten: Path, plain: Path, kind: str) -> None:
    """The rewritten export gives the plain export's embeddings / scores (to 2e-6) on TEXTS."""
    import numpy as np

    from embedrank.plugin import Embedder, Reranker

    if kind == "embedder":
        got, ref = (Embedder.load(d).embed_documents(TEXTS) for d in (rewritten, plain))
    else:
        got, ref = (Reranker.load(d).score("what is qdrant", TEXTS) for d in (rewritten, plain))
        assert np.ptp(ref) > 1e-3  # the scores differ per document, so a mix-up would show
    np.testing.assert_allclose(got, ref, atol=2e-6)
