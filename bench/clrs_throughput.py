"""CLRS throughput: sampler samples/s (chimera vs the official dm-clrs sampler, side by side when it is
importable) and training steps/s of the learners.

    python bench/clrs_throughput.py --part train          # in the project venv (needs torch)
    PYTHONPATH=. /tmp/clrs_venv/bin/python bench/clrs_throughput.py --part sampler   # where dm-clrs is installed

Sampler timing builds 1000 problems of n = 16 per algorithm (inputs drawn, algorithm run with its probes,
everything batched) with the official sampler's default edge probabilities; the official figure is ~0.6 s
per 1000 at n = 16. Results are merged into
results/clrs_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ("insertion_sort", "quicksort", "minimum", "find_maximum_subarray_kadane", "activity_selector",
         "lcs_length", "bfs", "dfs", "dijkstra", "floyd_warshall", "mst_kruskal", "kmp_matcher", "graham_scan",
         "strongly_connected_components")


# build_sampler's own edge probabilities (our training default draws p from 0.1..0.9 instead)
OFFICIAL_P = {"mst_kruskal": (0.2,), "articulation_points": (0.2,), "bridges": (0.2,)}


def time_ours(algorithm: str, n: int, samples: int) -> float:
    from chimera.clrs.samplers import Sampler, collate

    t = time.perf_counter()
    s = Sampler(algorithm, n, samples, seed=0, p=OFFICIAL_P.get(algorithm, (0.5,)))
    collate(algorithm, s._data)
    return time.perf_counter() - t


def time_official(algorithm: str, n: int, samples: int) -> float | None:
    try:
        from clrs._src import samplers
    except ImportError:
        return None
    t = time.perf_counter()
    samplers.build_sampler(algorithm, num_samples=samples, length=n, seed=0)
    return time.perf_counter() - t


def bench_sampler(n: int, samples: int) -> dict:
    out = {}
    for a in ALGOS:
        ours, theirs = time_ours(a, n, samples), time_official(a, n, samples)
        out[a] = {"chimera_s": ours, "official_s": theirs,
                  "speedup": (theirs / ours) if theirs else None}
        print(f"{a:<32} chimera {ours:6.2f} s" + (f"  official {theirs:6.2f} s  ({theirs / ours:.2f}x)"
                                                    if theirs else ""), flush=True)
    return {"n": n, "samples": samples, "algorithms": out}


def bench_train(steps: int, hidden: int, batch: int) -> dict:
    import torch

    from chimera.clrs.model import ModelConfig, categories
    from chimera.clrs.train import Learner, _train_sampler, batch_loss

    torch.set_num_threads(1)
    out = {}
    for a in ("insertion_sort", "bfs", "dijkstra", "kmp_matcher"):
        sampler = _train_sampler(a, 16, 0)
        b = sampler.batch(batch)
        for proc in ("mpnn", "pgn", "triplet_gmpnn"):
            model = Learner((a,), ModelConfig(processor=proc, hidden=hidden), {a: categories(a, b)})
            opt = torch.optim.Adam(model.parameters())
            t = time.perf_counter()
            for _ in range(steps):
                loss, _ = batch_loss(model.nets[a], sampler.batch(batch))
                opt.zero_grad()
                loss.backward()
                opt.step()
            rate = steps / (time.perf_counter() - t)
            out[f"{a}/{proc}"] = rate
            print(f"{a:<20} {proc:<14} {rate:.2f} steps/s (batch {batch}, hidden {hidden}, n=16)", flush=True)
    return {"hidden": hidden, "batch": batch, "threads": 1, "steps_per_s": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["sampler", "train"], required=True)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "results" / "clrs_throughput.json"))
    a = ap.parse_args()
    path = Path(a.out)
    result = json.loads(path.read_text()) if path.exists() else {}
    result[a.part] = bench_sampler(16, a.samples) if a.part == "sampler" else bench_train(a.steps, a.hidden, a.batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
