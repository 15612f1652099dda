"""Seeded synthetic tasks with step-by-step reasoning traces and verifiers.

Each task samples ``Example(prompt, thinking, answer)`` and checks an answer with ``verify``.
Problems whose prompt hashes to 0 mod 10 form the held-out split: training never sees them.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass


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


TASKS = {"add": AdditionTask, "sort": SortTask}


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
