"""Triplet-GMPNN vs MPNN on CLRS, single-task, one algorithm from each of the 8 families, several seeds;
then one Triplet-GMPNN trained on all of them together (the generalist) and its gap to single-task.

Scores are the benchmark's (pointer / class accuracy, mask F1) on out-of-distribution problems of n = 64
after training on n in {4, 7, 11, 13, 16}, beside the paper's averages over all 30 algorithms (Ibarz et al.
2022: Triplet-GMPNN 74.14%, MPNN 44.99%, PGN 50.84%). The paper trains 10,000 steps of batch 32 with
hidden size 128 on accelerators; the defaults here are what two CPU cores allow, so expect far lower scores.

    python experiments/clrs_generalist.py                     # 8 algorithms x 2 processors x 2 seeds, 1 generalist
    python experiments/clrs_generalist.py --steps 20 --seeds 1 --algorithms minimum bfs
Writes results/clrs_generalist.json and results/clrs_generalist.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from chimera.clrs.train import CLRSRunConfig, TrainCLRSConfig, train_clrs

ROOT = Path(__file__).resolve().parents[1]
ONE_PER_FAMILY = ("insertion_sort", "minimum", "find_maximum_subarray_kadane", "activity_selector", "lcs_length",
                  "bfs", "naive_string_matcher", "segments_intersect")
PAPER_AVERAGE_30 = {"triplet_gmpnn": 74.14, "mpnn": 44.99, "pgn": 50.84}


def run(algorithms, processor, seed, a) -> dict:
    cfg = TrainCLRSConfig(algorithms=tuple(algorithms), processor=processor, hidden=a.hidden, steps=a.steps,
                          batch_size=a.batch, eval_every=max(1, a.steps // 3), val_samples=32,
                          test_samples=a.test_samples,
                          run=CLRSRunConfig(name=f"clrs-{processor}-{'+'.join(algorithms)[:40]}-s{seed}", seed=seed,
                                            out_dir=str(ROOT / "runs"), log_every=max(1, a.steps // 5),
                                            ckpt_every=a.steps, plots=False, threads=1))
    return train_clrs(cfg, log=lambda *_: None)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algorithms", nargs="+", default=list(ONE_PER_FAMILY))
    ap.add_argument("--processors", nargs="+", default=["triplet_gmpnn", "mpnn"])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--test-samples", type=int, default=16)
    ap.add_argument("--multitask-seeds", type=int, default=1, help="seeds of the generalist run (0: skip it)")
    ap.add_argument("--out", default=str(ROOT / "results" / "clrs_generalist.json"))
    a = ap.parse_args()
    single: dict = {}
    for algo in a.algorithms:
        for proc in a.processors:
            for seed in range(1, a.seeds + 1):
                t = time.time()
                r = run([algo], proc, seed, a)[algo]
                single.setdefault(algo, {}).setdefault(proc, []).append(r)
                print(f"{algo:<30} {proc:<14} seed {seed}: val {r['val']:.3f}  test(n=64) {r['test']:.3f}  "
                      f"({time.time() - t:.0f} s)", flush=True)
    multi: dict = {}
    if a.multitask_seeds:
        for seed in range(1, a.multitask_seeds + 1):
            res = run(a.algorithms, "triplet_gmpnn", seed, a)
            for algo, r in res.items():
                multi.setdefault(algo, []).append(r)
            print(f"generalist seed {seed}: " + ", ".join(f"{k} {v['test']:.3f}" for k, v in res.items()), flush=True)

    def mean(rs, key="test"):
        return float(np.mean([r[key] for r in rs]))

    table = {algo: {proc: {"test_mean": mean(rs), "test_std": float(np.std([r["test"] for r in rs])),
                           "val_mean": mean(rs, "val")} for proc, rs in procs.items()}
             for algo, procs in single.items()}
    for algo, rs in multi.items():
        table[algo]["generalist_triplet_gmpnn"] = {"test_mean": mean(rs), "val_mean": mean(rs, "val")}
    averages = {proc: float(np.mean([table[al][proc]["test_mean"] for al in table])) for proc in a.processors}
    if multi:
        averages["generalist_triplet_gmpnn"] = float(np.mean([table[al]["generalist_triplet_gmpnn"]["test_mean"]
                                                              for al in table]))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(a), "table": table, "averages": averages,
                               "paper_average_30_algorithms_percent": PAPER_AVERAGE_30,
                               "single": single, "multi": multi}, indent=1) + "\n")
    cols = [*a.processors, *(["generalist_triplet_gmpnn"] if multi else [])]
    lines = [f"# CLRS out-of-distribution (n=64) scores, {a.steps} steps x batch {a.batch}, hidden {a.hidden}, "
             f"{a.seeds} seeds", "", "| algorithm | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for algo, row in table.items():
        lines.append(f"| {algo} | " + " | ".join(f"{100 * row[c]['test_mean']:.1f}" for c in cols) + " |")
    lines.append("| **average (these)** | " + " | ".join(f"{100 * averages[c]:.1f}" for c in cols) + " |")
    lines.append("| paper average (30 algorithms, 10k steps) | " + " | ".join(
        f"{PAPER_AVERAGE_30.get(c.replace('generalist_', ''), float('nan')):.1f}" for c in cols) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
