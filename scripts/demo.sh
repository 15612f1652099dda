#!/usr/bin/env bash
# The flagship demo (make demo): the Nemotron 3 recipe in miniature on one hybrid Mamba-Transformer MoE model
# with MTP layers (tiny-mtp, pattern MEM*ME/*E/*E): pretraining on synthetic corpora -> SFT with reasoning
# traces and budget-control data -> multi-environment RL (reasoning, CLRS as text, calculator tool use,
# MiniHack Room-5x5, JSON) -> pruning + distillation to a smaller student -> serving checks (thinking budget,
# speculative decoding on the MTP layers). About 15-20 minutes on 2 cores. The pipeline writes
# runs/flagship/flagship.json and results/demo.json; this script adds the wall time it measured and copies
# the accuracy-per-stage and accuracy-vs-budget plots to results/demo_stages.png and results/demo_budget.png.
# Interrupted? Run it again: finished stages are reused, an interrupted one resumes from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/flagship}
RESULTS=results/demo.json

T0=$(date +%s.%N)
$BIN/python -m chimera flagship --preset configs/flagship.json --run.out-dir "$OUT" --run.results "$RESULTS"
WALL=$(awk "BEGIN { print $(date +%s.%N) - $T0 }")
$BIN/python - "$RESULTS" "$WALL" <<'PY'
import json, shutil, sys
path, wall = sys.argv[1], float(sys.argv[2])
r = json.load(open(path))
r["wall_s"] = round(wall, 1)  # this invocation of scripts/demo.sh; stages_total_s sums the stages over resumes
# the two summary plots beside the results (the learning curves stay in the stages' run directories)
for key, name in (("accuracy_per_stage", "results/demo_stages.png"), ("accuracy_vs_budget", "results/demo_budget.png")):
    if r["plots"].get(key):
        shutil.copyfile(r["plots"][key][0], name)
        r["plots"][key] = [*r["plots"][key], name]
json.dump(r, open(path, "w"), indent=2)
open(path, "a").write("\n")
print(f"wall time {wall / 60:.1f} min (stages {r['stages_total_s'] / 60:.1f} min); results: {path}")
PY
