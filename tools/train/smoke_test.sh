#!/usr/bin/env bash
# End-to-end smoke test of the training tools on a fake corpus with a tiny model (CPU is fine, ~2-4 minutes on
# 2 cores): kernel checks, 40 steps, an exact resume to 80 steps (compared with an uninterrupted 80-step run),
# a warm restart from the shipped model folder, evaluation (greedy + beam 4) and scoring / comparison.
#
#   tools/train/smoke_test.sh [WORKDIR]      (default /tmp/elephant_train_smoke)
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${1:-/tmp/elephant_train_smoke}
rm -rf "$W"
mkdir -p "$W"
PY=${PYTHON:-python3}

$PY tools/train/make_fake_corpus.py --out "$W/fake"
$PY tools/train/check_train_kernels.py

COMMON=(--train "$W/fake/corpus/train.tsv.gz" --valid "$W/fake/corpus/valid.tsv.gz" --spm "$W/fake/spiece.model"
        --tiny --max-tokens 3000 --chunk-per-dir 100 --valid-pairs-per-lang 30 --warmup-steps 20
        --log-every 20 --valid-every 40 --total-steps 80 --cache-dir "$W/cache")

# Uninterrupted 80 steps vs 40 + resume to 80: the weights must be bit-identical on the CPU.
$PY tools/train/train.py "${COMMON[@]}" --max-steps 80 --out "$W/full/model"
$PY tools/train/train.py "${COMMON[@]}" --max-steps 40 --out "$W/part/model"
$PY tools/train/train.py "${COMMON[@]}" --max-steps 80 --resume "$W/part/model-state" --out "$W/resumed/model"
$PY - "$W" <<'EOF'
import sys, torch
w = sys.argv[1]
a = torch.load(f"{w}/full/model-state/train_state.pt", weights_only=False)
b = torch.load(f"{w}/resumed/model-state/train_state.pt", weights_only=False)
same = all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
print(f"resume check: step {a['step']} vs {b['step']}, weights identical: {same}")
assert same and a["step"] == b["step"] == 80
EOF

# Warm restart from the shipped fp16 folder (+ train_progress.json), as on a fresh machine.
mkdir -p "$W/warm"
cp "$W/part/model/"* "$W/part/model-state/train_progress.json" "$W/warm/"
$PY tools/train/train.py "${COMMON[@]}" --max-steps 60 --rewarmup-steps 10 --resume "$W/warm" --out "$W/warmed/model"

# Evaluate twice (different batch sizes) and compare: transformers should agree with itself.
$PY tools/train/evaluate.py "$W/full/model" --test-dir "$W/fake/test" --out "$W/eval_a" --max-sentences 8 \
    --max-new-tokens 24 --batch-size 16
$PY tools/train/evaluate.py "$W/full/model" --test-dir "$W/fake/test" --out "$W/eval_b" --max-sentences 8 \
    --max-new-tokens 24 --batch-size 3
$PY tools/train/score.py "$W/eval_b" --refs "$W/eval_a" --compare "$W/eval_a" --json "$W/compare.json"
echo "smoke test OK ($W)"
