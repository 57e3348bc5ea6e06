#!/usr/bin/env bash
# Set up (if needed) and run the end-to-end demo on Qdrant local mode:
#   bash scripts/demo.sh [--embedder DIR --reranker DIR] [--path DB]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
embedrank demo "$@"
