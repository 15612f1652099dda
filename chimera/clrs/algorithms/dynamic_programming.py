"""Dynamic programming, instrumented with probes: matrix-chain order, LCS length, optimal BST.

Matrix-chain order and LCS are run as synchronous relaxation rounds (every cell recomputed from
the previous round's table until nothing changes), one hint per round, as in the CLRS benchmark;
the optimal BST fills one diagonal per hint.
"""

from __future__ import annotations

import numpy as np

from chimera.clrs.probing import (
    Probes,
    one_hot_rows,
    pred_array,
    strings_id,
    strings_pair,
    strings_pair_cat,
    strings_pos,
    strings_pred,
)


def matrix_chain_order(p: np.ndarray):
    """Split points s[i, j] of the cheapest parenthesisation of matrices A_1..A_{n-1} (A_i is p[i-1] x p[i])."""
    n = p.shape[0]
    pos = np.arange(n)
    pr = Probes("matrix_chain_order")
    pr.input(pos=pos / n, p=np.array(p, copy=True))
    m, s, known = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
    known[np.arange(1, n), np.arange(1, n)] = 1
    while True:
        prev_m, prev_known = m.copy(), known.copy()
        pr.hint(pred_h=pred_array(pos), m=prev_m.copy(), s_h=s.copy(), msk=known.copy())
        for i in range(1, n):
            for j in range(i + 1, n):
                have = prev_known[i, j]
                for k in range(i, j):
                    if prev_known[i, k] == 1 and prev_known[k + 1, j] == 1:
                        known[i, j] = 1
                        cost = prev_m[i, k] + prev_m[k + 1, j] + p[i - 1] * p[k] * p[j]
                        if have == 0 or cost < m[i, j]:
                            m[i, j], s[i, j], have = cost, k, 1
        if np.array_equal(prev_m, m):
            break
    pr.output(s=s.copy())
    return s[1:, 1:], pr.finalize()


def lcs_length(x: np.ndarray, y: np.ndarray):
    """The LCS direction table b (0: diagonal, 1: up, 2: left) of strings x and y over a 4-letter alphabet."""
    n, m = x.shape[0], y.shape[0]
    pr = Probes("lcs_length")
    pr.input(string=strings_id(n, m), pos=strings_pos(n, m), key=one_hot_rows(np.concatenate([x, y]), 4))
    b, c = np.zeros((n, m)), np.zeros((n, m))
    for i in range(n):  # first column
        if x[i] == y[0]:
            c[i, 0], b[i, 0] = 1, 0
        elif i > 0 and c[i - 1, 0] == 1:
            c[i, 0], b[i, 0] = 1, 1
        else:
            c[i, 0], b[i, 0] = 0, 1
    for j in range(m):  # first row
        if x[0] == y[j]:
            c[0, j], b[0, j] = 1, 0
        elif j > 0 and c[0, j - 1] == 1:
            c[0, j], b[0, j] = 1, 2
        else:
            c[0, j], b[0, j] = 0, 1
    while True:
        prev = c.copy()
        pr.hint(pred_h=strings_pred(n, m), b_h=strings_pair_cat(b.copy(), 3), c=strings_pair(prev))
        for i in range(1, n):
            for j in range(1, m):
                if x[i] == y[j]:
                    c[i, j], b[i, j] = prev[i - 1, j - 1] + 1, 0
                elif prev[i - 1, j] >= prev[i, j - 1]:
                    c[i, j], b[i, j] = prev[i - 1, j], 1
                else:
                    c[i, j], b[i, j] = prev[i, j - 1], 2
        if np.array_equal(prev, c):
            break
    pr.output(b=strings_pair_cat(b.copy(), 3))
    return b, pr.finalize()


def optimal_bst(p: np.ndarray, q: np.ndarray):
    """Roots of the optimal binary search tree over keys with probabilities p and gaps with probabilities q."""
    n = q.shape[0]  # = len(p) + 1
    pos = np.arange(n)
    pr = Probes("optimal_bst")
    p_padded = np.zeros(n)
    p_padded[:-1] = p
    pr.input(pos=pos / n, p=p_padded, q=np.array(q, copy=True))
    e, w, root, known = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
    d = np.arange(n)
    e[d, d], w[d, d], known[d, d] = q, q, 1

    def emit() -> None:
        pr.hint(pred_h=pred_array(pos), root_h=root.copy(), e=e.copy(), w=w.copy(), msk=known.copy())

    emit()
    for length in range(1, p.shape[0] + 1):
        for i in range(p.shape[0] - length + 1):
            j = i + length
            e[i, j] = 1e9
            w[i, j] = w[i, j - 1] + p[j - 1] + q[j]
            for r in range(i, j):
                t = e[i, r] + e[r + 1, j] + w[i, j]
                if t < e[i, j]:
                    e[i, j], root[i, j] = t, r
            known[i, j] = 1
        emit()
    pr.output(root=root.copy())
    return root, pr.finalize()
