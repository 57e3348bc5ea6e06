"""Every code block of README.md runs as written, in order, in one scratch directory.

Where the README names a real model, the test puts a tiny one in its place (the substitutions
below, each of which must still match the README: a changed line fails here, not silently).
`bash scripts/test.sh` is not run from inside the suite it starts; it is what CI runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
LINKED = ("scripts", "docker", ".venv")  # the scratch directory sees the checkout's through links


def blocks(text: str) -> list[tuple[str, str]]:
    return [(lang, body) for lang, body in FENCE.findall(text)]


def substitutions(tiny: Path) -> list[tuple[str, str]]:
    """(README text, what the test runs instead): real models -> tiny ones."""
    return [
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
    assert langs <= {"bash", "python", ""}, langs


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
    ran = 0
    for lang, body in [*rest, first]:
        if lang == "":  # a layout listing, not a program
            continue
        cmd = ["bash", "-euo", "pipefail", "-c", body] if lang == "bash" else [sys.executable, "-c", body]
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"README block failed:\n{body}\n--- stdout\n{done.stdout[-3000:]}" \
                                     f"\n--- stderr\n{done.stderr[-3000:]}"
        ran += 1
    assert ran == sum(1 for lang, _ in found if lang)
    assert (work / "models" / "embedder" / "embedrank.json").is_file()
    assert (work / "m.json").is_file() and (work / "db").is_dir()
    shutil.rmtree(work / "models", ignore_errors=True)
