"""``reasoning/<task>``: the synthetic tasks of ``chimera.data.synthetic`` (add, sort, search, isort,
grid) as one-turn environments; the held-out split is the tasks' own (prompt hash 0 mod 10)."""

from __future__ import annotations

import random

from chimera.data.synthetic import TASKS, make_task
from chimera.posttrain.envs.base import SingleTurnEnv


class ReasoningEnv(SingleTurnEnv):
    """A synthetic task's problem; the task's own verifier checks the answer."""

    def __init__(self, task: str):
        super().__init__()
        self.task = make_task(task)
        self.id = f"reasoning/{task}"

    def sample(self, rng: random.Random) -> tuple[str, str]:
        ex = self.task.sample(rng)
        return ex.prompt, ex.prompt

    def check(self, problem: str, answer: str) -> dict[str, float]:
        try:
            ok = self.task.verify(problem, answer)
        except (ValueError, IndexError):  # an answer the task's parser cannot read is wrong
            ok = False
        return {"correct": float(ok)}

    def demonstration(self, seed: int, held_out: bool = False) -> tuple[list, str, str]:
        """The opening messages, a reasoning trace and the answer (for SFT before RL)."""
        msgs = self.reset(seed, held_out)
        rng = random.Random(f"{self.id}/{seed}")
        while True:  # the same draws as reset, so the example matches the prompt
            ex = self.task.sample(rng)
            if ex.prompt == self.prompt:
                return msgs, ex.thinking, ex.answer


IDS = [f"reasoning/{t}" for t in TASKS]
