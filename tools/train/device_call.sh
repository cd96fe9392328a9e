#!/usr/bin/env bash
# One training call on the GPU machine (a device call holds at most 10 minutes). Trains from scratch, or continues
# the previous call: exactly from build/train/model-state while the machine stayed warm, else by a warm restart from
# build/warm (the previous call's fp16 model, reassembled here and carried). Packs what must come back into $OUT
# (the device tool returns at most 8 files of 16 MiB): the log, the model in 15 MB parts, its small files in one tar.
#
#   tools/train/device_call.sh CALL TIME_BUDGET_S TOTAL_TIME_S [--golden] [train.py flags...]
#
# --golden also writes $OUT/transformers_outputs.json (tools/train/make_demo_golden.py on the trained model).
set -euo pipefail
cd "$(dirname "$0")/../.."
call=$1 budget=$2 total=$3
shift 3
golden=0
if [ "${1:-}" = --golden ]; then golden=1; shift; fi
out=${OUT:?run on the device machine}

resume=()
if [ -f build/train/model-state/train_state.pt ]; then
  resume=(--resume build/train/model-state)
elif [ -f build/warm/config.json ]; then
  resume=(--resume build/warm)
fi
echo "call $call: ${resume[*]:-fresh model}"
PYTHONUNBUFFERED=1 python3 tools/train/train.py --time-budget-s "$budget" --total-time-s "$total" \
  --languages-json models/demo/languages.json --out build/train/model "${resume[@]}" "$@" >"$out/train$call.log" 2>&1 ||
  { tail -30 "$out/train$call.log"; exit 1; }

cp build/train/model-state/train_progress.json build/train/model/
tar -C build/train/model -cf "$out/model_small.tar" --exclude model.safetensors .
split -b 15M -d build/train/model/model.safetensors "$out/model.safetensors.part"
if [ $golden = 1 ]; then
  python3 tools/train/make_demo_golden.py --model build/train/model --out "$out/transformers_outputs.json"
fi
grep -E "model:|training:|valid step|stopped|saved" "$out/train$call.log" | cut -c1-220
