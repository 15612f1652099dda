#!/usr/bin/env bash
# The demo: train a tiny hybrid Mamba/attention/MoE model (pattern MEM*ME) to think step by step on
# held-out addition and sorting problems, then ask it one question and print the per-task accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=runs
$BIN/chimera train-lm --preset configs/demo.json --run.out-dir "$OUT"
RUN=$(ls -td "$OUT"/demo-* | head -n 1)
echo
echo "== a held-out question, answered by the trained model (greedy, thinking shown) =="
$BIN/chimera generate "$RUN/model" --prompt "407+61=" --show-special
echo
echo "== final metrics ($RUN) =="
$BIN/chimera report "$RUN" | grep -E "eval/|train_loss|wrote"
