#!/usr/bin/env bash
# Device side of benchmarks/bench_gpu.py: `embedrank bench --against all` on random Qwen3-0.6B
# weights (docs/bench.md). Run from the repository root with $OUT set; onnxruntime-gpu (and the
# rest: torch, transformers, onnxscript) already importable, e.g. a `pip install --target DIR`
# on PYTHONPATH. Installs this tree (editable, no network), then calls bench_gpu.py.
# Usage: bash benchmarks/bench_gpu.sh [all|prepare|fixed|mixed] [--cpu] [bench_gpu.py options]
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
OUT=${OUT:-$PWD/bench_gpu_out}
export OUT
mkdir -p "$OUT"
py=${PYTHON:-python3}
here=$($py -c 'import importlib.util as u, pathlib as p; s = u.find_spec("embedrank"); print(p.Path(s.origin).parents[1] if s else "")' 2>/dev/null || true)
if [ "$here" != "$PWD" ]; then
  $py -m pip install -q --no-deps --no-index --no-build-isolation -e . >/dev/null
fi
# CUDA wheels of torch ship their libraries under nvidia/: let ONNX Runtime's CUDA provider find them
if nv=$($py -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null); then
  export LD_LIBRARY_PATH=$(find "$nv" -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd:):${LD_LIBRARY_PATH:-}
fi
$py -c 'import onnxruntime as o, torch, transformers; print("onnxruntime", o.__version__, o.get_available_providers(), "torch", torch.__version__, "transformers", transformers.__version__)'
step=${1:-all}
shift || true
$py benchmarks/bench_gpu.py "$step" --out "$OUT" "$@" 2>&1 | tee -a "$OUT/bench_gpu.log"
