#!/usr/bin/env bash
# Which merge option keeps what the experts learned? Every option starts from the same four
# experts of a finished `barkit demo` run (RUN, default runs/demo), merges them, trains the
# router and evaluates; results go to OUT (default runs/merge_options), one row per option.
# Options run JOBS at a time (default: one per core, one torch thread each); each option's log
# is OUT/NAME/log.txt. About 2 minutes per option per core.
set -euo pipefail
RUN=${RUN:-runs/demo}
OUT=${OUT:-runs/merge_options}
BARKIT=${BARKIT:-.venv/bin/barkit}
LIMIT=${LIMIT:-50}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$OUT"
experts=()
for d in math code tool_use safety; do
  for stage in rlvr sft; do  # each expert's last stage
    if [ -d "$RUN/experts/$d/$stage" ]; then experts+=("$RUN/experts/$d/$stage"); break; fi
  done
done
echo "experts: ${experts[*]}"

option() {  # name, merge args, route args, [recover]
  local name=$1 merge_args=$2 route_args=$3 recover=${4:-}
  local dir="$OUT/$name"
  [ -f "$dir/scores.json" ] && { echo "[skip] $name"; return; }
  rm -rf "$dir"; mkdir -p "$dir"
  local start="$dir/merged"
  {
    $BARKIT merge "${experts[@]}" --out "$dir/merged" $merge_args
    if [ -n "$recover" ]; then
      $BARKIT recover "$dir/merged" --out "$dir/recovered" --preset tiny
      start="$dir/recovered"
    fi
    $BARKIT route "$start" --out "$dir/routed" --preset tiny $route_args
    $BARKIT eval "$dir/routed" --limit "$LIMIT" --out "$dir/scores.json"
  } > "$dir/log.txt" 2>&1
  echo "[done] $name"
}

names=()
start_option() {  # at most JOBS options at once
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  OMP_NUM_THREADS=$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 )) option "$@" &
  names+=("$1")
}

start_option mean "" ""
start_option ties "--shared ties --base $RUN/base" ""
start_option dare "--shared dare --base $RUN/base" ""
start_option sum "--shared sum --base $RUN/base" ""
start_option anchor-embeddings "--override *embed*=anchor --override lm_head*=anchor --base $RUN/base" ""
start_option domain-loss "" "--domain-loss 1.0"
start_option recover "" "" recover
start_option sum-router-2e-2 "--shared sum --base $RUN/base" "--lr 0.02 --steps 160"
start_option mean-router-2e-2 "" "--lr 0.02 --steps 160"
wait || true
for name in "${names[@]}"; do
  [ -f "$OUT/$name/scores.json" ] || { echo "option $name failed; see $OUT/$name/log.txt" >&2; exit 1; }
done
.venv/bin/python examples/merge_options/summarize.py "$OUT" "$RUN"
