"""`embedrank serve`: its options, its refusals, and one real run over HTTP (uvicorn, a subprocess)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from embedrank.cli import main
from embedrank.errors import InputError
from embedrank.runtime import Embedder
from embedrank.serve import ModelSpec, ServeOptions
from embedrank.serve.settings import usable_cores


def test_every_option_is_documented():
    command = main.commands["serve"]
    options = {p.name: p for p in command.params}
    assert {"embedders", "rerankers", "host", "port", "device", "token_env", "qdrant", "batch_tokens",
            "max_queue", "workers"} <= set(options)
    assert all(p.help for p in command.params)
    assert (options["host"].default, options["port"].default, options["device"].default) == (
        "127.0.0.1", 8000, "cpu")
    assert options["embedders"].multiple and options["rerankers"].multiple


@pytest.mark.parametrize("text, spec", [
    ("qwen3=/models/e", ModelSpec("qwen3", Path("/models/e"))),
    ("qwen3-256=/models/e:256", ModelSpec("qwen3-256", Path("/models/e"), 256)),
    ("w=C:\\models\\e", ModelSpec("w", Path("C:\\models\\e"))),
])
def test_model_specs(text, spec):
    assert ModelSpec.parse(text) == spec


@pytest.mark.parametrize("text", ["nope", "=dir", "name=", "a=/m:12"])
def test_bad_model_specs(text):
    if text == "a=/m:12":  # a reranker takes no DIM: the colon stays in the path
        assert ModelSpec.parse(text, allow_dim=False).path == Path("/m:12")
        return
    with pytest.raises(InputError, match="NAME=DIR"):
        ModelSpec.parse(text)


def test_refusals(monkeypatch, embedder_dir):
    runner = CliRunner()
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    result = runner.invoke(main, ["serve", "--embedder", f"e={embedder_dir}", "--token-env", "NO_SUCH_TOKEN"])
    assert result.exit_code == 1 and "NO_SUCH_TOKEN is unset or empty" in result.output
    result = runner.invoke(main, ["serve"])
    assert result.exit_code == 1 and "nothing to serve" in result.output
    with pytest.raises(InputError, match="given twice"):
        ServeOptions(embedders=(ModelSpec.parse("a=/x"), ModelSpec.parse("A=/y"))).check()
    with pytest.raises(InputError, match="--qdrant must be an http"):
        ServeOptions(embedders=(ModelSpec.parse("a=/x"),), qdrant="localhost:6333").check()


def test_model_threads(monkeypatch, embedder_dir):
    """On CPU the --workers passes share the cores (ONNX Runtime's threads would spin against
    each other); --threads wins; on CUDA ONNX Runtime keeps its default."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert usable_cores() == 8
    assert ServeOptions(workers=2).model_threads() == 4
    assert ServeOptions(workers=3).model_threads() == 2
    assert ServeOptions(workers=16).model_threads() == 1
    assert ServeOptions(workers=2, threads=7).model_threads() == 7
    assert ServeOptions(workers=2, device="cuda").model_threads() is None
    from embedrank.serve.models import ModelSet

    served = ModelSet.load(ServeOptions(embedders=(ModelSpec.parse(f"e={embedder_dir}"),), workers=8))
    options = served.embedders["e"].embedder.session.get_session_options()
    assert options.intra_op_num_threads == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_server(embedder_dir, reranker_dir, tmp_path):
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "SERVE_TOKEN": "tok"}
    command = [sys.executable, "-c", "from embedrank.cli import main; main()", "serve",
               "--embedder", f"tiny={embedder_dir}:32",
               "--reranker", f"rr={reranker_dir}", "--port", str(port), "--token-env", "SERVE_TOKEN"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):  # wait for the models to load (not a timing check)
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert process.poll() is None, log.read_text()
                time.sleep(0.1)
        body = {"inputs": [{"data": "hello", "data_type": "text", "model": "tiny", "options": None}],
                "inference": "search", "token": "tok"}
        answer = httpx.post(f"{url}/qdrant/infer", json=body).json()
        refused = httpx.post(f"{url}/v1/embeddings", json={"input": "x"})
    finally:
        process.terminate()
        process.wait(timeout=30)
    np.testing.assert_allclose(answer["embeddings"][0],
                               Embedder.load(embedder_dir, dim=32).embed_queries(["hello"])[0], atol=1e-6)
    assert refused.status_code == 401
    lines = log.read_text().splitlines()
    assert sum("embedrank.serve: POST /qdrant/infer 200" in line for line in lines) == 1
    assert sum("embedrank.serve: POST /v1/embeddings 401" in line for line in lines) == 1
