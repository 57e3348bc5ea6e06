#!/usr/bin/env bash
# Device side of benchmarks/gpu_bench.py (docs/performance.md), for a GPU machine without network:
# onnxruntime-gpu from a wheel carried in pieces of at most 52 MB (`split -b 52M -d -a 1 WHEEL part`,
# piece N in .whlparts/N/partN; .whlparts/WHEEL holds "FILENAME SHA256"), embedrank from this
# tree, the Qwen3 tokenizer files from .gpubench/tok.tgz.
# Usage: bash benchmarks/gpu_bench.sh piece           (stash the carried piece; one call per piece)
#        bash benchmarks/gpu_bench.sh STEP [ARGS...]  (install if needed, then gpu_bench STEP)
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
mkdir -p /tmp/ortparts
for p in .whlparts/[0-9]/part*; do if [ -f "$p" ]; then cp -n "$p" /tmp/ortparts/; fi; done
ls /tmp/ortparts
if [ "$1" = piece ]; then exit 0; fi
whl=/tmp/$(cut -d' ' -f1 .whlparts/WHEEL 2>/dev/null || echo onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl)
if [ ! -d /tmp/ortgpu/onnxruntime ]; then
  cat /tmp/ortparts/part0 /tmp/ortparts/part1 /tmp/ortparts/part2 /tmp/ortparts/part3 \
      /tmp/ortparts/part4 > "$whl"
  python3 -m pip install -q --no-deps --no-index --no-compile --target /tmp/ortgpu "$whl"
fi
python3 -m pip install -q --no-deps --no-index --no-build-isolation -e . >/dev/null
nv=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')
export LD_LIBRARY_PATH=$(find "$nv" -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd:):${LD_LIBRARY_PATH:-}
export PYTHONPATH=/tmp/ortgpu:${PYTHONPATH:-}
python3 -c 'import onnxruntime as o, onnxscript, onnx_ir, transformers, torch; print(o.__version__, o.get_available_providers(), onnxscript.__version__, onnx_ir.__version__, transformers.__version__, torch.__version__)'
# embedrank's custom-op library, built here by `embedrank ops build --cuda --arch 90 --out ...`
if [ -f .gpubench/ops/libembedrank_ops_cuda.so ]; then
  export EMBEDRANK_OPS_LIBRARY=$PWD/.gpubench/ops/libembedrank_ops_cuda.so
fi
mkdir -p /tmp/gb
[ -d /tmp/gb/tok ] || tar xzf .gpubench/tok.tgz -C /tmp/gb
python3 benchmarks/gpu_bench.py "$@" --work /tmp/gb --tokenizer /tmp/gb/tok --json /tmp/gb/result.json
