#!/usr/bin/env bash
# The language-model demo (make demo-lm): train a tiny hybrid Mamba/attention/MoE model (pattern MEM*ME) to
# think step by step on held-out addition and sorting problems, then ask it one question.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=runs
$BIN/chimera train-lm --preset configs/demo-lm.json --run.out-dir "$OUT"
RUN=$(ls -td "$OUT"/demo-lm-* | head -n 1)
echo
echo "== a held-out question, answered by the trained model (greedy, thinking shown) =="
$BIN/chimera generate "$RUN/model" --prompt "407+61="
$BIN/python scripts/demo_lm_summary.py "$RUN"
echo
echo "== final metrics ($RUN) =="
$BIN/chimera report "$RUN" | grep -E "eval/|train_loss|wrote"
