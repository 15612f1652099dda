"""String matching, instrumented with probes: naive and Knuth-Morris-Pratt.

Nodes are the text's positions followed by the pattern's; both return the first shift at which
the pattern occurs, or len(T) when it does not (the benchmark's samplers always plant one; its
naive matcher then returns unfinalized probes, this one finalizes them like any other run).
"""

from __future__ import annotations

import numpy as np

from chimera.clrs.probing import Probes, mask_one, one_hot_rows, strings_id, strings_pi, strings_pos, strings_pred

ALPHABET = 4


def _string_probes(name: str, T: np.ndarray, P: np.ndarray) -> tuple[Probes, int, int]:
    n, m = T.shape[0], P.shape[0]
    pr = Probes(name)
    pr.input(string=strings_id(n, m), pos=strings_pos(n, m), key=one_hot_rows(np.concatenate([T, P]), ALPHABET))
    return pr, n, m


def naive_string_matcher(T: np.ndarray, P: np.ndarray):
    pr, n, m = _string_probes("naive_string_matcher", T, P)
    size = n + m

    def emit(s: int, i: int, j: int) -> None:
        pr.hint(pred_h=strings_pred(n, m), s=mask_one(s, size), i=mask_one(i, size), j=mask_one(n + j, size))

    for s in range(n - m + 1):
        i, j = s, 0
        emit(s, i, j)
        while T[i] == P[j]:
            if j == m - 1:
                pr.output(match=mask_one(s, size))
                return s, pr.finalize()
            i, j = i + 1, j + 1
            emit(s, i, j)
    pr.output(match=mask_one(n, size))
    return n, pr.finalize()


def kmp_matcher(T: np.ndarray, P: np.ndarray):
    pr, n, m = _string_probes("kmp_matcher", T, P)
    size = n + m
    pi = np.arange(m)  # prefix function; is_reset marks entries that fell back to "no prefix"
    is_reset = np.zeros(m)
    is_reset[0] = 1

    def emit(k: int, k_reset: int, q: int, q_reset: int, s: int, i: int, phase: int) -> None:
        pr.hint(pred_h=strings_pred(n, m), pi=strings_pi(n, m, pi), is_reset=np.concatenate([np.zeros(n), is_reset]),
                k=mask_one(n + k, size), k_reset=k_reset, q=mask_one(n + q, size), q_reset=q_reset,
                s=mask_one(s, size), i=mask_one(i, size), phase=phase)

    # phase 0: the prefix function of P
    k, k_reset = 0, 1
    emit(0, k_reset, 1 if m > 1 else 0, 1, 0, 0, 0)
    for q in range(1, m):
        while k_reset == 0 and P[k + 1] != P[q]:
            if is_reset[k] == 1:
                k, k_reset = 0, 1
            else:
                k = pi[k]
            emit(k, k_reset, q, 1, 0, 0, 0)
        if k_reset == 1:
            k, k_reset = -1, 0
        if P[k + 1] == P[q]:
            k += 1
        if k == -1:
            k, k_reset = 0, 1
            is_reset[q] = 1
        pi[q] = k
        emit(k, k_reset, q, 1, 0, 0, 0)
    # phase 1: the scan of T
    q, q_reset, s = 0, 1, 0
    for i in range(n):
        if i >= m:
            s += 1
        emit(k, k_reset, q, q_reset, s, i, 1)
        while q_reset == 0 and P[q + 1] != T[i]:
            if is_reset[q] == 1:
                q, q_reset = 0, 1
            else:
                q = pi[q]
            emit(k, k_reset, q, q_reset, s, i, 1)
        if q_reset == 1:
            q, q_reset = -1, 0
        if P[q + 1] == T[i]:
            if q == m - 2:
                pr.output(match=mask_one(s, size))
                return s, pr.finalize()
            q += 1
        if q == -1:
            q, q_reset = 0, 1
    pr.output(match=mask_one(n, size))
    return n, pr.finalize()
