"""Breadth-first paths over a level's walkable cells, with NetHack's rule that doors are not entered or
left diagonally (doorless and broken doorways are).

The search runs over a grid padded by one cell (no bounds checks) with flat indices: a level is 21x79,
so one search visits at most ~1,700 cells.
"""

from __future__ import annotations

from collections import deque

import numpy as np

# (dy, dx) -> movement key
DIRECTIONS = {(-1, 0): "k", (1, 0): "j", (0, -1): "h", (0, 1): "l",
              (-1, -1): "y", (-1, 1): "u", (1, -1): "b", (1, 1): "n"}


class Paths:
    """Shortest paths from one start cell; ``dist`` is (rows, cols), -1 where unreachable."""

    def __init__(self, walkable: np.ndarray, door: np.ndarray, start: tuple[int, int]):
        rows, cols = walkable.shape
        self.shape, w = (rows, cols), cols + 2
        ok = np.pad(walkable, 1).ravel().tolist()
        dr = np.pad(door, 1).ravel().tolist()
        moves = [(dy * w + dx, dy != 0 and dx != 0) for dy, dx in DIRECTIONS]
        s = (start[0] + 1) * w + start[1] + 1
        dist = [-1] * len(ok)
        parent = [-1] * len(ok)
        dist[s] = 0
        queue = deque([s])
        while queue:
            i = queue.popleft()
            d = dist[i] + 1
            di = dr[i]
            for off, diag in moves:
                j = i + off
                if dist[j] < 0 and ok[j] and not (diag and (di or dr[j])):
                    dist[j] = d
                    parent[j] = i
                    queue.append(j)
        self._parent, self._w = parent, w
        self.dist = np.asarray(dist, dtype=np.int32).reshape(rows + 2, w)[1:-1, 1:-1]

    def path_to(self, target: tuple[int, int]) -> list[tuple[int, int]]:
        """Cells from the first step to ``target`` (empty if unreachable or the start itself)."""
        w = self._w
        i = (target[0] + 1) * w + target[1] + 1
        if self.dist[target] <= 0:
            return []
        out = []
        while self._parent[i] >= 0:
            out.append((i // w - 1, i % w - 1))
            i = self._parent[i]
        return out[::-1]

    def nearest(self, targets: np.ndarray) -> tuple[int, int] | None:
        """The reachable target cell with the fewest steps (ties: the first in row-major order)."""
        big = np.iinfo(np.int32).max
        d = np.where(targets & (self.dist >= 0), self.dist, big)
        i = int(np.argmin(d))
        return None if d.flat[i] == big else divmod(i, self.shape[1])


def direction(a: tuple[int, int], b: tuple[int, int]) -> str:
    """The movement key from cell a to the adjacent cell b."""
    return DIRECTIONS[(b[0] - a[0], b[1] - a[1])]
