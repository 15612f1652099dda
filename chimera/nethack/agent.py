"""Agents that play full NetHack: ``SymbolicAgent`` (strategies over a remembered map) and ``RandomAgent``.

Both map observations to indices of the environment's action list; the symbolic agent thinks in keys
("F" then "h") and ``KeyMap`` turns them into action indices.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
from nle import nethack as nh

from chimera.nethack import glyphs as G
from chimera.nethack import knowledge as K
from chimera.nethack import prompts
from chimera.nethack.pathing import DIRECTIONS, Paths, direction
from chimera.nethack.state import GameState
from chimera.nethack.strategies import FIRST_PRAYER, KICK_KEY, PRAYER_GAP, Strategy, default_strategies
from chimera.nethack.watchdog import Watchdog


class KeyMap:
    """Keys (one character each) to indices of an environment's action list."""

    def __init__(self, actions) -> None:
        self.index = {int(a): i for i, a in enumerate(actions)}

    def __call__(self, key: str) -> int:
        try:
            return self.index[ord(key)]
        except KeyError:
            raise ValueError(f"key {key!r} is not in this environment's action set; make the env with "
                             f"actions=nle.nethack.ACTIONS (the full keyboard, as NetHackChallenge has)") from None


class RandomAgent:
    """Uniformly random actions: the floor every agent is measured against."""

    name = "random"

    def __init__(self, actions, seed: int = 0) -> None:
        self.n = len(actions)
        self.rng = random.Random(seed)
        self.stats: dict = {}

    def reset(self) -> None:
        pass

    def act(self, obs: dict) -> int:
        return self.rng.randrange(self.n)

    def stop_reason(self) -> str | None:
        return None


class SymbolicAgent:
    """A rule-based agent: prompts first, then the first strategy whose entry condition holds."""

    name = "symbolic"

    def __init__(self, actions, seed: int = 0, strategies: list[Strategy] | None = None,
                 dive_margin: int = 1, watchdog: Watchdog | None = None) -> None:
        self.keys = KeyMap(actions)
        self.strategies = strategies or default_strategies()
        self.dive_margin = dive_margin
        self.rng = random.Random(seed)
        self.watchdog = watchdog or Watchdog()
        self.reset()

    def reset(self) -> None:
        self.state = GameState()
        self.queue: list[str] = []
        self.intent: prompts.Intent | None = None
        self.last_prayer = -10**9
        self.prayers: list[int] = []
        self.engraved: dict[tuple[int, int], int] = {}
        self.eat_retry_turn = 0
        self.search_spot: tuple[int, int] | None = None
        self.last_attack: tuple[int, int] | None = None
        self.peaceful: dict[int, int] = {}      # monster glyph -> turn until which it is left alone
        self.looked: dict[tuple[int, int, int], tuple[int, bool]] = {}  # (glyph, y, x) -> (turn, peaceful)
        self.looking: tuple[int, int, int] | None = None  # a farlook (;) whose answer is on screen now
        self.moving: tuple[tuple[int, int], tuple[int, int]] | None = None  # (from, to) of the last step
        self.move_fails: Counter = Counter()
        self.kicks: Counter = Counter()
        self.level_turn: dict[tuple[int, int], int] = {}
        self.used: Counter = Counter()           # strategy name -> steps it acted
        self.went_down: tuple[tuple[int, int], tuple[int, int]] | None = None  # (level, stairs) last taken
        self.mines_friendly: bool | None = None  # gnomes and dwarves: the Mines are peaceful to them
        self.steps = 0
        self._paths: tuple[int, Paths] | None = None
        self.watchdog.reset()

    # ---- the step ----
    def act(self, obs: dict) -> int:
        return self.keys(self.act_key(obs))

    def act_key(self, obs: dict) -> str:
        """The next key to press for this observation."""
        self.steps += 1
        st = self.state
        st.update(obs)
        if self.mines_friendly is None:  # the welcome message names the race
            self.mines_friendly = "gnom" in st.message or "dwar" in st.message
        self.watchdog.observe(st)
        self._read_message()
        if self.looking is not None and not self.queue:  # the farlook answer is the top line: "(peaceful ...)"
            self.looked[self.looking] = (st.status.turn, "peaceful" in st.screen.split("\n", 1)[0])
            self.looking = None
        if st.misc[2]:  # --More-- or a menu covers the screen
            self.used["prompt"] += 1
            return prompts.answer(st, self.intent)[0]
        if self.queue:
            return self.queue.pop(0)
        keys = prompts.answer(st, self.intent)
        if keys:
            if "Really attack" in st.message and self.last_attack is not None:
                self.peaceful[int(st.glyphs[self.last_attack])] = st.status.turn + 50
            self.used["prompt"] += 1
            self.queue = keys[1:]
            return keys[0]
        self.intent = None
        self._check_move()
        self.level_turn.setdefault((st.status.dnum, st.status.dlevel), st.status.turn)
        if self.watchdog.stalled:
            keys = [self.random_step()]
            self.used["unstick"] += 1
        else:
            for strategy in self.strategies:
                if strategy.applies(self):
                    keys = strategy.act(self)
                    if keys:
                        self.used[strategy.name] += 1
                        break
            else:
                keys = ["s"]
        self.queue = list(keys[1:])
        return keys[0]

    def stop_reason(self) -> str | None:
        """Why the watchdog wants this game ended (None while it progresses)."""
        return self.watchdog.reason

    @property
    def stats(self) -> dict:
        return {"strategies": dict(self.used), "prayers": len(self.prayers)}

    # ---- what the strategies ask ----
    def random_step(self) -> str:
        """A random direction that does not walk into a monster (walking into one attacks it)."""
        st = self.state
        y, x = st.pos
        free = [k for (dy, dx), k in DIRECTIONS.items()
                if 0 <= y + dy < st.glyphs.shape[0] and 0 <= x + dx < st.glyphs.shape[1]
                and G.MONSTER[st.glyphs[y + dy, x + dx]] < 0]
        return self.rng.choice(free or ["s"])

    def can_pray(self) -> bool:
        t = self.state.status.turn
        return t >= FIRST_PRAYER and t - self.last_prayer >= PRAYER_GAP

    def rest_ok(self) -> bool:
        st = self.state
        y, x = st.pos
        return not any(max(abs(my - y), abs(mx - x)) <= 4 for my, mx, _ in self.hostiles())

    def hostiles(self) -> list[tuple[int, int, int]]:
        """Monsters not known to be peaceful (by a farlook at that spot, or a "Really attack?")."""
        st, turn = self.state, self.state.status.turn
        out = []
        for y, x, m in st.monsters():
            g = int(st.glyphs[y, x])
            t, peaceful = self.looked.get((g, y, x), (-10**9, False))
            if self.peaceful.get(g, -1) < turn and not (peaceful and turn - t < 30):
                out.append((y, x, m))
        return out

    def needs_look(self, y: int, x: int) -> bool:
        """Whether the monster at (y, x) should be looked at (;) before we attack it."""
        t, _ = self.looked.get((int(self.state.glyphs[y, x]), y, x), (-10**9, False))
        return self.state.status.turn - t > 8

    def adjacent_hostiles(self) -> list[tuple[int, int, int]]:
        y, x = self.state.pos
        return [(my, mx, m) for my, mx, m in self.hostiles()
                if max(abs(my - y), abs(mx - x)) == 1 and not K.avoid_melee(m)]

    def swallowed(self) -> bool:
        y, x = self.state.pos
        return y > 0 and nh.glyph_is_swallow(int(self.state.glyphs[y - 1, x]))

    def wants_down(self) -> bool:
        """Dive while the hero's level keeps up with the depth; deeper, finish the level first."""
        st = self.state
        s, level = st.status, st.level
        if s.hp * 3 < s.hpmax * 2:
            return False
        if s.depth <= s.xl + self.dive_margin:
            return True
        on_level = s.turn - self.level_turn.get((s.dnum, s.dlevel), s.turn)
        return on_level > 1500 or self.paths().nearest(level.frontier()) is None

    def paths(self) -> Paths:
        """Shortest paths from the hero over this level (monsters block; computed once per step)."""
        if self._paths is None or self._paths[0] != self.steps:
            st, level = self.state, self.state.level
            walk = level.walkable()
            mon = (G.MONSTER[st.glyphs] >= 0) & ~G.PET[st.glyphs]
            walk &= ~mon
            door = (level.terrain == G.DOOR_OPEN) | (level.terrain == G.DOOR_CLOSED)
            self._paths = (self.steps, Paths(walk, door, st.pos))
        return self._paths[1]

    def step_toward(self, targets: np.ndarray, max_dist: int | None = None) -> list[str] | None:
        """Keys for one step along a shortest path to the nearest target cell (None if none is reachable)."""
        paths = self.paths()
        t = paths.nearest(targets)
        if t is None or t == self.state.pos or (max_dist is not None and paths.dist[t] > max_dist):
            return None
        return self.step_along(paths, t)

    def step_along(self, paths: Paths, target: tuple[int, int]) -> list[str] | None:
        path = paths.path_to(target)
        if not path:
            return None
        nxt, pos, level = path[0], self.state.pos, self.state.level
        d = direction(pos, nxt)
        if level.terrain[nxt] == G.DOOR_CLOSED and nxt in level.locked:
            self.kicks[nxt] += 1
            if self.kicks[nxt] > 12:
                level.avoid[nxt] = True
            return [KICK_KEY, d]
        self.moving = (pos, nxt)
        return [d]

    # ---- bookkeeping ----
    def _read_message(self) -> None:
        msg, level = self.state.message, self.state.level
        if self.moving and "This door is locked" in msg:
            level.locked.add(self.moving[1])
        if "Closed for inventory" in msg:  # a shop's door: kicking it in angers the shopkeeper
            y, x = self.state.pos
            for p in list(level.locked):
                if max(abs(p[0] - y), abs(p[1] - x)) <= 1:
                    level.avoid[p] = True

    def _check_move(self) -> None:
        """A step that left us in place, with the target's terrain unchanged, counts as a failure; cells
        failed four times are avoided (boulders that do not move, hidden obstacles, unseen monsters)."""
        if self.moving is None:
            return
        frm, to = self.moving
        self.moving = None
        if self.state.pos == frm and self.state.level.terrain[to] != G.DOOR_CLOSED:
            self.move_fails[to] += 1
            if self.move_fails[to] >= 4:
                self.state.level.avoid[to] = True
