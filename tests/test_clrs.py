"""The 30 CLRS algorithms: known answers, cross-checks against independent implementations
(networkx, brute force, Python built-ins), and invariants of their hint sequences.

Parity with the official implementation, probe for probe, is checked by scripts/clrs_parity.py
(it needs dm-clrs, which is not a dependency)."""

import itertools

import networkx as nx
import numpy as np
import pytest

from chimera.clrs import algorithms as alg
from chimera.clrs.probing import check
from chimera.clrs.specs import CLRS_30_ALGS, FAMILIES, SPECS, TYPES

RNG = np.random.default_rng(0)
SIZES = (4, 7, 11)


def hints(probes, name):
    for loc in probes["hint"].values():
        if name in loc:
            return loc[name]["data"]
    raise KeyError(name)


def output(probes, name):
    for loc in probes["output"].values():
        if name in loc:
            return loc[name]["data"]
    raise KeyError(name)


def chain(pred: np.ndarray) -> list[int]:
    """Order encoded by predecessor pointers (the first node points to itself)."""
    nxt = {int(p): i for i, p in enumerate(pred) if p != i}
    node = int(next(i for i, p in enumerate(pred) if p == i))
    order = [node]
    while node in nxt:
        node = nxt[node]
        order.append(node)
    return order


def random_graph(n, directed=True, weighted=True, dag=False, p=0.4):
    A = (RNG.random((n, n)) < p) * (RNG.uniform(0.1, 1.0, (n, n)) if weighted else 1.0)
    np.fill_diagonal(A, 0)
    if dag:
        A = np.triu(A)
    elif not directed:
        A = np.triu(A) + np.triu(A).T
    return A


def to_nx(A, directed=True):
    G = nx.DiGraph() if directed else nx.Graph()
    G.add_nodes_from(range(len(A)))
    for i, j in zip(*np.nonzero(A)):
        G.add_edge(int(i), int(j), weight=float(A[i, j]))
    return G


def test_spec_table_has_the_30_algorithms_in_8_families():
    assert len(CLRS_30_ALGS) == 30 and len(FAMILIES) == 8
    assert set(alg.ALGORITHMS) == set(CLRS_30_ALGS)
    for spec in SPECS.values():
        assert all(t in TYPES for _, _, t in spec.values())
        assert any(s == "output" for s, _, _ in spec.values()) and any(s == "hint" for s, _, _ in spec.values())


# ---- sorting and searching -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["insertion_sort", "bubble_sort", "heapsort", "quicksort"])
@pytest.mark.parametrize("n", SIZES)
def test_sorts_sort_and_their_pointers_encode_the_order(name, n):
    A = RNG.uniform(size=n)
    result, probes = alg.ALGORITHMS[name](A)
    check(probes, name)
    assert np.array_equal(result, np.sort(A))
    assert np.array_equal(A[chain(output(probes, "pred"))], np.sort(A))
    pred_h = hints(probes, "pred_h")
    assert np.array_equal(pred_h[-1], output(probes, "pred"))  # the last hint is the answer
    assert all(sorted(chain(p)) == list(range(n)) for p in pred_h)  # every hint is a full order


def test_searching_answers():
    for n in SIZES:
        A = RNG.uniform(size=n)
        i, probes = alg.minimum(A)
        assert i == int(np.argmin(A)) and output(probes, "min")[i] == 1
        S = np.sort(A)
        for x in (S[n // 2], S[0] - 1, (S[1] + S[2]) / 2):
            j, _ = alg.binary_search(float(x), S)
            assert j == min(int(np.searchsorted(S, x, "left")), n - 1)
        value, probes = alg.quickselect(A)
        assert value == np.sort(A)[n // 2] and output(probes, "median")[int(np.argsort(A)[n // 2])] == 1


def test_kadane_matches_brute_force():
    for n in SIZES:
        A = RNG.uniform(-1, 1, n)
        (lo, hi, best), probes = alg.find_maximum_subarray_kadane(A)
        brute = max(A[i:j + 1].sum() for i in range(n) for j in range(i, n))
        assert best == pytest.approx(brute) and A[lo:hi + 1].sum() == pytest.approx(brute)
        assert np.all(np.diff(hints(probes, "best_sum")) >= 0)  # the best sum never decreases


# ---- greedy --------------------------------------------------------------------------------------------------
def test_activity_selector_is_maximum_and_compatible():
    for n in (4, 6, 8):
        s = RNG.uniform(size=n)
        f = s + RNG.uniform(0.05, 0.4, n)
        chosen, probes = alg.activity_selector(s, f)
        picked = np.flatnonzero(chosen)
        for a, b in itertools.combinations(picked, 2):
            assert f[a] <= s[b] or f[b] <= s[a]
        best = max(len(c) for r in range(n + 1) for c in itertools.combinations(range(n), r)
                   if all(f[a] <= s[b] or f[b] <= s[a] for a, b in itertools.combinations(c, 2)))
        assert len(picked) == best
        assert np.all(np.diff(hints(probes, "selected_h"), axis=0) >= 0)  # selections only grow


def _on_time(d, c, n):
    """A set of unit tasks can all meet their deadlines iff at most t of them are due by each time t."""
    return all(sum(d[i] <= t for i in c) <= t for t in range(1, n + 1))


def test_task_scheduling_follows_the_benchmark_rule():
    # The benchmark's rule: in order of decreasing penalty, take a task while fewer tasks are taken than
    # its deadline. It always yields an on-time set, though not always the heaviest one (a known answer:
    # the heavy deadline-3 task is taken first, then the deadline-1 task is refused).
    chosen, _ = alg.task_scheduling(np.array([3, 1, 2]), np.array([0.9, 0.5, 0.1]))
    assert list(chosen) == [1, 0, 1]
    for n in (4, 6, 8):
        d, w = RNG.integers(1, n + 1, n), RNG.uniform(size=n)
        chosen, probes = alg.task_scheduling(d, w)
        assert _on_time(d, np.flatnonzero(chosen), n)
        t = hints(probes, "t")
        assert t[-1] == chosen.sum() and np.all(np.diff(t) >= 0)


# ---- dynamic programming --------------------------------------------------------------------------------
def _chain_cost(p, split, i, j):
    if i == j:
        return 0.0
    k = int(split[i, j])
    return _chain_cost(p, split, i, k) + _chain_cost(p, split, k + 1, j) + p[i - 1] * p[k] * p[j]


def _chain_best(p, i, j):
    if i == j:
        return 0.0
    return min(_chain_best(p, i, k) + _chain_best(p, k + 1, j) + p[i - 1] * p[k] * p[j] for k in range(i, j))


def test_matrix_chain_split_points_give_the_optimal_cost():
    for n in (4, 6, 8):
        p = RNG.integers(1, 10, n).astype(float)
        s, probes = alg.matrix_chain_order(p)
        assert _chain_cost(p, output(probes, "s"), 1, n - 1) == pytest.approx(_chain_best(p, 1, n - 1))
        assert s.shape == (n - 1, n - 1)


def test_lcs_table_traces_back_a_longest_common_subsequence():
    for n, m in ((5, 3), (8, 6), (11, 7)):
        x, y = RNG.integers(0, 4, n), RNG.integers(0, 4, m)
        b, probes = alg.lcs_length(x, y)
        i, j, out = n - 1, m - 1, []
        while i >= 0 and j >= 0:
            if b[i, j] == 0:
                if x[i] == y[j]:
                    out.append(x[i])
                i, j = i - 1, j - 1
            elif b[i, j] == 1:
                i -= 1
            else:
                j -= 1
        L = np.zeros((n + 1, m + 1), int)
        for a in range(n):
            for c in range(m):
                L[a + 1, c + 1] = L[a, c] + 1 if x[a] == y[c] else max(L[a, c + 1], L[a + 1, c])
        assert len(out) == L[n, m]
        check(probes, "lcs_length")


def _bst_cost(p, q, root, i, j, depth):  # keys i+1..j (1-based), gaps i..j
    if i == j:
        return (depth + 1) * q[i]
    r = int(root[i, j])
    return (depth + 1) * p[r] + _bst_cost(p, q, root, i, r, depth + 1) + _bst_cost(p, q, root, r + 1, j, depth + 1)


def _bst_best(p, q, i, j, depth):
    if i == j:
        return (depth + 1) * q[i]
    return min((depth + 1) * p[r] + _bst_best(p, q, i, r, depth + 1) + _bst_best(p, q, r + 1, j, depth + 1)
               for r in range(i, j))


def test_optimal_bst_roots_give_the_minimum_expected_cost():
    for k in (3, 4, 5):
        w = RNG.uniform(size=2 * k + 1)
        w /= w.sum()
        p, q = w[:k], w[k:]
        root, _ = alg.optimal_bst(p, q)
        assert _bst_cost(p, q, root, 0, k, 0) == pytest.approx(_bst_best(p, q, 0, k, 0))


# ---- strings and geometry ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["naive_string_matcher", "kmp_matcher"])
def test_string_matchers_find_the_first_occurrence(name):
    for n, m in ((8, 2), (16, 4), (20, 3)):
        T, P = RNG.integers(0, 2, n), RNG.integers(0, 2, m)
        T[n - m:] = P
        s, probes = alg.ALGORITHMS[name](T, P)
        assert s == bytes(T.astype(np.uint8)).find(bytes(P.astype(np.uint8)))
        check(probes, name)
    s, _ = alg.ALGORITHMS[name](np.array([0, 1, 2, 3]), np.array([3, 3]))
    assert s == 4  # no match: len(T)


def test_kmp_prefix_function_matches_its_definition():
    P = np.array([0, 1, 0, 0, 1, 0, 1])
    _, probes = alg.kmp_matcher(np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 1, 0, 1]), P)
    pi = hints(probes, "pi")[-1][15:] - 15
    for q in range(1, len(P)):
        # longest proper prefix of P[:q+1] that is also its suffix, as the index of its last character
        k = max((k for k in range(q) if list(P[:k + 1]) == list(P[q - k:q + 1])), default=-1)
        assert pi[q] == max(k, 0)


@pytest.mark.parametrize("xs,ys,expect", [
    ([0, 1, 0, 1], [0, 1, 1, 0], 1),  # a cross
    ([0, 1, 0, 1], [0, 0, 1, 1], 0),  # parallel
    ([0, 2, 1, 3], [0, 0, 0, 0], 1),  # collinear, overlapping
    ([0, 1, 2, 3], [0, 0, 0, 0], 0),  # collinear, apart
    ([0, 1, 1, 2], [0, 1, 1, 0], 1),  # touching at an endpoint
    ([0, 2, 1, 1], [0, 0, 0, 1], 1),  # a T
    ([0, 1, 2, 2], [0, 1, 0, 5], 0),  # the lines cross, the segments do not
])
def test_segments_intersect_known_answers(xs, ys, expect):
    ret, probes = alg.segments_intersect(np.array(xs, float), np.array(ys, float))
    assert ret == expect
    check(probes, "segments_intersect")


def _monotone_chain(xs, ys):
    pts = sorted(range(len(xs)), key=lambda i: (xs[i], ys[i]))

    def cross(o, a, b):
        return (xs[a] - xs[o]) * (ys[b] - ys[o]) - (ys[a] - ys[o]) * (xs[b] - xs[o])

    hull = []
    for seq in (pts, pts[::-1]):
        part = []
        for p in seq:
            while len(part) >= 2 and cross(part[-2], part[-1], p) <= 0:
                part.pop()
            part.append(p)
        hull += part[:-1]
    return set(hull)


@pytest.mark.parametrize("name", ["graham_scan", "jarvis_march"])
def test_convex_hulls_match_the_monotone_chain(name):
    for n in (*SIZES, 16):
        xs, ys = RNG.uniform(size=n), RNG.uniform(size=n)
        in_hull, probes = alg.ALGORITHMS[name](xs, ys)
        assert set(np.flatnonzero(in_hull)) == _monotone_chain(xs, ys)
        check(probes, name)


# ---- graphs --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", SIZES)
def test_dfs_forest_matches_networkx_in_index_order(n):
    A = random_graph(n, weighted=False)
    pi, probes = alg.dfs(A)
    expect = np.arange(n)
    for v, u in nx.dfs_predecessors(to_nx(A)).items():
        expect[v] = u
    assert np.array_equal(pi, expect)
    d, f = hints(probes, "d")[-1], hints(probes, "f")[-1]
    assert np.all(d < f)  # discovered before finished, every node
    check(probes, "dfs")


@pytest.mark.parametrize("n", SIZES)
def test_bfs_tree_gives_hop_distances(n):
    A = random_graph(n, weighted=False)
    pi, probes = alg.bfs(A, 0)
    dist = nx.single_source_shortest_path_length(to_nx(A), 0)
    for v in range(n):
        hops, u = 0, v
        while pi[u] != u:
            u, hops = pi[u], hops + 1
        assert (u == 0 and hops == dist[v]) if v in dist else (pi[v] == v)
    assert np.all(np.diff(hints(probes, "reach_h"), axis=0) >= 0)


@pytest.mark.parametrize("n", SIZES)
def test_topological_order_respects_every_edge(n):
    A = random_graph(n, weighted=False, dag=True)
    A = A[np.ix_(perm := RNG.permutation(n), perm)]  # hide the order
    topo, probes = alg.topological_sort(A)
    order = [int(np.argmax(output(probes, "topo_head")))]
    while topo[order[-1]] != order[-1]:
        order.append(int(topo[order[-1]]))
    assert sorted(order) == list(range(n))
    place = {v: i for i, v in enumerate(order)}
    assert all(place[i] < place[j] for i, j in zip(*np.nonzero(A)))


@pytest.mark.parametrize("n", SIZES)
def test_articulation_points_and_bridges_match_networkx(n):
    A = random_graph(n, directed=False, weighted=False, p=0.3)
    G = to_nx(A, directed=False)
    is_cut, _ = alg.articulation_points(A)
    assert set(np.flatnonzero(is_cut)) == set(nx.articulation_points(G))
    is_bridge, probes = alg.bridges(A)
    assert {tuple(sorted(e)) for e in zip(*np.nonzero(is_bridge == 1))} == {tuple(sorted(e)) for e in nx.bridges(G)}
    assert np.all(is_bridge[(A == 0) & ~np.eye(n, dtype=bool)] == -1)  # non-edges are masked out
    check(probes, "bridges")


@pytest.mark.parametrize("n", SIZES)
def test_strongly_connected_components_match_networkx(n):
    A = random_graph(n, weighted=False, p=0.25)
    scc_id, _ = alg.strongly_connected_components(A)
    ours = {frozenset(np.flatnonzero(scc_id == c)) for c in set(scc_id)}
    assert ours == {frozenset(c) for c in nx.strongly_connected_components(to_nx(A))}


@pytest.mark.parametrize("n", SIZES)
def test_spanning_trees_have_minimum_weight(n):
    A = random_graph(n, directed=False, p=0.6)
    G = to_nx(A, directed=False)
    best = nx.minimum_spanning_tree(G).size(weight="weight")
    in_mst, _ = alg.mst_kruskal(A)
    assert (A * in_mst).sum() / 2 == pytest.approx(best)
    pi, _ = alg.mst_prim(A, 0)
    component = nx.node_connected_component(G, 0)
    assert sum(A[v, pi[v]] for v in component if pi[v] != v) == \
        pytest.approx(nx.minimum_spanning_tree(G.subgraph(component)).size(weight="weight"))


@pytest.mark.parametrize("name", ["bellman_ford", "dijkstra", "dag_shortest_paths"])
@pytest.mark.parametrize("n", SIZES)
def test_single_source_shortest_paths_match_networkx(name, n):
    A = random_graph(n, dag=name == "dag_shortest_paths", p=0.5)
    pi, probes = alg.ALGORITHMS[name](A, 0)
    dist = nx.single_source_dijkstra_path_length(to_nx(A), 0)
    for v, dv in dist.items():
        total, u = 0.0, v
        while pi[u] != u:
            total, u = total + A[pi[u], u], pi[u]
        assert u == 0 and total == pytest.approx(dv)
    check(probes, name)


@pytest.mark.parametrize("n", SIZES)
def test_floyd_warshall_matches_networkx(n):
    A = random_graph(n, p=0.5)
    Pi, probes = alg.floyd_warshall(A)
    dist = dict(nx.all_pairs_dijkstra_path_length(to_nx(A)))
    for i in range(n):
        for j, dij in dist[i].items():
            if i == j:
                continue
            total, v = 0.0, j
            while v != i:
                u = int(Pi[i, v])
                total, v = total + A[u, v], u
            assert total == pytest.approx(dij)
    D = hints(probes, "D")
    assert D.shape == (n, n, n)


def test_every_algorithm_fits_its_spec_on_random_inputs():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from clrs_parity import random_inputs

    rng = np.random.default_rng(1)
    for name in CLRS_30_ALGS:
        for n in (4, 9):
            _, probes = alg.ALGORITHMS[name](*random_inputs(name, n, rng))
            check(probes, name)
            lengths = {v["data"].shape[0] for loc in probes["hint"].values() for v in loc.values()}
            assert len(lengths) == 1 and lengths.pop() >= 1  # every hint has the same number of steps
