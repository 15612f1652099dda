"""Computational geometry, instrumented with probes: segment intersection, Graham scan, Jarvis march."""

from __future__ import annotations

import math

import numpy as np

from chimera.clrs.probing import Probes, mask_one, pred_array


def _cross(xs: np.ndarray, ys: np.ndarray, i: int, j: int, k: int) -> float:
    """(p_k - p_i) x (p_j - p_i): the orientation of k relative to the directed segment i -> j."""
    return (xs[k] - xs[i]) * (ys[j] - ys[i]) - (xs[j] - xs[i]) * (ys[k] - ys[i])


def _turns_clockwise_or_straight(xs, ys, i, j, k) -> bool:
    return (xs[j] - xs[i]) * (ys[k] - ys[i]) - (ys[j] - ys[i]) * (xs[k] - xs[i]) <= 0


def _geometry_probes(name: str, xs: np.ndarray, ys: np.ndarray) -> Probes:
    n = xs.shape[0]
    pr = Probes(name)
    pr.input(pos=np.arange(n) / n, x=np.array(xs, copy=True), y=np.array(ys, copy=True))
    return pr


def segments_intersect(xs: np.ndarray, ys: np.ndarray):
    """Whether segment (p0, p1) meets segment (p2, p3) (CLRS 33.1)."""
    assert xs.shape == ys.shape == (4,), "segments_intersect takes the 4 endpoints' x and y"
    pr = _geometry_probes("segments_intersect", xs, ys)
    dirs, on_seg = np.zeros(4), np.zeros(4)
    pr.hint(i=mask_one(0, 4), j=mask_one(0, 4), k=mask_one(0, 4), dir=dirs.copy(), on_seg=on_seg.copy())
    for k, (i, j) in enumerate(((2, 3), (2, 3), (0, 1), (0, 1))):
        dirs[k] = _cross(xs, ys, i, j, k)
        inside = min(xs[i], xs[j]) <= xs[k] <= max(xs[i], xs[j]) and min(ys[i], ys[j]) <= ys[k] <= max(ys[i], ys[j])
        on_seg[k] = 1 if inside else 0
        pr.hint(i=mask_one(i, 4), j=mask_one(j, 4), k=mask_one(k, 4), dir=dirs.copy(), on_seg=on_seg.copy())

    def straddles(a: float, b: float) -> bool:
        return (a > 0 and b < 0) or (a < 0 and b > 0)

    hit = straddles(dirs[0], dirs[1]) and straddles(dirs[2], dirs[3])
    hit = hit or any(dirs[k] == 0 and on_seg[k] for k in range(4))
    ret = 1 if hit else 0
    pr.output(intersect=ret)
    return ret, pr.finalize()


def _lowest_point(xs: np.ndarray, ys: np.ndarray) -> int:
    best = 0
    for i in range(xs.shape[0]):
        if ys[i] < ys[best] or (ys[i] == ys[best] and xs[i] < xs[best]):
            best = i
    return best


def graham_scan(xs: np.ndarray, ys: np.ndarray):
    """Mask of the convex hull's vertices: sort by polar angle around the lowest point, keep left turns."""
    pr = _geometry_probes("graham_scan", xs, ys)
    n = xs.shape[0]
    in_hull, stack_prev, atans = np.zeros(n), np.arange(n), np.zeros(n)

    def emit(best: int, last: int, i: int, phase: int) -> None:
        pr.hint(best=mask_one(best, n), atans=atans.copy(), in_hull_h=in_hull.copy(), stack_prev=stack_prev.copy(),
                last_stack=mask_one(last, n), i=mask_one(i, n), phase=mask_one(phase, 5))

    emit(0, 0, 0, 0)
    best = _lowest_point(xs, ys)
    in_hull[best] = 1
    last = best
    emit(best, last, best, 1)
    for i in range(n):
        if i != best:
            atans[i] = math.atan2(ys[i] - ys[best], xs[i] - xs[best])
    atans[best] = -123456789  # sorts first
    order = np.argsort(atans)
    atans[best] = 0
    emit(best, last, best, 2)
    for i in range(1, n):
        if i >= 3:
            # never pop the anchor: on collinear input the official loop would spin there forever
            while last != best and _turns_clockwise_or_straight(xs, ys, stack_prev[last], last, order[i]):
                popped, last = last, stack_prev[last]
                stack_prev[popped] = popped
                in_hull[popped] = 0
                emit(best, last, order[i], 3)
        in_hull[order[i]] = 1
        stack_prev[order[i]] = last
        last = order[i]
        emit(best, last, order[i], 4)
    pr.output(in_hull=in_hull.copy())
    return in_hull, pr.finalize()


def jarvis_march(xs: np.ndarray, ys: np.ndarray):
    """Mask of the convex hull's vertices by gift wrapping from the lowest point."""
    pr = _geometry_probes("jarvis_march", xs, ys)
    n = xs.shape[0]
    pos = np.arange(n)
    in_hull = np.zeros(n)

    def emit(best: int, last: int, end: int, i: int, phase: int) -> None:
        pr.hint(pred_h=pred_array(pos), in_hull_h=in_hull.copy(), best=mask_one(best, n),
                last_point=mask_one(last, n), endpoint=mask_one(end, n), i=mask_one(i, n), phase=mask_one(phase, 2))

    emit(0, 0, 0, 0, 0)
    best = _lowest_point(xs, ys)
    in_hull[best] = 1
    last, end = best, 0
    emit(best, last, end, 0, 1)
    while True:
        for i in range(n):
            if end == last or (i not in (last, end) and _turns_clockwise_or_straight(xs, ys, last, end, i)):
                end = i
            emit(best, last, end, i, 1)
        if in_hull[end] > 0:
            break
        in_hull[end] = 1
        last, end = end, 0
        emit(best, last, end, 0, 1)
    pr.output(in_hull=in_hull.copy())
    return in_hull, pr.finalize()
