"""Inputs drawn from the CLRS benchmark's distributions, and batches of probed trajectories.

Distributions (per algorithm, as in the benchmark): uniform [0, 1) keys for sorting, searching
(with a sorted array and a uniform target) and the matrix-chain dimensions; [-1, 1) for Kadane;
random strings over 4 letters (LCS splits n into n - n // 2 and n // 2; the matchers plant a
needle of n // 5, or a random length 1..-length_needle, in a haystack of the rest); normalised
probabilities for the optimal BST; Erdős-Rényi graphs whose edge probability is drawn per graph
from ``p`` (the training default 0.1..0.9, halved for articulation points, bridges and
Kruskal), undirected unless the algorithm needs direction (DFS, topological sort, DAG shortest
paths, and the four-community graphs of SCC); weights uniform, symmetrised as sqrt(w w^T + 1e-3)
for undirected graphs; convex-hull points uniform in a disc of radius 2 with no three collinear;
and intersecting or non-intersecting segment pairs with equal probability.

Split sizes of the benchmark: train 1000 samples at n = 16 (the generalist trains on 4, 7, 11,
13, 16), validation 32 at n = 16, test 32 at n = 64; some algorithms multiply the sample count
(``SAMPLE_MULTIPLIER``). Everything is deterministic from the seed.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from dataclasses import dataclass

import numpy as np

from chimera.clrs.algorithms import ALGORITHMS
from chimera.clrs.specs import SPECS, Stage

TRAIN_SIZES = (4, 7, 11, 13, 16)
VAL_SIZE, TEST_SIZE = 16, 64
SPLITS = {"train": (1000, 16, 1), "val": (32, 16, 2), "test": (32, 64, 3)}  # samples, n, seed
SAMPLE_MULTIPLIER = {"find_maximum_subarray_kadane": 32,
                     **dict.fromkeys(("quickselect", "minimum", "binary_search", "naive_string_matcher",
                                      "kmp_matcher", "segments_intersect"), 64)}
TRAIN_P = tuple(0.1 + 0.1 * i for i in range(9))
SPARSE = ("articulation_points", "bridges", "mst_kruskal")  # long trajectories on dense graphs: p halved


def default_p(algorithm: str) -> tuple[float, ...]:
    return tuple(x / 2 for x in TRAIN_P) if algorithm in SPARSE else TRAIN_P


# ---- input generators ---------------------------------------------------------------------------------------
def _er_graph(rng, n, p, directed=False, acyclic=False, weighted=False):
    mat = rng.binomial(1, p, size=(n, n))
    if not directed:
        mat *= mat.T
    elif acyclic:
        mat = np.triu(mat, k=1)
        perm = rng.permutation(n)  # hide the order
        mat = mat[perm][:, perm]
    if weighted:
        w = rng.uniform(size=(n, n))
        if not directed:
            w = np.sqrt(w * w.T + 1e-3)
        mat = mat.astype(float) * w
    return mat


def _community_graph(rng, n, p, k=4, eps=0.01):
    """k directed ER communities plus sparse links from earlier to later communities only."""
    mat = np.zeros((n, n))
    bounds = [i * (n // k) for i in range(k)] + [n]
    for lo, hi in itertools.pairwise(bounds):
        mat[lo:hi, lo:hi] = _er_graph(rng, hi - lo, p, directed=True)
    toggle = _er_graph(rng, n, eps, directed=True).astype(float)
    for i in range(k):
        for j in range(i):
            toggle[bounds[i]:bounds[i + 1], bounds[j]:bounds[j + 1]] = 0
    mat = np.where(toggle > 0, (1.0 - (mat > 0)) * toggle, mat)
    perm = rng.permutation(n)
    return mat[perm][:, perm]


def _hull_points(rng, n, radius=2.0, eps=1e-12, attempts=1000):
    for _ in range(attempts):
        theta = rng.uniform(0, 2 * np.pi, n)
        r = radius * np.sqrt(rng.uniform(size=n))
        xs, ys = r * np.cos(theta), r * np.sin(theta)
        pts = np.stack([xs, ys], 1)
        def cross(a, b, c):
            return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

        if not any(abs(cross(a, b, c)) < eps for a, b, c in itertools.combinations(pts, 3)):
            return [xs, ys]
    raise RuntimeError(f"could not sample {n} points without three collinear in {attempts} tries")


def _segments(rng):
    def ccw(a, b, c, xs, ys):
        return (ys[c] - ys[a]) * (xs[b] - xs[a]) > (ys[b] - ys[a]) * (xs[c] - xs[a])

    def crossing(xs, ys):
        return ccw(0, 2, 3, xs, ys) != ccw(1, 2, 3, xs, ys) and ccw(0, 1, 2, xs, ys) != ccw(0, 1, 3, xs, ys)

    want = bool(rng.binomial(1, 0.5))
    while True:
        xs, ys = rng.uniform(size=4), rng.uniform(size=4)
        if crossing(xs, ys) == want:
            return [xs, ys]


def sample_inputs(algorithm: str, n: int, rng: np.random.Generator, p: tuple[float, ...] | None = None,
                  length_needle: int | None = None) -> list:
    """Arguments for ``ALGORITHMS[algorithm]`` on a problem of n nodes."""
    p_choice = float(rng.choice(p or default_p(algorithm)))
    if algorithm in ("insertion_sort", "bubble_sort", "heapsort", "quicksort", "quickselect", "minimum",
                     "matrix_chain_order"):
        return [rng.uniform(size=n)]
    if algorithm == "binary_search":
        return [float(rng.uniform()), np.sort(rng.uniform(size=n))]
    if algorithm == "find_maximum_subarray_kadane":
        return [rng.uniform(-1, 1, n)]
    if algorithm == "lcs_length":
        return [rng.integers(0, 4, n - n // 2), rng.integers(0, 4, n // 2)]
    if algorithm == "optimal_bst":
        w = rng.uniform(size=2 * n + 1)
        w /= w.sum()
        return [w[:n], w[n:]]
    if algorithm == "activity_selector":
        a, b = rng.uniform(size=n), rng.uniform(size=n)
        return [np.minimum(a, b), np.maximum(a, b)]
    if algorithm == "task_scheduling":
        return [rng.integers(0, n, n) + 1, rng.uniform(size=n)]
    if algorithm in ("naive_string_matcher", "kmp_matcher"):
        if length_needle is None:
            m = 1 if n < 5 else n // 5
        elif length_needle < 0:
            m = int(rng.integers(1, 1 - length_needle))
        else:
            m = length_needle
        m = min(m, max(1, n // 2))  # room for the needle in the haystack
        needle, hay = rng.integers(0, 4, m), rng.integers(0, 4, n - m)
        at = int(rng.integers(0, n - 2 * m)) if n - 2 * m > 0 else 0
        hay[at:at + m] = needle
        return [hay, needle]
    if algorithm == "segments_intersect":
        return _segments(rng)
    if algorithm in ("graham_scan", "jarvis_march"):
        return _hull_points(rng, n)
    if algorithm in ("dfs", "topological_sort"):
        return [_er_graph(rng, n, p_choice, directed=True, acyclic=algorithm == "topological_sort")]
    if algorithm in ("articulation_points", "bridges"):
        return [_er_graph(rng, n, p_choice)]
    if algorithm == "strongly_connected_components":
        return [_community_graph(rng, n, p_choice)]
    if algorithm == "mst_kruskal":
        return [_er_graph(rng, n, p_choice, weighted=True)]
    if algorithm == "floyd_warshall":
        return [_er_graph(rng, n, p_choice, weighted=True)]
    if algorithm == "bfs":
        return [_er_graph(rng, n, p_choice), int(rng.integers(0, n))]
    if algorithm in ("mst_prim", "bellman_ford", "dijkstra"):
        return [_er_graph(rng, n, p_choice, weighted=True), int(rng.integers(0, n))]
    if algorithm == "dag_shortest_paths":
        return [_er_graph(rng, n, p_choice, directed=True, acyclic=True, weighted=True), int(rng.integers(0, n))]
    raise ValueError(unknown_algorithm(algorithm))


# ---- batches --------------------------------------------------------------------------------------------------
@dataclass
class Feature:
    name: str
    location: str
    type_: str
    data: np.ndarray  # inputs / outputs: (B, ...); hints: (T, B, ...)


@dataclass
class Batch:
    algorithm: str
    inputs: dict[str, Feature]
    hints: dict[str, Feature]
    outputs: dict[str, Feature]
    lengths: np.ndarray  # hint steps per sample

    @property
    def size(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_nodes(self) -> int:
        return int(self.inputs["pos"].data.shape[1])


def collate(algorithm: str, trajectories: list[dict], min_steps: int = 0) -> Batch:
    """Stack probes of equally sized problems; hints are zero-padded to the longest trajectory."""
    spec = SPECS[algorithm]
    groups: dict[str, dict[str, Feature]] = {Stage.INPUT: {}, Stage.HINT: {}, Stage.OUTPUT: {}}
    lengths = np.zeros(len(trajectories))
    for name, (stage, loc, type_) in spec.items():
        items = [t[stage][loc][name]["data"] for t in trajectories]
        if stage == Stage.HINT:
            steps = max(min_steps, max(x.shape[0] for x in items))
            data = np.zeros((steps, len(items), *items[0].shape[1:]))
            for b, x in enumerate(items):
                data[:x.shape[0], b] = x
                lengths[b] = x.shape[0]
        else:
            data = np.stack([np.asarray(x, dtype=float) for x in items])
        groups[stage][name] = Feature(name, loc, type_, data)
    return Batch(algorithm, groups[Stage.INPUT], groups[Stage.HINT], groups[Stage.OUTPUT], lengths)


# Static hint elimination (Ibarz et al. 2022, dataset and training): in these algorithms the node-pointer
# hint pred_h is the same at every step (a fixed order of the nodes), so it is given once as the input ``pred``.
PRED_AS_INPUT = ("binary_search", "minimum", "find_maximum_subarray", "find_maximum_subarray_kadane",
                 "matrix_chain_order", "lcs_length", "optimal_bst", "activity_selector", "task_scheduling",
                 "naive_string_matcher", "kmp_matcher", "jarvis_march")


def model_spec(algorithm: str, static_hints_as_inputs: bool = True) -> dict[str, tuple[str, str, str]]:
    """The spec a learner sees: the official one, with a static pred_h hint turned into a pred input."""
    spec = dict(SPECS[algorithm])
    if static_hints_as_inputs and algorithm in PRED_AS_INPUT:
        spec = {("pred" if k == "pred_h" else k): ((Stage.INPUT, *v[1:]) if k == "pred_h" else v)
                for k, v in spec.items()}
    return spec


def pred_as_input(batch: Batch) -> Batch:
    """Static hint elimination on a batch (``model_spec``): its pred_h hint, checked constant, becomes input pred."""
    if batch.algorithm not in PRED_AS_INPUT:
        return batch
    h = batch.hints["pred_h"]
    for b, length in enumerate(batch.lengths):
        steps = h.data[:int(length), b]
        if not np.all(steps == steps[:1]):
            raise ValueError(f"{batch.algorithm}: pred_h changes along sample {b}'s trajectory, so it cannot be "
                             "an input (static_hints_as_inputs=False keeps it a hint)")
    inputs = {**batch.inputs, "pred": Feature("pred", h.location, h.type_, h.data[0])}
    hints = {k: v for k, v in batch.hints.items() if k != "pred_h"}
    return dataclasses.replace(batch, inputs=inputs, hints=hints)


def randomize_pos(batch: Batch, rng: np.random.Generator) -> Batch:
    """Randomised position scalar (Ibarz et al. 2022, encoders and decoders): ``pos`` (i / n, restarting at 0
    where a second string begins) replaced by sorted uniform draws per segment, so that a learner cannot
    overfit to the spacing."""
    pos = batch.inputs["pos"].data
    B, n = pos.shape
    draws = rng.uniform(size=(B, n))
    new = np.empty_like(pos)
    for b in range(B):
        starts = np.concatenate([np.flatnonzero(pos[b] == 0), [n]])
        for lo, hi in itertools.pairwise(starts):
            new[b, lo:hi] = np.sort(draws[b, lo:hi])
    inputs = {**batch.inputs, "pos": dataclasses.replace(batch.inputs["pos"], data=new)}
    return dataclasses.replace(batch, inputs=inputs)


def unknown_algorithm(name: str) -> str:
    """The error for an algorithm name that is not one of the 30: the close match first, if any."""
    close = difflib.get_close_matches(name.replace("-", "_").lower(), list(SPECS), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown CLRS algorithm {name!r}; {hint}choose one of {', '.join(SPECS)}"


class Sampler:
    """A fixed set of ``num_samples`` problems of size n (or, with ``num_samples < 0``, fresh ones per batch)."""

    def __init__(self, algorithm: str, n: int, num_samples: int, seed: int, p: tuple[float, ...] | None = None,
                 length_needle: int | None = None):
        if algorithm not in ALGORITHMS:
            raise ValueError(unknown_algorithm(algorithm))
        self.algorithm, self.n, self.num_samples = algorithm, n, num_samples
        self.rng = np.random.default_rng(seed)
        self.kw = {"p": p, "length_needle": length_needle}
        self._data = [self.trajectory() for _ in range(num_samples)] if num_samples > 0 else None

    def trajectory(self) -> dict:
        return ALGORITHMS[self.algorithm](*sample_inputs(self.algorithm, self.n, self.rng, **self.kw))[1]

    def batch(self, batch_size: int) -> Batch:
        if self._data is None:
            return collate(self.algorithm, [self.trajectory() for _ in range(batch_size)])
        idx = self.rng.integers(0, self.num_samples, batch_size)
        return collate(self.algorithm, [self._data[i] for i in idx])

    def all(self, batch_size: int | None = None) -> list[Batch]:
        """The whole fixed set, in order, in batches (for evaluation)."""
        assert self._data is not None, "all() needs a fixed set (num_samples > 0)"
        size = batch_size or self.num_samples
        return [collate(self.algorithm, self._data[i:i + size]) for i in range(0, self.num_samples, size)]


def split_sampler(algorithm: str, split: str, seed_offset: int = 0, n: int | None = None) -> Sampler:
    """The benchmark's validation / test set (train samples are drawn on the fly over TRAIN_SIZES)."""
    num, size, seed = SPLITS[split]
    num *= SAMPLE_MULTIPLIER.get(algorithm, 1) if split != "train" else 1
    if algorithm in ("naive_string_matcher", "kmp_matcher") and split != "test":
        size = size * 5 // 4  # haystack + needle, as the benchmark sizes the matchers
    return Sampler(algorithm, n or size, num, seed + seed_offset)
