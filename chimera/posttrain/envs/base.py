"""The environment protocol of post-training: multi-turn, text in and text out.

``env.reset(seed=s, held_out=False)`` returns the opening chat messages (system / user); each
``env.step(assistant_text)`` takes the text of one assistant turn (decoded from the sampled tokens,
after the generation prompt's ``<think>``) and returns a ``StepResult``: what the environment says
next (tool responses, a game observation; empty when done), the reward in [0, 1], whether the
episode is over and the reward's components. The rollout (``chimera.posttrain.rollout``) owns the
tokens: it encodes only the environment's messages and never re-encodes the model's text.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chimera.tokenizer import Message


@dataclass
class StepResult:
    """What one assistant turn led to."""

    messages: list[Message] = field(default_factory=list)
    """The environment's next turn(s) (empty when done)."""
    reward: float = 0.0
    """In [0, 1]; only the final step's reward is nonzero in the environments here."""
    done: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    """Reward components and counters (correct, tool_calls, ...)."""


def is_held_out(text: str) -> bool:
    """Problems whose text hashes to 0 mod 10 form the held-out split (as in chimera.data.synthetic)."""
    return zlib.crc32(text.encode()) % 10 == 0


def final_answer(text: str) -> str:
    """The answer of an assistant turn: after its last ``</think>``, up to ``<eos>``, stripped."""
    return text.rsplit("</think>", 1)[-1].split("<eos>", 1)[0].strip()


class Env:
    """Base of every post-training environment; ``id`` is the name ``make`` knows it by."""

    id: str = ""
    max_turns: int = 1

    def reset(self, seed: int, held_out: bool = False) -> list[Message]:
        raise NotImplementedError

    def step(self, assistant_text: str) -> StepResult:
        raise NotImplementedError

    def solve(self) -> str:
        """The scripted solver's next assistant turn (text after ``<think>``, through ``<eos>``): the
        demonstrations for SFT before RL. Stepping with it from ``reset`` earns reward 1."""
        raise NotImplementedError(f"{self.id} has no solver")

    @classmethod
    def call_many(cls, envs: Sequence[Env], method: str, args: Sequence[tuple]) -> list[Any]:
        """``getattr(env, method)(*a)`` for each environment of this kind and its arguments, in turn (a kind
        that lives elsewhere, ``remote.RemoteEnv``, sends every call before it waits for any answer)."""
        return [getattr(env, method)(*a) for env, a in zip(envs, args)]


def call_all(envs: Sequence[Env], method: str, args: Sequence[tuple]) -> list[Any]:
    """``env.<method>(*a)`` for every environment, through its kind's ``call_many``: the rollout's turn in one
    call, so that environments in Ray actors reset and step side by side."""
    kinds: dict[type, list[int]] = {}
    for i, env in enumerate(envs):
        kinds.setdefault(type(env), []).append(i)  # type(), not __class__: a proxy reports the class it hosts
    out: list[Any] = [None] * len(envs)
    for kind, idx in kinds.items():
        for i, got in zip(idx, kind.call_many([envs[i] for i in idx], method, [args[i] for i in idx])):
            out[i] = got
    return out


class SingleTurnEnv(Env):
    """One question, one answer, checked by ``verify``. Subclasses give ``sample`` and ``check``."""

    system: str | None = None

    def __init__(self) -> None:
        self.problem: Any = None
        self.prompt: str | None = None

    def sample(self, rng: random.Random) -> tuple[str, Any]:
        """A problem: its prompt text and whatever ``check`` needs."""
        raise NotImplementedError

    def check(self, problem: Any, answer: str) -> dict[str, float]:
        """Reward components of ``answer``; must include ``correct`` (0 or 1)."""
        raise NotImplementedError

    def solution(self, problem: Any) -> tuple[str, str]:
        """A reasoning trace and the right answer for ``problem``."""
        raise NotImplementedError(f"{self.id} has no solver")

    def solve(self) -> str:
        thinking, answer = self.solution(self.problem)
        return f"{thinking}</think>{answer}<eos>"

    def reset(self, seed: int, held_out: bool = False) -> list[Message]:
        rng = random.Random(f"{self.id}/{seed}")
        for _ in range(10_000):
            prompt, problem = self.sample(rng)
            if is_held_out(prompt) == held_out:
                break
        else:
            raise RuntimeError(f"{self.id} produced no {'held-out' if held_out else 'training'} problem")
        self.prompt, self.problem = prompt, problem
        msgs = [Message("system", self.system)] if self.system else []
        return [*msgs, Message("user", prompt)]

    def step(self, assistant_text: str) -> StepResult:
        if self.prompt is None:
            raise RuntimeError(f"{self.id}: step() before reset()")
        info = self.check(self.problem, final_answer(assistant_text))
        self.prompt = None
        return StepResult([], float(info["correct"]), True, info)
