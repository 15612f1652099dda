#!/usr/bin/env bash
# The agents demo (make demo-agents): one agent with the hybrid Mamba / MoE core, trained with ESPO on
# MiniHack Room-5x5, MiniHack Room-Dark-5x5 (unlit: the agent sees only the squares next to it) and
# CartPole at once (about 15 minutes on 2 cores), then evaluated on fresh seeded episodes: a table
# of per-environment return and success, the plots, and results/demo_agents.json (written by
# scripts/demo_report.py from the run: training curve, evaluation, a random policy, the time taken).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=runs

TIMES=$(mktemp)
T0=$(date +%s.%N)
$BIN/chimera train-rl --preset configs/demo.json --run.out-dir "$OUT"
WALL=$(awk "BEGIN { print $(date +%s.%N) - $T0 }")
times > "$TIMES"  # in this shell: its 2nd line is the user and system time of the finished children
CPU=$(awk 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { split($i, p, "m"); s += p[1] * 60 + p[2] } print s }' "$TIMES")
rm -f "$TIMES"
RUN=$(ls -td "$OUT"/demo-2* | head -n 1)
echo
echo "== evaluation: 20 fresh episodes per environment ($RUN) =="
$BIN/python scripts/demo_report.py "$RUN" --wall-s "$WALL" --cpu-s "$CPU"
echo
echo "learning curves: $RUN/plots/charts.png (per-environment return and success), $RUN/plots/losses.png"
echo "results: results/demo_agents.json"
echo "watch an episode: $BIN/chimera eval-rl $RUN --episodes 1 --render"
