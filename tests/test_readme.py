"""Every code block of README.md runs as written, in order, in one scratch directory.

Where the README names a real model, the test puts a tiny one in its place (the substitutions
below, each of which must still match the README: a changed line fails here, not silently).
`bash scripts/test.sh` is not run from inside the suite it starts; it is what CI runs.
Where the README starts a Qdrant server with Docker, the test starts tests/qdrant_standin.py with
the same environment (no Qdrant binary or Docker engine here). JavaScript blocks run with node,
after `npm install` of the client the README pins (network: the npm registry; a failure fails).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
LINKED = ("scripts", "docker", ".venv")  # the scratch directory sees the checkout's through links
JS_CLIENT = "@qdrant/js-client-rest@1.18.0"  # 1.19 needs node >= 22; CI has node 20
STANDIN = ROOT / "tests" / "qdrant_standin.py"


def blocks(text: str) -> list[tuple[str, str]]:
    return [(lang, body) for lang, body in FENCE.findall(text)]


def substitutions(tiny: Path) -> list[tuple[str, str]]:
    """(README text, what the test runs instead): real models -> tiny ones, Docker's Qdrant ->
    the stand-in (same QDRANT__INFERENCE__ADDRESS, recording to qdrant.jsonl)."""
    return [
        ("docker run -d --network host -e QDRANT__INFERENCE__ADDRESS=", "env QDRANT__INFERENCE__ADDRESS="),
        (" qdrant/qdrant:v1.19.1\n",
         f" {sys.executable} {STANDIN} --port 6333 --record qdrant.jsonl > qdrant.log 2>&1 &\n"),
        ("embedrank convert smollm2 models/smollm2", f"mkdir -p models && cp -r {tiny} models/smollm2"),
        ("Qwen/Qwen3-Embedding-0.6B", str(tiny)),
        ("bash scripts/test.sh     # set up .venv, then run the test suite (what CI runs)\n", ""),
        ("bash scripts/demo.sh ",
         "bash scripts/demo.sh --embedder models/embedder --reranker models/reranker "),
    ]


def runnable(text: str, tiny: Path) -> str:
    for old, new in substitutions(tiny):
        assert old in text, f"README no longer contains {old!r}: update tests/test_readme.py"
        text = text.replace(old, new)
    return text


def test_readme_blocks_are_known_languages() -> None:
    langs = {lang for lang, _ in blocks(README.read_text(encoding="utf-8"))}
    assert langs <= {"bash", "python", "js", ""}, langs


def command(lang: str, body: str, work: Path, env: dict) -> list[str]:
    if lang == "bash":
        return ["bash", "-euo", "pipefail", "-c", body]
    if lang == "python":
        return [sys.executable, "-c", body]
    if not (work / "node_modules").is_dir():  # once, in the scratch directory
        npm = subprocess.run(["npm", "install", "--prefix", str(work), "--no-save", "--no-audit",
                              "--no-fund", JS_CLIENT], env=env, capture_output=True, text=True,
                             timeout=300)
        assert npm.returncode == 0, f"npm install {JS_CLIENT} failed:\n{npm.stdout}\n{npm.stderr}"
    return ["node", "--input-type=module", "-e", body]


def test_readme_pins_the_js_client_it_is_tested_with() -> None:
    assert f"npm install {JS_CLIENT}" in README.read_text(encoding="utf-8")


@pytest.mark.slow
def test_every_readme_block_runs_as_written(tiny_ckpt, tmp_path) -> None:
    text = runnable(README.read_text(encoding="utf-8"), tiny_ckpt)
    found = blocks(text)
    # the two commands come first in the README but need the models the rest makes: run them last
    first, rest = found[0], found[1:]
    assert "bash scripts/demo.sh" in first[1]
    work = tmp_path / "work"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "EMBEDRANK_CACHE": str(tmp_path / "cache")}
    ran, groups = 0, []
    try:
        for lang, body in [*rest, first]:
            if lang == "":  # a layout listing, not a program
                continue
            # its own session: what a block leaves running (servers) is stopped at the end
            proc = subprocess.Popen(command(lang, body, work, env), cwd=work, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
            groups.append(proc.pid)
            out, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, f"README block failed:\n{body}\n--- stdout\n{out[-3000:]}" \
                                         f"\n--- stderr\n{err[-3000:]}"
            ran += 1
    finally:
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
    assert ran == sum(1 for lang, _ in found if lang)
    check_qdrant_record(work / "qdrant.jsonl")
    assert (work / "models" / "embedder" / "embedrank.json").is_file()
    assert (work / "m.json").is_file() and (work / "db").is_dir()
    shutil.rmtree(work / "models", ignore_errors=True)


def check_qdrant_record(path: Path) -> None:
    """The stand-in got the three clients' Documents and embedded each through the hook, as
    Qdrant v1.19 sends them ("update"); the reranked queries went through the proxy."""
    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    sent = [e["inference"] for e in entries if "inference" in e]
    texts = ["Qdrant is a vector database", "Paris is in France", "Berlin is in Germany"]
    inputs = [{"data": t, "data_type": "text", "model": "qwen3-embedding", "options": None} for t in texts]
    assert sent == [{"inputs": [i], "inference": "update", "token": None} for i in inputs]
    queries = [e for e in entries if e.get("path") == "/collections/docs/points/query"]
    assert len(queries) == 3 and all(isinstance(q["body"]["query"]["nearest"], list) for q in queries)
