"""Reasoning-budget control: how many tokens a request may think inside ``<think>``, and what it may
emit once the thinking segment is closed.

A ``ThinkingTracker`` follows one request's tokens. While the segment is open it counts thinking
tokens; after N of them the segment closes right after the next newline within a grace window
(default ceil(10% of N)), or ``</think>`` is forced when the grace runs out. Once closed, neither
``<think>`` nor ``</think>`` may be sampled again (the decoders mask them, as serving stacks do),
and the answer runs under its own limit. ``room`` tells a speculative round how many tokens it may
emit before a forced token could be due, so that speculation never changes what the budget decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

UNLIMITED = 1 << 30


@dataclass(frozen=True)
class ThinkingBudget:
    """At most ``max_thinking_tokens`` (N; None: no limit) inside ``<think>``, plus ``grace``; then at most
    ``max_answer_tokens`` after ``</think>``."""

    max_thinking_tokens: int | None
    think_start_id: int
    think_end_id: int
    newline_ids: tuple[int, ...]
    grace: int | None = None
    max_answer_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_thinking_tokens is not None and self.max_thinking_tokens < 0:
            raise ValueError(f"max_thinking_tokens={self.max_thinking_tokens} must be >= 0 (or None: no limit)")
        if self.max_answer_tokens is not None and self.max_answer_tokens < 0:
            raise ValueError(f"max_answer_tokens={self.max_answer_tokens} must be >= 0 (or None: no limit)")
        if self.grace is None:
            n = self.max_thinking_tokens or 0
            object.__setattr__(self, "grace", -(-n // 10))

    @property
    def segment_ids(self) -> tuple[int, int]:
        """The tokens that open and close a thinking segment."""
        return self.think_start_id, self.think_end_id

    def track(self, prompt: Sequence[int]) -> ThinkingTracker:
        """A tracker for one request whose prompt is ``prompt``."""
        return ThinkingTracker(self, _open_think(prompt, self.think_start_id, self.think_end_id))


class ThinkingTracker:
    """One request's thinking / answer counters (see the module doc)."""

    def __init__(self, budget: ThinkingBudget, thinking: bool):
        self.b = budget
        self.thinking = thinking
        self.n_think = self.n_answer = 0
        self.close_next = False

    @property
    def closed(self) -> bool:
        """The segment is closed: ``<think>`` and ``</think>`` are masked from now on."""
        return not self.thinking

    def _limit(self) -> int:
        n = self.b.max_thinking_tokens
        return UNLIMITED if n is None else n

    def forced(self) -> int | None:
        """The token the request must emit next, if any."""
        if self.thinking and (self.close_next or self.n_think >= self._limit() + self.b.grace):
            return self.b.think_end_id
        return None

    def observe(self, token: int) -> None:
        if self.thinking:
            if token == self.b.think_end_id:
                self.thinking = False
            else:
                self.n_think += 1
                if self.n_think >= self._limit() and token in self.b.newline_ids:
                    self.close_next = True
        else:
            self.n_answer += 1

    def done(self) -> bool:
        """The answer has used its budget."""
        limit = self.b.max_answer_tokens
        return limit is not None and not self.thinking and self.n_answer >= limit

    def room(self) -> int:
        """How many tokens may come next before a forced token could be due (0: the next one may be)."""
        if not self.thinking:
            return UNLIMITED
        if self.forced() is not None:
            return 0
        return max(1, self._limit() - 1 - self.n_think)


def _open_think(prompt: Sequence[int], start_id: int, end_id: int) -> bool:
    """Whether the prompt ends inside an unclosed <think> segment."""
    last_start = max((i for i, t in enumerate(prompt) if t == start_id), default=-1)
    last_end = max((i for i, t in enumerate(prompt) if t == end_id), default=-1)
    return last_start > last_end
