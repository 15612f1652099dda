"""Compare chimera.clrs against the official CLRS implementation, probe for probe.

Not part of the test suite: the official package (dm-clrs) drags TensorFlow and JAX, so it lives
in a scratch environment. Run it there with this repository on the path, e.g.

    python -m venv /work/scratch/clrs-venv && /work/scratch/clrs-venv/bin/pip install dm-clrs
    PYTHONPATH=. /work/scratch/clrs-venv/bin/python scripts/clrs_parity.py --samples 200

For every algorithm both implementations run on the same random inputs (several sizes, ties
included); the spec tables, results, and every probe's type, shape, dtype kind and values must
match exactly. Writes results/clrs_parity.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from chimera.clrs import specs as ours_specs
from chimera.clrs.algorithms import ALGORITHMS

ROOT = Path(__file__).resolve().parents[1]


def random_inputs(name: str, n: int, rng: np.random.Generator) -> tuple:
    u = lambda k: rng.uniform(size=k)  # noqa: E731
    ties = lambda k: rng.integers(0, max(2, k // 2), size=k).astype(float)  # noqa: E731
    if name in ("insertion_sort", "bubble_sort", "heapsort", "quicksort", "minimum", "quickselect"):
        return (ties(n) if rng.random() < 0.3 else u(n),)
    if name == "binary_search":
        A = np.sort(u(n))
        return (float(rng.choice(A)) if rng.random() < 0.5 else float(rng.uniform()), A)
    if name == "find_maximum_subarray_kadane":
        return (rng.uniform(-1, 1, n),)
    if name == "activity_selector":
        s = u(n)
        return (s, s + rng.uniform(0, 0.3, n))
    if name == "task_scheduling":
        return (rng.integers(1, n + 1, n), u(n))
    if name == "matrix_chain_order":
        return (rng.integers(1, 10, n).astype(float),)
    if name == "lcs_length":
        return (rng.integers(0, 4, n), rng.integers(0, 4, max(1, n // 2)))
    if name == "optimal_bst":
        w = u(2 * n + 1)
        w /= w.sum()
        return (w[:n], w[n:])
    if name in ("naive_string_matcher", "kmp_matcher"):
        m = max(1, n // 4)
        T, P = rng.integers(0, 4, n), rng.integers(0, 4, m)
        if name == "naive_string_matcher" or rng.random() < 0.9:  # planted, as the benchmark's sampler does
            s = int(rng.integers(0, n - m + 1))
            T[s:s + m] = P
        return (T, P)
    if name == "segments_intersect":
        if rng.random() < 0.3:  # collinear / touching cases
            xs = rng.integers(0, 3, 4).astype(float)
            return (xs, 2 * xs + 1)
        return (u(4), u(4))
    if name in ("graham_scan", "jarvis_march"):
        if name == "jarvis_march" and rng.random() < 0.3:  # (the official Graham scan loops forever on these)
            return (rng.integers(0, 3, n).astype(float), rng.integers(0, 3, n).astype(float))
        return (u(n), u(n))
    if name in GRAPH_ALGOS:
        p = rng.uniform(0.1, 0.9)
        A = (rng.random((n, n)) < p).astype(float) * rng.uniform(0.05, 1.0, (n, n))
        np.fill_diagonal(A, 0)
        if name in ("articulation_points", "bridges", "mst_kruskal", "mst_prim"):
            A = np.triu(A) + np.triu(A).T
        if name in ("topological_sort", "dag_shortest_paths"):
            A = np.triu(A)
        if name in ("dfs", "bfs", "topological_sort", "articulation_points", "bridges",
                    "strongly_connected_components"):
            A = (A > 0).astype(float)
        takes_source = name in ("bfs", "mst_prim", "bellman_ford", "dijkstra", "dag_shortest_paths")
        return (A, int(rng.integers(0, n))) if takes_source else (A,)
    raise KeyError(name)


GRAPH_ALGOS = ("dfs", "bfs", "topological_sort", "articulation_points", "bridges", "strongly_connected_components",
               "mst_kruskal", "mst_prim", "bellman_ford", "dijkstra", "dag_shortest_paths", "floyd_warshall")


def compare(a, b, where: str) -> list[str]:
    errors = []
    if isinstance(a, dict):
        if set(a) != set(b):
            return [f"{where}: keys {sorted(a)} vs {sorted(b)}"]
        for k in a:
            errors += compare(a[k], b[k], f"{where}.{k}")
        return errors
    if isinstance(a, (tuple, list)):
        for i, (x, y) in enumerate(zip(a, b)):
            errors += compare(x, y, f"{where}[{i}]")
        return errors
    if isinstance(a, str):
        return [] if a == b else [f"{where}: {a!r} vs {b!r}"]
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        return [f"{where}: shape {x.shape} vs {y.shape}"]
    if x.dtype.kind != y.dtype.kind and not (x.dtype.kind in "iu" and y.dtype.kind in "iu"):
        return [f"{where}: dtype {x.dtype} vs {y.dtype}"]
    if not np.array_equal(x, y):
        return [f"{where}: values differ (max |diff| {np.max(np.abs(x.astype(float) - y.astype(float)))})"]
    return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=100, help="random inputs per algorithm")
    ap.add_argument("--only", nargs="*", default=None, help="algorithms to compare (default: all implemented)")
    ap.add_argument("--out", default=str(ROOT / "results" / "clrs_parity.json"))
    a = ap.parse_args()
    from clrs._src import algorithms as official
    from clrs._src import specs as official_specs

    same_specs = {k: dict(official_specs.SPECS[k]) for k in official_specs.CLRS_30_ALGS} == \
        {k: dict(v) for k, v in ours_specs.SPECS.items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    report = {"command": " ".join(sys.argv), "commit": commit.stdout.strip(),
              "dm_clrs": importlib.metadata.version("dm-clrs"), "spec_table_equal": same_specs, "algorithms": {}}
    rng = np.random.default_rng(0)
    for name, ours in ALGORITHMS.items():
        if a.only and name not in a.only:
            continue
        ref = getattr(official, name)
        failures = []
        for t in range(a.samples):
            n = int(rng.choice([4, 5, 7, 11, 16]))
            args = random_inputs(name, n, rng)
            r_ours, p_ours = ours(*[np.copy(x) if isinstance(x, np.ndarray) else x for x in args])
            r_ref, p_ref = ref(*[np.copy(x) if isinstance(x, np.ndarray) else x for x in args])
            errs = compare(r_ours, r_ref, "result") + compare(p_ours, p_ref, "probes")
            if errs:
                failures.append({"sample": t, "n": n, "errors": errs[:5]})
        report["algorithms"][name] = {"samples": a.samples, "mismatches": len(failures), "first": failures[:2]}
        print(f"{name:<30} {a.samples - len(failures)}/{a.samples} identical", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"spec table identical: {report['spec_table_equal']}")


if __name__ == "__main__":
    main()
