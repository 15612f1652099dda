"""Seeded synthetic tasks with step-by-step reasoning traces and verifiers.

Each task samples ``Example(prompt, thinking, answer)`` and checks an answer with ``verify``.
Problems whose prompt hashes to 0 mod 10 form the held-out split: training never sees them.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Example:
    prompt: str
    thinking: str
    answer: str


def is_held_out(prompt: str) -> bool:
    return zlib.crc32(prompt.encode()) % 10 == 0


class AdditionTask:
    """a+b with up to ``max_digits`` digits; the trace adds digit by digit from the right with carries."""

    name = "add"

    def __init__(self, max_digits: int = 3):
        self.max_digits = max_digits

    def sample(self, rng: random.Random) -> Example:
        a, b = (rng.randrange(10 ** rng.randint(1, self.max_digits)) for _ in range(2))
        prompt = f"{a}+{b}="
        steps, carry = [], 0
        da, db = str(a)[::-1], str(b)[::-1]
        for i in range(max(len(da), len(db))):
            x = int(da[i]) if i < len(da) else 0
            y = int(db[i]) if i < len(db) else 0
            s = x + y + carry
            steps.append(f"{x}+{y}+{carry}={s}")
            carry = s // 10
        return Example(prompt, " ".join(steps), str(a + b))

    def verify(self, prompt: str, answer: str) -> bool:
        a, b = prompt.rstrip("=").split("+")
        return answer.strip() == str(int(a) + int(b))


class SortTask:
    """Sort 3 to ``max_len`` numbers below 100; the trace picks the minimum of what is left, in turn."""

    name = "sort"

    def __init__(self, max_len: int = 6):
        self.max_len = max_len

    def sample(self, rng: random.Random) -> Example:
        xs = [rng.randrange(100) for _ in range(rng.randint(3, self.max_len))]
        prompt = "sort " + " ".join(map(str, xs))
        rest, steps = list(xs), []
        while rest:
            m = min(rest)
            rest.remove(m)
            steps.append(str(m))
        return Example(prompt, ">".join(steps), " ".join(map(str, sorted(xs))))

    def verify(self, prompt: str, answer: str) -> bool:
        xs = sorted(int(t) for t in prompt.split()[1:])
        return answer.split() == [str(x) for x in xs]


class SearchTask:
    """Binary search for a target in a sorted list; the trace lists each probe (lo, hi, mid, value)."""

    name = "search"

    def __init__(self, max_len: int = 12):
        self.max_len = max_len

    def sample(self, rng: random.Random) -> Example:
        xs = sorted(rng.sample(range(100), rng.randint(3, self.max_len)))
        target = rng.choice(xs) if rng.random() < 0.8 else rng.randrange(100)
        prompt = f"find {target} in " + " ".join(map(str, xs))
        lo, hi, steps, found = 0, len(xs) - 1, [], -1
        while lo <= hi:
            mid = (lo + hi) // 2
            steps.append(f"{lo},{hi}:{mid}={xs[mid]}")
            if xs[mid] == target:
                found = mid
                break
            lo, hi = (mid + 1, hi) if xs[mid] < target else (lo, mid - 1)
        return Example(prompt, " ".join(steps), str(found))

    def verify(self, prompt: str, answer: str) -> bool:
        words = prompt.split()
        target, xs = int(words[1]), [int(w) for w in words[3:]]
        return answer.strip() == str(xs.index(target) if target in xs else -1)


class InsertionSortTraceTask:
    """CLRS insertion sort: the trace is the array after each insertion (the algorithm's hints)."""

    name = "isort"

    def __init__(self, max_len: int = 6):
        self.max_len = max_len

    def sample(self, rng: random.Random) -> Example:
        xs = [rng.randrange(10) for _ in range(rng.randint(3, self.max_len))]
        a, states = list(xs), []
        for j in range(1, len(a)):
            key, i = a[j], j - 1
            while i >= 0 and a[i] > key:
                a[i + 1] = a[i]
                i -= 1
            a[i + 1] = key
            states.append("".join(map(str, a)))
        return Example("isort " + "".join(map(str, xs)), " ".join(states), "".join(map(str, a)))

    def verify(self, prompt: str, answer: str) -> bool:
        return answer.strip() == "".join(sorted(prompt.split()[1]))


class GridTask:
    """Navigate a small text grid from S to G around walls (#); the trace is the BFS distance of
    the goal and the path's cells; the answer is a shortest move string over U/D/L/R."""

    name = "grid"
    MOVES: ClassVar[dict[str, tuple[int, int]]] = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}

    def __init__(self, size: int = 4, wall_prob: float = 0.25):
        self.size, self.wall_prob = size, wall_prob

    def sample(self, rng: random.Random) -> Example:
        n = self.size
        while True:
            cells = [["#" if rng.random() < self.wall_prob else "." for _ in range(n)] for _ in range(n)]
            s, g = rng.sample([(r, c) for r in range(n) for c in range(n)], 2)
            cells[s[0]][s[1]], cells[g[0]][g[1]] = "S", "G"
            grid = "/".join("".join(row) for row in cells)
            path = self._shortest(grid)
            if path is not None:
                break
        r, c = s
        visited = []
        for m in path:
            dr, dc = self.MOVES[m]
            r, c = r + dr, c + dc
            visited.append(f"{r}{c}")
        return Example(f"grid {grid}", f"d={len(path)} " + " ".join(visited), path)

    def _shortest(self, grid: str) -> str | None:
        rows = grid.split("/")
        start = next((r, row.index("S")) for r, row in enumerate(rows) if "S" in row)
        frontier, seen = [(start, "")], {start}
        while frontier:
            nxt = []
            for (r, c), p in frontier:
                if rows[r][c] == "G":
                    return p
                for m, (dr, dc) in self.MOVES.items():
                    q = (r + dr, c + dc)
                    if 0 <= q[0] < len(rows) and 0 <= q[1] < len(rows[0]) and rows[q[0]][q[1]] != "#" \
                            and q not in seen:
                        seen.add(q)
                        nxt.append((q, p + m))
            frontier = nxt
        return None

    def verify(self, prompt: str, answer: str) -> bool:
        grid = prompt.split()[1]
        rows = grid.split("/")
        best = self._shortest(grid)
        r, c = next((r, row.index("S")) for r, row in enumerate(rows) if "S" in row)
        moves = answer.strip()
        if best is None or len(moves) != len(best) or any(m not in self.MOVES for m in moves):
            return False
        for m in moves:
            r, c = r + self.MOVES[m][0], c + self.MOVES[m][1]
            if not (0 <= r < len(rows) and 0 <= c < len(rows[0])) or rows[r][c] == "#":
                return False
        return rows[r][c] == "G"


TASKS = {"add": AdditionTask, "sort": SortTask, "search": SearchTask, "isort": InsertionSortTraceTask,
         "grid": GridTask}


def make_task(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]()


def sample_split(task, rng: random.Random, held_out: bool) -> Example:
    """A sample from the training split (held_out=False) or the held-out split."""
    for _ in range(10_000):
        ex = task.sample(rng)
        if is_held_out(ex.prompt) == held_out:
            return ex
    raise RuntimeError(f"task {task.name} produced no {'held-out' if held_out else 'training'} example")
