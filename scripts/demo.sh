#!/usr/bin/env bash
# The flagship demo (make demo): one agent with the hybrid Mamba / MoE core, trained with ESPO on
# MiniHack Room-5x5, MiniHack Room-Dark-5x5 (unlit: the agent sees only the squares next to it) and
# CartPole at once (about 15 minutes on 2 cores), then evaluated on fresh seeded episodes: a table
# of per-environment return and success, and the plots.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=runs
$BIN/chimera train-rl --preset configs/demo.json --run.out-dir "$OUT"
RUN=$(ls -td "$OUT"/demo-2* | head -n 1)
echo
echo "== evaluation: 20 fresh episodes per environment ($RUN) =="
$BIN/chimera eval-rl "$RUN" --episodes 20
echo
echo "learning curves: $RUN/plots/charts.png (per-environment return and success), $RUN/plots/losses.png"
echo "watch an episode: $BIN/chimera eval-rl $RUN --episodes 1 --render"
