"""Ends games that repeat without progress, and says why.

Progress is anything that changes the game's outcome or the agent's knowledge: the in-game turn
(a game whose turn counter stands still is stuck in the interface), score, depth, experience level, or
the number of map cells seen. The watchdog first marks the game ``stalled`` (the agent then moves at
random to break a loop), and ends it when that does not help either.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Watchdog:
    """``turn_patience``: steps without the turn advancing; ``patience``: steps without any progress."""

    turn_patience: int = 500
    patience: int = 4000

    def reset(self) -> None:
        self.reason: str | None = None
        self._turn, self._turn_step = None, 0
        self._mark, self._mark_step = None, 0
        self.step = 0

    def __post_init__(self) -> None:
        self.reset()

    @property
    def stalled(self) -> bool:
        return self.step - self._mark_step > self.patience // 2

    def observe(self, state) -> None:
        """Look at one step's state; sets ``reason`` once the game should end."""
        self.step += 1
        s = state.status
        if s.turn != self._turn:
            self._turn, self._turn_step = s.turn, self.step
        seen = int(sum(int((lv.terrain > 0).sum()) for lv in state.memory.levels.values()))
        mark = (s.score, state.max_depth, s.xl, seen)
        if mark != self._mark:
            self._mark, self._mark_step = mark, self.step
        if self.step - self._turn_step >= self.turn_patience:
            self.reason = f"watchdog: the turn counter stayed at {s.turn} for {self.turn_patience} steps"
        elif self.step - self._mark_step >= self.patience:
            self.reason = (f"watchdog: no new score, depth, level or map cell for {self.patience} steps "
                           f"(score {s.score}, depth {state.max_depth}, turn {s.turn})")
