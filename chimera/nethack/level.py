"""What the agent remembers about each dungeon level, kept across stairs (one ``Level`` per (branch, depth))."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from chimera.nethack import glyphs as G

ROWS, COLS = 21, 79


@dataclass
class Level:
    """Terrain seen so far and the agent's own marks on one level (arrays are (ROWS, COLS))."""

    terrain: np.ndarray = field(default_factory=lambda: np.zeros((ROWS, COLS), np.int8))   # G.UNKNOWN, ...
    observed: np.ndarray = field(default_factory=lambda: np.zeros((ROWS, COLS), bool))     # was within 1 of us
    visits: np.ndarray = field(default_factory=lambda: np.zeros((ROWS, COLS), np.int32))
    searched: np.ndarray = field(default_factory=lambda: np.zeros((ROWS, COLS), np.int32))  # searches made here
    blocked: np.ndarray = field(default_factory=lambda: np.zeros((ROWS, COLS), bool))      # boulders, statues
    avoid: np.ndarray = field(default_factory=lambda: np.zeros((ROWS, COLS), bool))        # failed to enter
    locked: set[tuple[int, int]] = field(default_factory=set)   # doors that said "This door is locked"
    corpses: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)  # pos -> (monster, turn)
    stairs_down: set[tuple[int, int]] = field(default_factory=set)
    shunned_stairs: set[tuple[int, int]] = field(default_factory=set)  # lead into the Gnomish Mines

    def update(self, glyphs: np.ndarray, y: int, x: int) -> None:
        """Fold one observation in: terrain where it is visible, things on top keep what was under them."""
        t = G.TERRAIN[glyphs]
        shown = t >= 0
        self.terrain[shown] = t[shown]
        # a monster or object stands on something walkable; if we never saw what, call it floor
        hidden = ~shown & (self.terrain == G.UNKNOWN) & ~G.BLOCKED[glyphs]
        self.terrain[hidden] = G.FLOOR
        self.blocked = G.BLOCKED[glyphs]  # boulders move and statues break: trust what is shown now
        self.observed[max(0, y - 1):y + 2, max(0, x - 1):x + 2] = True
        self.visits[y, x] += 1
        for pos in list(self.corpses):
            if G.CORPSE[glyphs[pos]] < 0 and G.MONSTER[glyphs[pos]] < 0:
                del self.corpses[pos]  # eaten, rotted away or picked up
        self.stairs_down.update((int(a), int(b)) for a, b in zip(*np.nonzero(self.terrain == G.STAIRS_DOWN)))
        self.stairs_down -= self.shunned_stairs

    def down_targets(self) -> np.ndarray:
        """Down stairs the agent is willing to take."""
        t = self.terrain == G.STAIRS_DOWN
        for p in self.shunned_stairs:
            t[p] = False
        return t

    def walkable(self) -> np.ndarray:
        """Cells a path may cross (closed doors included: walking into one opens it)."""
        w = G.WALKABLE_TERRAIN[self.terrain] | (self.terrain == G.DOOR_CLOSED)
        return w & ~self.blocked & ~self.avoid

    def frontier(self) -> np.ndarray:
        """Walkable cells next to an unknown cell that we never stood beside: going there shows something."""
        unseen = (self.terrain == G.UNKNOWN) & ~self.observed
        near = np.zeros_like(unseen)
        p = np.pad(unseen, 1)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                near |= p[1 + dy:1 + dy + ROWS, 1 + dx:1 + dx + COLS]
        return near & self.walkable()


class DungeonMemory:
    """Levels by (dungeon number, level number): coming back up the stairs finds the old map."""

    def __init__(self) -> None:
        self.levels: dict[tuple[int, int], Level] = {}

    def level(self, dnum: int, dlevel: int) -> Level:
        return self.levels.setdefault((dnum, dlevel), Level())
