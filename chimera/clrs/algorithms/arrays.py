"""Sorting, searching, divide and conquer, greedy and dynamic programming, instrumented with probes.

Each function takes the benchmark's arguments and returns ``(result, probes)``. Arrays are
copied, never modified in place. Where a step of the algorithm is exposed as a hint, the hint
is recorded right after the step, in the order of the CLRS benchmark, so that the same inputs
give the same hint sequence value for value. Nodes are array positions; an array's current
order is exposed as predecessor pointers (``pred_h``).
"""

from __future__ import annotations

import numpy as np

from chimera.clrs.probing import Probes, heap_parents, mask_one, pred_array

# ---- sorting ---------------------------------------------------------------------------------------------


def _sort_probes(name: str, A: np.ndarray) -> tuple[Probes, np.ndarray, np.ndarray, int]:
    A = np.array(A, copy=True)
    n = A.shape[0]
    pos = np.arange(n)
    pr = Probes(name)
    pr.input(pos=pos / n, key=A.copy())
    return pr, A, pos, n


def insertion_sort(A: np.ndarray):
    pr, A, pos, n = _sort_probes("insertion_sort", A)
    pr.hint(pred_h=pred_array(pos), i=mask_one(0, n), j=mask_one(0, n))
    for j in range(1, n):
        key, i = A[j], j - 1
        while i >= 0 and A[i] > key:
            A[i + 1], pos[i + 1] = A[i], pos[i]
            i -= 1
        A[i + 1] = key
        displaced = pos[i + 1]
        pos[i + 1] = j
        pr.hint(pred_h=pred_array(pos), i=mask_one(displaced, n), j=mask_one(j, n))
    pr.output(pred=pred_array(pos))
    return A, pr.finalize()


def bubble_sort(A: np.ndarray):
    pr, A, pos, n = _sort_probes("bubble_sort", A)
    pr.hint(pred_h=pred_array(pos), i=mask_one(0, n), j=mask_one(0, n))
    for i in range(n - 1):
        for j in range(n - 1, i, -1):
            if A[j] < A[j - 1]:
                A[[j - 1, j]] = A[[j, j - 1]]
                pos[[j - 1, j]] = pos[[j, j - 1]]
            pr.hint(pred_h=pred_array(pos), i=mask_one(pos[i], n), j=mask_one(pos[j], n))
    pr.output(pred=pred_array(pos))
    return A, pr.finalize()


def heapsort(A: np.ndarray):
    pr, A, pos, n = _sort_probes("heapsort", A)
    last = mask_one(n - 1, n)
    pr.hint(pred_h=pred_array(pos), parent=heap_parents(pos, n), i=last, j=last, largest=last, heap_size=last,
            phase=mask_one(0, 3))

    def sift_down(i: int, size: int, caller: int, phase: int) -> None:
        while True:
            largest = i
            for child in (2 * i + 1, 2 * i + 2):
                if child < size and A[child] > A[largest]:
                    largest = child
            if largest != i:
                A[[i, largest]] = A[[largest, i]]
                pos[[i, largest]] = pos[[largest, i]]
            pr.hint(pred_h=pred_array(pos), parent=heap_parents(pos, size), i=mask_one(pos[caller], n),
                    j=mask_one(pos[i], n), largest=mask_one(pos[largest], n),
                    heap_size=mask_one(pos[size - 1], n), phase=mask_one(phase, 3))
            if largest == i:
                return
            i = largest

    for i in range(n - 1, -1, -1):
        sift_down(i, n, i, 0)
    size = n
    for i in range(n - 1, 0, -1):
        A[[0, i]] = A[[i, 0]]
        pos[[0, i]] = pos[[i, 0]]
        size -= 1
        pr.hint(pred_h=pred_array(pos), parent=heap_parents(pos, size), i=mask_one(pos[0], n),
                j=mask_one(pos[i], n), largest=mask_one(0, n), heap_size=mask_one(pos[size - 1], n),
                phase=mask_one(1, 3))
        sift_down(0, size, i, 2)
    pr.output(pred=pred_array(pos))
    return A, pr.finalize()


def _partition(A: np.ndarray, pos: np.ndarray, p: int, r: int, emit) -> int:
    """Lomuto partition of A[p..r] around A[r]; ``emit(i, j, last)`` records a hint after every step."""
    x, i = A[r], p - 1
    for j in range(p, r):
        if A[j] <= x:
            i += 1
            A[[i, j]] = A[[j, i]]
            pos[[i, j]] = pos[[j, i]]
        emit(i, j, False)
    A[[i + 1, r]] = A[[r, i + 1]]
    pos[[i + 1, r]] = pos[[r, i + 1]]
    emit(i, r, True)
    return i + 1


def quicksort(A: np.ndarray):
    pr, A, pos, n = _sort_probes("quicksort", A)

    def sort(p: int, r: int) -> None:
        if p >= r:
            return

        def emit(i: int, j: int, last: bool) -> None:
            pr.hint(pred_h=pred_array(pos), p=mask_one(pos[p], n), r=mask_one(pos[r], n),
                    i=mask_one(pos[i + 1], n), j=mask_one(pos[j], n))

        q = _partition(A, pos, p, r, emit)
        sort(p, q - 1)
        sort(q + 1, r)

    sort(0, n - 1)
    pr.output(pred=pred_array(pos))
    return A, pr.finalize()


# ---- searching -------------------------------------------------------------------------------------------


def minimum(A: np.ndarray):
    pr, A, pos, n = _sort_probes("minimum", A)
    pr.hint(pred_h=pred_array(pos), min_h=mask_one(0, n), i=mask_one(0, n))
    best = 0
    for i in range(1, n):
        if A[best] > A[i]:
            best = i
        pr.hint(pred_h=pred_array(pos), min_h=mask_one(best, n), i=mask_one(i, n))
    pr.output(min=mask_one(best, n))
    return best, pr.finalize()


def binary_search(x: float, A: np.ndarray):
    """Index of the first element >= x in the sorted A (the last index if none is)."""
    A = np.array(A, copy=True)
    n = A.shape[0]
    pos = np.arange(n)
    pr = Probes("binary_search")
    pr.input(pos=pos / n, key=A.copy(), target=x)
    low, high = 0, n - 1

    def emit() -> None:
        pr.hint(pred_h=pred_array(pos), low=mask_one(low, n), high=mask_one(high, n),
                mid=mask_one((low + high) // 2, n))

    emit()
    while low < high:
        mid = (low + high) // 2
        if x <= A[mid]:
            high = mid
        else:
            low = mid + 1
        emit()
    pr.output(**{"return": mask_one(high, n)})
    return high, pr.finalize()


def quickselect(A: np.ndarray):
    """The element of rank n // 2 (the upper median), by repeated partitioning."""
    pr, A, pos, n = _sort_probes("quickselect", A)
    p, r, target = 0, n - 1, n // 2
    while True:
        def emit(i: int, j: int, last: bool, p=p, r=r, target=target) -> None:
            pr.hint(pred_h=pred_array(pos), p=mask_one(pos[p], n), r=mask_one(pos[r], n),
                    i=mask_one(pos[i + 1], n), j=mask_one(pos[j], n),
                    i_rank=(i + 1 - (p if last else 0)) * 1.0 / n, target=target * 1.0 / n,
                    pivot=mask_one(pos[i + 1] if last else pos[r], n))

        q = _partition(A, pos, p, r, emit)
        k = q - p
        if target == k:
            pr.output(median=mask_one(pos[q], n))
            return A[q], pr.finalize()
        if target < k:
            r = q - 1
        else:
            p, target = q + 1, target - k - 1


# ---- divide and conquer ----------------------------------------------------------------------------------


def find_maximum_subarray_kadane(A: np.ndarray):
    """(start, end, sum) of a maximum-sum contiguous subarray, Kadane's scan."""
    pr, A, pos, n = _sort_probes("find_maximum_subarray_kadane", A)
    best_low = best_high = i = 0
    best_sum = running = A[0]

    def emit(j: int) -> None:
        pr.hint(pred_h=pred_array(pos), best_low=mask_one(best_low, n), best_high=mask_one(best_high, n),
                best_sum=best_sum, i=mask_one(i, n), j=mask_one(j, n), sum=running)

    emit(0)
    for j in range(1, n):
        x = A[j]
        if running + x >= x:
            running += x
        else:
            i, running = j, x
        if running > best_sum:
            best_low, best_high, best_sum = i, j, running
        emit(j)
    pr.output(start=mask_one(best_low, n), end=mask_one(best_high, n))
    return (best_low, best_high, best_sum), pr.finalize()


# ---- greedy ----------------------------------------------------------------------------------------------


def activity_selector(s: np.ndarray, f: np.ndarray):
    """A maximum set of mutually compatible activities [s_i, f_i), earliest finish first."""
    n = s.shape[0]
    pos = np.arange(n)
    pr = Probes("activity_selector")
    pr.input(pos=pos / n, s=np.array(s, copy=True), f=np.array(f, copy=True))
    chosen = np.zeros(n)
    pr.hint(pred_h=pred_array(pos), selected_h=chosen.copy(), m=mask_one(0, n), k=mask_one(0, n))
    order = np.argsort(f)
    k = order[0]
    chosen[k] = 1
    pr.hint(pred_h=pred_array(pos), selected_h=chosen.copy(), m=mask_one(order[0], n), k=mask_one(k, n))
    for m in range(1, n):
        if s[order[m]] >= f[k]:
            k = order[m]
            chosen[k] = 1
        pr.hint(pred_h=pred_array(pos), selected_h=chosen.copy(), m=mask_one(order[m], n), k=mask_one(k, n))
    pr.output(selected=chosen.copy())
    return chosen, pr.finalize()


def task_scheduling(d: np.ndarray, w: np.ndarray):
    """Unit tasks with deadlines d and penalties w: the early tasks, heaviest first while they fit."""
    n = d.shape[0]
    pos = np.arange(n)
    pr = Probes("task_scheduling")
    pr.input(pos=pos / n, d=np.array(d, copy=True), w=np.array(w, copy=True))
    chosen = np.zeros(n)
    pr.hint(pred_h=pred_array(pos), selected_h=chosen.copy(), i=mask_one(0, n), t=0)
    order = np.argsort(-w)
    chosen[order[0]] = 1
    t = 1
    pr.hint(pred_h=pred_array(pos), selected_h=chosen.copy(), i=mask_one(order[0], n), t=t)
    for i in range(1, n):
        if t < d[order[i]]:
            chosen[order[i]] = 1
            t += 1
        pr.hint(pred_h=pred_array(pos), selected_h=chosen.copy(), i=mask_one(order[i], n), t=t)
    pr.output(selected=chosen.copy())
    return chosen, pr.finalize()
