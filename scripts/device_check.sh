#!/usr/bin/env bash
# The GPU checks as one prepared run on a lent GPU machine (the session's device tool): the tests marked
# gpu plus the device-map tests, and the three benchmarks on the 0.5B model's architecture with random
# weights (the real weights are over the 64 MiB a call carries; speed does not depend on their values).
# The machine has torch, accelerate, peft, jaxtyping and an older transformers; it reaches no registry.
#
# Prepare here, once per session:
#   printf '/.whl/\n/.device/\n' >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl transformers==5.23.0 plotly==7.1.0 narwhals==2.29.0 beartype==0.23.1
#   mkdir -p .device/qwen05 && (cd ~/.cache/harc_interp/models/qwen2.5-coder-0.5b-instruct && cp config.json \
#       generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja "$OLDPWD/.device/qwen05")
# then run there (carry .whl and .device):  bash scripts/device_check.sh
# Everything it prints is also written under $OUT (tests.txt and one JSON file per benchmark).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/harc_device_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "carry .whl (see the top of this script)"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_device_map.py 2>&1 \
    | tail -30 | tee "$OUT/tests.txt"
M=(--model .device/qwen05 --random-weights --device cuda --dtype bfloat16)
timeout 180 python3 scripts/bench_cache.py "${M[@]}" --n 512 --batch-size 64 --memory-counts 64 4096 \
    | tee "$OUT/bench_cache.json"
timeout 150 python3 scripts/bench_generate.py "${M[@]}" --n 256 --batch-size 64 --new-tokens 64 \
    | tee "$OUT/bench_generate.json"
timeout 90 python3 scripts/bench_train_step.py "${M[@]}" --batch-size 16 --response-tokens 128 \
    | tee "$OUT/bench_train_step.json"
# GCG candidates/s with batched candidate evaluation (random weights never comply: the whole budget runs)
python3 - <<'PY'
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
cfg = AutoConfig.from_pretrained(".device/qwen05")
AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained("/tmp/qwen05-random")
AutoTokenizer.from_pretrained(".device/qwen05").save_pretrained("/tmp/qwen05-random")
PY
timeout 120 python3 -m harc_interp.cli attack --model /tmp/qwen05-random --device cuda --dtype bfloat16 --quiet \
    --method gcg --goals starter:harmful --limit 2 --steps 8 --candidates 256 --batch-size 256 \
    --out /tmp/gcg | tee "$OUT/gcg.json"
