"""Graph algorithms, instrumented with probes.

Inputs are weighted adjacency matrices ``A`` (0 = no edge). The depth-first family (DFS,
topological sort, articulation points, bridges, strongly connected components, the first phase
of DAG shortest paths) runs one iterative DFS, ``_depth_first``, whose explicit stack is the
``s_prev`` pointer chain of the benchmark, with per-algorithm hooks for discovering a node,
following a tree edge, seeing a non-tree edge and finishing a node. Hints are recorded at the
same points and in the same order as in the CLRS benchmark; note that the loop variable ``v``
keeps its last value between steps, exactly as the benchmark's Python loops leave it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from chimera.clrs.probing import Probes, mask_one, one_hot_rows, with_self_loops
from chimera.clrs.specs import OUTPUT_MASKED


def _graph_probes(name: str, A: np.ndarray, s: int | None = None) -> tuple[Probes, np.ndarray, int]:
    A = np.array(A, copy=True)
    n = A.shape[0]
    pr = Probes(name)
    extra = {} if s is None else {"s": mask_one(s, n)}
    pr.input(pos=np.arange(n) / n, A=A.copy(), adj=with_self_loops(A), **extra)
    return pr, A, n


# ---- depth-first search with hooks -------------------------------------------------------------------


class DFSState:
    def __init__(self, n: int):
        self.n = n
        self.color = np.zeros(n, dtype=np.int32)  # 0 white, 1 grey, 2 black
        self.pi = np.arange(n)
        self.d = np.zeros(n)
        self.f = np.zeros(n)
        self.s_prev = np.arange(n)  # the stack, as pointers to the node below
        self.time: float = 0
        self.s = self.u = self.v = self.s_last = 0

    def color_hint(self) -> np.ndarray:
        return one_hot_rows(self.color, 3)


class Hooks:
    """CLRS DFS (discovery / finishing times in steps of 0.01, parents in ``pi``)."""

    def visit(self, st: DFSState) -> None:
        pass

    def discovers(self, st: DFSState) -> bool:
        return st.color[st.u] == 0 or st.d[st.u] == 0.0

    def discover(self, st: DFSState) -> None:
        st.time += 0.01
        st.d[st.u] = st.time
        st.color[st.u] = 1

    def tree_edge(self, st: DFSState, v: int) -> None:
        st.pi[v] = st.u

    def other_edge(self, st: DFSState, v: int) -> bool:
        """A non-white neighbour; True to record a hint."""
        return False

    def finish(self, st: DFSState) -> None:
        st.color[st.u] = 2
        st.time += 0.01
        st.f[st.u] = st.time


def _depth_first(st: DFSState, root: int, adj: np.ndarray, hooks: Hooks, emit: Callable[[], None]) -> None:
    """The DFS tree grown from ``root``: one hint at its start and one per discovery, push, and finish."""
    st.s = st.s_last = st.u = st.v = root
    emit()
    while True:
        hooks.visit(st)
        if hooks.discovers(st):
            hooks.discover(st)
            emit()
        for v in range(st.n):
            st.v = v
            if adj[st.u, v] != 0:
                if st.color[v] == 0:
                    hooks.tree_edge(st, v)
                    st.color[v] = 1
                    st.s_prev[v] = st.s_last
                    st.s_last = v
                    emit()
                    break
                if hooks.other_edge(st, v):
                    emit()
        if st.s_last == st.u:
            hooks.finish(st)
            emit()
            if st.s_prev[st.u] == st.u:
                return
            below = st.s_prev[st.s_last]
            st.s_prev[st.s_last] = st.s_last
            st.s_last = below
        st.u = st.s_last


def _forest(st: DFSState, roots, adj: np.ndarray, hooks: Hooks, emit: Callable[[], None]) -> None:
    """A DFS tree from every root, in order, that no earlier tree reached."""
    for s in roots:
        if st.color[s] == 0:
            _depth_first(st, s, adj, hooks, emit)


def _dfs_hint(st: DFSState) -> dict:
    n = st.n
    return dict(color=st.color_hint(), s_prev=st.s_prev.copy(), s=mask_one(st.s, n), u=mask_one(st.u, n),
                v=mask_one(st.v, n), s_last=mask_one(st.s_last, n))


def dfs(A: np.ndarray):
    """Depth-first forest (parent pointers), roots tried in index order."""
    pr, A, n = _graph_probes("dfs", A)
    st, hooks = DFSState(n), Hooks()

    def emit() -> None:
        pr.hint(pi_h=st.pi.copy(), d=st.d.copy(), f=st.f.copy(), time=st.time, **_dfs_hint(st))

    _forest(st, range(n), A, hooks, emit)
    pr.output(pi=st.pi.copy())
    return st.pi, pr.finalize()


class _TopoHooks(Hooks):
    """Topological order as a linked list: ``topo[u]`` is the node after u, ``topo_head`` the first."""

    def __init__(self, n: int):
        self.topo = np.arange(n)
        self.head = 0

    def discovers(self, st: DFSState) -> bool:
        return st.color[st.u] == 0

    def discover(self, st: DFSState) -> None:
        st.color[st.u] = 1

    def tree_edge(self, st: DFSState, v: int) -> None:
        pass

    def finish(self, st: DFSState) -> None:
        st.color[st.u] = 2
        if st.color[self.head] == 2:
            self.topo[st.u] = self.head
        self.head = st.u


def topological_sort(A: np.ndarray):
    pr, A, n = _graph_probes("topological_sort", A)
    st, hooks = DFSState(n), _TopoHooks(n)

    def emit() -> None:
        h = _dfs_hint(st)
        pr.hint(topo_h=hooks.topo.copy(), topo_head_h=mask_one(hooks.head, n), **h)

    _forest(st, range(n), A, hooks, emit)
    pr.output(topo=hooks.topo.copy(), topo_head=mask_one(hooks.head, n))
    return hooks.topo, pr.finalize()


class _LowHooks(Hooks, ABC):
    """Low-link bookkeeping shared by articulation points and bridges."""

    def __init__(self, n: int):
        self.low = np.zeros(n)

    def discover(self, st: DFSState) -> None:
        super().discover(st)
        self.low[st.u] = st.time

    def other_edge(self, st: DFSState, v: int) -> bool:
        if v != st.pi[st.u]:
            self.low[st.u] = min(self.low[st.u], st.d[v])
            return True
        return False

    def finish(self, st: DFSState) -> None:
        super().finish(st)
        for v in range(st.n):  # leaves st.v at n - 1, as the benchmark's loop does
            st.v = v
            if st.pi[v] == st.u:
                self.low[st.u] = min(self.low[st.u], self.low[v])
                self.child_finished(st, v)

    @abstractmethod
    def child_finished(self, st: DFSState, v: int) -> None:
        """A finished node ``st.u``'s child ``v``, after u's low value has taken v's into account."""


class _CutHooks(_LowHooks):
    def __init__(self, n: int):
        super().__init__(n)
        self.child_cnt = np.zeros(n)
        self.is_cut = np.zeros(n)

    def tree_edge(self, st: DFSState, v: int) -> None:
        super().tree_edge(st, v)
        self.child_cnt[st.u] += 0.01

    def child_finished(self, st: DFSState, v: int) -> None:
        if st.pi[st.u] != st.u and self.low[v] >= st.d[st.u]:
            self.is_cut[st.u] = 1

    def finish(self, st: DFSState) -> None:
        super().finish(st)
        if st.pi[st.u] == st.u and self.child_cnt[st.u] > 0.01:  # a root with two or more children
            self.is_cut[st.u] = 1


def articulation_points(A: np.ndarray):
    pr, A, n = _graph_probes("articulation_points", A)
    st, hooks = DFSState(n), _CutHooks(n)

    def emit() -> None:
        pr.hint(is_cut_h=hooks.is_cut.copy(), pi_h=st.pi.copy(), d=st.d.copy(), f=st.f.copy(), low=hooks.low.copy(),
                child_cnt=hooks.child_cnt.copy(), time=st.time, **_dfs_hint(st))

    _forest(st, range(n), A, hooks, emit)
    pr.output(is_cut=hooks.is_cut.copy())
    return hooks.is_cut, pr.finalize()


class _BridgeHooks(_LowHooks):
    def __init__(self, n: int, adj: np.ndarray):
        super().__init__(n)
        self.is_bridge = np.zeros((n, n)) + OUTPUT_MASKED + adj  # 0 on edges, -1 (masked) elsewhere

    def child_finished(self, st: DFSState, v: int) -> None:
        if self.low[v] > st.d[st.u]:
            self.is_bridge[st.u, v] = self.is_bridge[v, st.u] = 1


def bridges(A: np.ndarray):
    pr, A, n = _graph_probes("bridges", A)
    st, hooks = DFSState(n), _BridgeHooks(n, with_self_loops(A))

    def emit() -> None:
        pr.hint(is_bridge_h=hooks.is_bridge.copy(), pi_h=st.pi.copy(), d=st.d.copy(), f=st.f.copy(),
                low=hooks.low.copy(), time=st.time, **_dfs_hint(st))

    _forest(st, range(n), A, hooks, emit)
    pr.output(is_bridge=hooks.is_bridge.copy())
    return hooks.is_bridge, pr.finalize()


class _SCCHooks(Hooks):
    """Kosaraju: DFS on A for finishing times, then on A^T in decreasing finishing time labelling each tree."""

    def __init__(self, n: int):
        self.scc_id = np.arange(n)
        self.labelling = False

    def visit(self, st: DFSState) -> None:
        if self.labelling:
            self.scc_id[st.u] = st.s

    def tree_edge(self, st: DFSState, v: int) -> None:
        pass


def strongly_connected_components(A: np.ndarray):
    pr, A, n = _graph_probes("strongly_connected_components", A)
    st, hooks = DFSState(n), _SCCHooks(n)
    A_t = A.T
    phase = 0

    def emit() -> None:
        pr.hint(scc_id_h=hooks.scc_id.copy(), A_t=with_self_loops(A_t.copy()), d=st.d.copy(), f=st.f.copy(),
                time=st.time, phase=phase, **_dfs_hint(st))

    _forest(st, range(n), A, hooks, emit)
    st.color, st.s_prev = np.zeros(n, dtype=np.int32), np.arange(n)
    phase, hooks.labelling = 1, True
    _forest(st, np.argsort(-st.f), A_t, hooks, emit)
    pr.output(scc_id=hooks.scc_id.copy())
    return hooks.scc_id, pr.finalize()


def dag_shortest_paths(A: np.ndarray, s: int):
    """Shortest paths from s in a DAG: topological order by DFS from s, then relaxation along it."""
    pr, A, n = _graph_probes("dag_shortest_paths", A, s)
    st, hooks = DFSState(n), _TopoHooks(n)
    d, mark = np.zeros(n), np.zeros(n)
    phase = 0

    def emit() -> None:
        h = _dfs_hint(st)
        h.pop("s")  # the source is an input here
        pr.hint(pi_h=st.pi.copy(), d=d.copy(), mark=mark.copy(), topo_h=hooks.topo.copy(),
                topo_head_h=mask_one(hooks.head, n), phase=phase, **h)

    _depth_first(st, s, A, hooks, emit)
    assert hooks.head == s
    phase = 1
    mark[s] = 1
    while hooks.topo[hooks.head] != hooks.head:
        i = hooks.head
        mark[i] = 1
        emit()
        for j in range(n):
            if A[i, j] != 0.0 and (mark[j] == 0 or d[i] + A[i, j] < d[j]):
                d[j], st.pi[j], mark[j] = d[i] + A[i, j], i, 1
        hooks.head = hooks.topo[hooks.head]
    emit()
    pr.output(pi=st.pi.copy())
    return st.pi, pr.finalize()


# ---- breadth-first and shortest paths ---------------------------------------------------------------------


def bfs(A: np.ndarray, s: int):
    """Breadth-first tree from s, one synchronous frontier expansion per hint."""
    pr, A, n = _graph_probes("bfs", A, s)
    reach, pi = np.zeros(n), np.arange(n)
    reach[s] = 1
    while True:
        prev = reach.copy()
        pr.hint(reach_h=prev.copy(), pi_h=pi.copy())
        for i in range(n):
            for j in range(n):
                if A[i, j] > 0 and prev[i] == 1:
                    if pi[j] == j and j != s:
                        pi[j] = i
                    reach[j] = 1
        if np.array_equal(reach, prev):
            break
    pr.output(pi=pi.copy())
    return pi, pr.finalize()


def bellman_ford(A: np.ndarray, s: int):
    pr, A, n = _graph_probes("bellman_ford", A, s)
    d, pi, known = np.zeros(n), np.arange(n), np.zeros(n)
    known[s] = 1
    while True:
        prev_d, prev_known = d.copy(), known.copy()
        pr.hint(pi_h=pi.copy(), d=prev_d.copy(), msk=prev_known.copy())
        for u in range(n):
            for v in range(n):
                if prev_known[u] == 1 and A[u, v] != 0:
                    if known[v] == 0 or prev_d[u] + A[u, v] < d[v]:
                        d[v], pi[v] = prev_d[u] + A[u, v], u
                    known[v] = 1
        if np.array_equal(d, prev_d):
            break
    pr.output(pi=pi.copy())
    return pi, pr.finalize()


def _priority_search(name: str, A: np.ndarray, s: int, priority: Callable[[np.ndarray, int, int], float],
                     key_name: str):
    """Dijkstra / Prim: repeatedly extract the queued node of least key and relax its edges by ``priority``."""
    pr, A, n = _graph_probes(name, A, s)
    key, mark, queued, pi = np.zeros(n), np.zeros(n), np.zeros(n), np.arange(n)
    queued[s] = 1

    def emit(u: int) -> None:
        pr.hint(pi_h=pi.copy(), mark=mark.copy(), in_queue=queued.copy(), u=mask_one(u, n), **{key_name: key.copy()})

    emit(s)
    for _ in range(n):
        u = np.argsort(key + (1.0 - queued) * 1e9)[0]  # extract-min, first index on ties
        if queued[u] == 0:
            break
        mark[u], queued[u] = 1, 0
        for v in range(n):
            if A[u, v] != 0 and mark[v] == 0:
                candidate = priority(key, u, v)
                if queued[v] == 0 or candidate < key[v]:
                    pi[v], key[v], queued[v] = u, candidate, 1
        emit(u)
    pr.output(pi=pi.copy())
    return pi, pr.finalize()


def dijkstra(A: np.ndarray, s: int):
    return _priority_search("dijkstra", A, s, lambda d, u, v: d[u] + A[u, v], "d")


def mst_prim(A: np.ndarray, s: int):
    return _priority_search("mst_prim", A, s, lambda key, u, v: A[u, v], "key")


def floyd_warshall(A: np.ndarray):
    """All-pairs shortest paths; ``Pi[i, j]`` is the node before j on the path from i."""
    pr, A, n = _graph_probes("floyd_warshall", A)
    D, known = A.copy(), with_self_loops(A)
    Pi = np.repeat(np.arange(n, dtype=float)[:, None], n, axis=1)
    for k in range(n):
        prev_D, prev_known = D.copy(), known.copy()
        pr.hint(Pi_h=Pi.copy(), D=prev_D.copy(), msk=prev_known.copy(), k=mask_one(k, n))
        for i in range(n):
            for j in range(n):
                if prev_known[i, k] > 0 and prev_known[k, j] > 0:
                    via = prev_D[i, k] + prev_D[k, j]
                    if known[i, j] == 0 or via < D[i, j]:
                        D[i, j], Pi[i, j] = via, Pi[k, j]
                    else:
                        D[i, j] = prev_D[i, j]
                    known[i, j] = 1
    pr.output(Pi=Pi.copy())
    return Pi, pr.finalize()


# ---- minimum spanning tree (Kruskal) -----------------------------------------------------------------------


def mst_kruskal(A: np.ndarray):
    """Kruskal with a union-find forest in ``pi``; path compression is shown step by step."""
    pr, A, n = _graph_probes("mst_kruskal", A)
    pi, in_mst = np.arange(n), np.zeros((n, n))

    def emit(u, v, root_u, root_v, mask_u, mask_v, phase) -> None:
        pr.hint(in_mst_h=in_mst.copy(), pi=pi.copy(), u=mask_one(u, n), v=mask_one(v, n),
                root_u=mask_one(root_u, n), root_v=mask_one(root_v, n), mask_u=mask_u.copy(),
                mask_v=mask_v.copy(), phase=mask_one(phase, 3))

    edges = [(i, j) for i in range(n) for j in range(i + 1, n) if A[i, j] > 0]
    emit(0, 0, 0, 0, np.zeros(n), np.zeros(n), 0)
    for e in np.argsort([A[i, j] for i, j in edges]):
        u, v = edges[e]
        mask_u, mask_v = mask_one(u, n), mask_one(v, n)
        root_u, root_v = u, v
        emit(u, v, root_u, root_v, mask_u, mask_v, 1)
        while pi[root_u] != root_u:  # find(u), pointing every node seen so far at the current ancestor
            root_u = pi[root_u]
            pi[mask_u == 1] = root_u
            mask_u[root_u] = 1
            emit(u, v, root_u, root_v, mask_u, mask_v, 1)
        while pi[root_v] != root_v:  # find(v)
            root_v = pi[root_v]
            pi[mask_v == 1] = root_v
            mask_v[root_v] = 1
            emit(u, v, root_u, root_v, mask_u, mask_v, 2)
        if root_u != root_v:
            in_mst[u, v] = in_mst[v, u] = 1
            if root_u < root_v:
                pi[root_u] = root_v
            else:
                pi[root_v] = root_u
        emit(u, v, root_u, root_v, mask_u, mask_v, 0)
    pr.output(in_mst=in_mst.copy())
    return in_mst, pr.finalize()
