# Sourced by debian_pipeline.sh and bench_lane.sh (both set W): one timed, logged step.
step() {  # step NAME CMD...: run, log to $W/logs/NAME.log, time into $W/times.jsonl
  local name=$1; shift; local t0=$SECONDS
  echo "$(date +%T) start $name"; "$@" > "$W/logs/$name.log" 2>&1; local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" >> "$W/times.jsonl"
  echo "$(date +%T) done $name rc=$rc"; return $rc
}
