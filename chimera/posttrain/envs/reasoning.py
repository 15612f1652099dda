"""``reasoning/<task>``: the synthetic tasks of ``chimera.data.synthetic`` (add, sort, search, isort,
grid) as one-turn environments; the held-out split is the tasks' own (prompt hash 0 mod 10)."""

from __future__ import annotations

import random

from chimera.data.synthetic import TASKS, Example, make_task
from chimera.posttrain.envs.base import SingleTurnEnv


class ReasoningEnv(SingleTurnEnv):
    """A synthetic task's problem; the task's own verifier checks the answer."""

    def __init__(self, task: str):
        super().__init__()
        self.task = make_task(task)
        self.id = f"reasoning/{task}"

    def sample(self, rng: random.Random) -> tuple[str, Example]:
        ex = self.task.sample(rng)
        return ex.prompt, ex

    def check(self, problem: Example, answer: str) -> dict[str, float]:
        try:
            ok = self.task.verify(problem.prompt, answer)
        except (ValueError, IndexError):  # an answer the task's parser cannot read is wrong
            ok = False
        return {"correct": float(ok)}

    def solution(self, problem: Example) -> tuple[str, str]:
        return problem.thinking, problem.answer


IDS = [f"reasoning/{t}" for t in TASKS]
