"""``clrs/<algorithm>``: CLRS problems as text. Inputs come from ``chimera.clrs.samplers`` (the
benchmark's distributions), quantised to small integers so they can be written and read exactly;
the expected answer is derived from the algorithm's own output on the quantised inputs (the sorted
array, the BFS / shortest-path tree's distances, the LCS direction table's length, the matrix-chain
split table's cost, Kadane's sum)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from chimera.clrs.algorithms import ALGORITHMS
from chimera.clrs.samplers import sample_inputs
from chimera.posttrain.envs.base import SingleTurnEnv

SIZES = (4, 5, 6, 7)
"""Problem sizes (nodes, keys, letters) drawn per problem."""


def _edges(A: np.ndarray, weighted: bool) -> str:
    n = A.shape[0]
    out = [f"{i}-{j}" + (f":{int(A[i, j])}" if weighted else "") for i in range(n) for j in range(i + 1, n) if A[i, j]]
    return " ".join(out) or "none"


def _tree_distances(pi: np.ndarray, s: int, weight) -> list[str]:
    """Distances from s along the predecessor tree ``pi`` (pi[v] == v: unreachable, 'inf')."""
    n = len(pi)
    dist: dict[int, int] = {s: 0}

    def d(v: int, seen: int = 0) -> int | None:
        if v in dist:
            return dist[v]
        if int(pi[v]) == v or seen > n:
            return None
        up = d(int(pi[v]), seen + 1)
        dist[v] = None if up is None else up + weight(int(pi[v]), v)
        return dist[v]

    return ["inf" if d(v) is None else str(d(v)) for v in range(n)]


def _lcs_length(b: np.ndarray, x: np.ndarray, y: np.ndarray) -> int:
    """The LCS length read off the direction table (0: diagonal, 1: up, 2: left)."""
    i, j, k = len(x) - 1, len(y) - 1, 0
    while i >= 0 and j >= 0:
        if b[i, j] == 0:
            k += int(x[i] == y[j])
            i, j = i - 1, j - 1
        elif b[i, j] == 1:
            i -= 1
        else:
            j -= 1
    return k


def _chain_cost(s: np.ndarray, p: np.ndarray) -> int:
    """The multiplications of the parenthesisation given by the split table (s[i-1, j-1] splits A_i..A_j)."""
    def cost(i: int, j: int) -> int:
        if i == j:
            return 0
        k = int(s[i - 1, j - 1])
        return cost(i, k) + cost(k + 1, j) + int(p[i - 1] * p[k] * p[j])

    return cost(1, len(p) - 1)


LETTERS = "ACGT"


def render(algorithm: str, n: int, rng: np.random.Generator) -> tuple[str, str]:
    """A problem of ``algorithm`` on n items as text, and its answer from the algorithm's output."""
    args = sample_inputs(algorithm, n, rng)
    run = ALGORITHMS[algorithm]
    if algorithm in ("insertion_sort", "bubble_sort", "heapsort", "quicksort"):
        keys = np.floor(args[0] * 100).astype(int)
        out, _ = run(keys.astype(float))
        return f"{algorithm} " + " ".join(map(str, keys)), " ".join(str(int(v)) for v in out)
    if algorithm == "bfs":
        A, s = args
        pi, _ = run(A, s)
        return (f"bfs hops from {s}; edges {_edges(A, False)}; nodes 0..{n - 1}",
                " ".join(_tree_distances(pi, s, lambda u, v: 1)))
    if algorithm in ("dijkstra", "bellman_ford"):
        W, s = args
        A = np.ceil(W * 9) * (W > 0)
        pi, _ = run(A, s)
        return (f"{algorithm} distances from {s}; edges {_edges(A, True)}; nodes 0..{n - 1}",
                " ".join(_tree_distances(pi, s, lambda u, v: int(A[u, v]))))
    if algorithm == "lcs_length":
        x, y = args
        b, _ = run(x, y)
        xs, ys = "".join(LETTERS[c] for c in x), "".join(LETTERS[c] for c in y)
        return f"lcs length of {xs} and {ys}", str(_lcs_length(b, x, y))
    if algorithm == "matrix_chain_order":
        p = np.floor(args[0] * 9).astype(int) + 1
        s, _ = run(p.astype(float))
        return "matrix chain min cost dims " + " ".join(map(str, p)), str(_chain_cost(s, p))
    if algorithm == "find_maximum_subarray_kadane":
        a = np.round(args[0] * 9).astype(int)
        (_, _, best), _ = run(a.astype(float))
        return "max subarray sum " + " ".join(map(str, a)), str(int(best))
    raise ValueError(f"clrs/{algorithm} has no text rendering (available: {', '.join(ALGOS)})")


ALGOS = ("insertion_sort", "bubble_sort", "heapsort", "quicksort", "bfs", "dijkstra", "bellman_ford", "lcs_length",
         "matrix_chain_order", "find_maximum_subarray_kadane")


class CLRSEnv(SingleTurnEnv):
    """One CLRS problem as text; the answer must equal the one the algorithm's output gives."""

    def __init__(self, algorithm: str):
        super().__init__()
        if algorithm not in ALGOS:
            raise ValueError(f"clrs/{algorithm} has no text rendering (available: {', '.join(ALGOS)})")
        self.id, self.algorithm = f"clrs/{algorithm}", algorithm

    def sample(self, rng: random.Random) -> tuple[str, Any]:
        n = rng.choice(SIZES)
        return render(self.algorithm, n, np.random.default_rng(rng.randrange(2**63)))

    def solution(self, problem: str) -> tuple[str, str]:
        return "", problem

    def check(self, problem: str, answer: str) -> dict[str, float]:
        return {"correct": float(answer.split() == problem.split())}


IDS = [f"clrs/{a}" for a in ALGOS]
