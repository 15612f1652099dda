"""The symbolic agent's strategies, most urgent first. Each has an entry condition (``applies``) and a
step (``act``: the keys of one command, or None to let the next strategy act). The agent asks them in
order every step, so a more urgent strategy preempts a running one the moment its condition holds
(AutoAscend's structure, stepped one command at a time instead of by blocking calls)."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import numpy as np
from nle import nethack as nh

from chimera.nethack import glyphs as G
from chimera.nethack import knowledge as K
from chimera.nethack.pathing import DIRECTIONS, direction
from chimera.nethack.prompts import Intent
from chimera.nethack.state import HUNGRY, WEAK

if TYPE_CHECKING:
    from chimera.nethack.agent import SymbolicAgent

PRAY_KEY, KICK_KEY = chr(nh.Command.PRAY), chr(nh.Command.KICK)
PRAYER_GAP = 1000   # turns between prayers: the timeout after one is rnz(350), rarely above this
FIRST_PRAYER = 120  # the timeout starts at 300, falls by one a turn, and a major trouble is fixed below 200


class Strategy(abc.ABC):
    """A skill with an entry condition (``applies``) and one step of keys (``act``; None: nothing to do now)."""

    name = "strategy"

    def applies(self, agent: SymbolicAgent) -> bool:
        return True

    @abc.abstractmethod
    def act(self, agent: SymbolicAgent) -> list[str] | None:
        """The keys for this step, or None to let the next strategy act."""


class Pray(Strategy):
    """HP below 1/7 (or 5) or weak from hunger are major troubles a god fixes when the timeout allows."""

    name = "pray"

    def applies(self, agent):
        s = agent.state.status
        low = s.hp <= 5 or s.hp * 7 <= s.hpmax
        return (low or s.hunger >= WEAK) and agent.can_pray()

    def act(self, agent):
        agent.last_prayer = agent.state.status.turn
        agent.prayers.append(agent.state.status.turn)
        agent.intent = Intent("pray", turn=agent.state.status.turn)
        return [PRAY_KEY]


class Elbereth(Strategy):
    """Low HP with a hostile next to us and no prayer left: write Elbereth in the dust and rest on it
    until HP is back to two thirds (humans and minotaurs ignore it: those we fight)."""

    name = "elbereth"

    def applies(self, agent):
        s = agent.state.status
        on_it = agent.engraved.get(agent.state.pos, -10**9) >= s.turn - 40
        low = s.hp * 3 < s.hpmax or (on_it and s.hp * 3 < s.hpmax * 2)
        near = agent.adjacent_hostiles()
        return low and bool(near) and not any(K.ignores_elbereth(m) for _, _, m in near)

    def act(self, agent):
        s = agent.state.status
        fresh = agent.engraved.get(agent.state.pos, -10**9) >= s.turn - 15
        if "engraving now reads" in agent.state.message or not fresh:
            agent.engraved[agent.state.pos] = s.turn
            agent.intent = Intent("engrave", turn=s.turn)
            return ["E"]
        return ["s"]  # rest: attacking from the square would erase the engraving


class Rest(Strategy):
    """Low HP and nothing next to us: search in place until HP is back to half."""

    name = "rest"

    def applies(self, agent):
        s = agent.state.status
        return s.hp * 2 < s.hpmax and not agent.adjacent_hostiles() and agent.rest_ok()

    def act(self, agent):
        return ["2", "0", "s"]


class Fight(Strategy):
    """Melee the adjacent hostile monster (F-direction, so a displaced image is attacked too), after a
    farlook shows it is not peaceful."""

    name = "fight"

    def applies(self, agent):
        return bool(agent.adjacent_hostiles()) or agent.swallowed()

    def act(self, agent):
        if agent.swallowed():
            return ["F", "k"]
        y, x, _ = agent.adjacent_hostiles()[0]
        d = direction(agent.state.pos, (y, x))
        if agent.needs_look(y, x):  # peaceful monsters look like hostile ones; NetHack asks no "Really?"
            agent.looking = (int(agent.state.glyphs[y, x]), y, x)
            return [";", d, "."]
        agent.last_attack = (y, x)
        return ["F", d]


class Approach(Strategy):
    """A hostile we can take, a few steps away, with HP to spare: close in (archers and wand users do not
    come to us, and kills are experience points)."""

    name = "approach"
    RANGE = 6

    def applies(self, agent):
        s = agent.state.status
        return s.hp * 3 >= s.hpmax * 2 and bool(self._targets(agent))

    def _targets(self, agent):
        y, x = agent.state.pos
        xl = agent.state.status.xl
        return [(my, mx) for my, mx, m in agent.hostiles()
                if max(abs(my - y), abs(mx - x)) <= self.RANGE and 0 <= m < nh.NUMMONS
                and not K.avoid_melee(m) and nh.permonst(m).difficulty <= xl + 3]

    def act(self, agent):
        near = np.zeros(agent.state.level.terrain.shape, bool)
        for my, mx in self._targets(agent):  # cells next to the monster: it blocks its own cell
            near[max(0, my - 1):my + 2, max(0, mx - 1):mx + 2] = True
        return agent.step_toward(near, max_dist=self.RANGE + 2)


class Eat(Strategy):
    """Hungry: a fresh safe corpse on this square or close by, else permanent food from the pack."""

    name = "eat"

    def applies(self, agent):
        return agent.state.status.hunger >= HUNGRY and agent.state.status.turn >= agent.eat_retry_turn

    def act(self, agent):
        st = agent.state
        level, turn = st.level, st.status.turn
        safe = {p: m for p, (m, t) in level.corpses.items() if K.safe_corpse(m, t, turn)}
        if st.pos in safe:
            agent.eat_retry_turn = turn + 5
            agent.intent = Intent("eat_floor", item=K.name(safe[st.pos]) + " corpse", turn=turn)
            return ["e"]
        if safe:
            targets = np.zeros(level.terrain.shape, bool)
            for p in safe:
                targets[p] = True
            step = agent.step_toward(targets, max_dist=12)
            if step:
                return step
        food = [it for it in st.inventory if it.oclass == nh.FOOD_CLASS and K.permanent_food(it.name)]
        if food:
            agent.eat_retry_turn = turn + 5
            agent.intent = Intent("eat_item", item=food[0].letter, turn=turn)
            return ["e"]
        agent.eat_retry_turn = turn + 50  # nothing to eat: let the other strategies play on
        return None


class Descend(Strategy):
    """On the down stairs once this level is done (or the agent dives): go down; else walk to them."""

    name = "descend"

    def applies(self, agent):
        return bool(agent.state.level.stairs_down) and agent.wants_down()

    def act(self, agent):
        st = agent.state
        targets = st.level.down_targets()
        if targets[st.pos]:
            agent.went_down = ((st.status.dnum, st.status.dlevel), st.pos)
            return [">"]
        return agent.step_toward(targets)


class LeaveMines(Strategy):
    """Just arrived in the Gnomish Mines, not as a gnome or dwarf (whom its inhabitants leave in peace):
    go back up and shun those stairs. Its crowds of armed gnomes and dwarves kill most low-level heroes."""

    name = "leave_mines"
    MINES = 2  # NetHack's dungeon number of the Gnomish Mines

    def applies(self, agent):
        st = agent.state
        # just down the stairs (the hero's glyph hides the up stairs under it, so go by the move made)
        return (st.status.dnum == self.MINES and agent.went_down is not None and not agent.mines_friendly
                and agent.went_down[0] != (st.status.dnum, st.status.dlevel))

    def act(self, agent):
        key, pos = agent.went_down
        agent.state.memory.levels[key].shunned_stairs.add(pos)
        agent.went_down = None
        return ["<"]


class Explore(Strategy):
    """Walk to the nearest cell next to unseen ground (rooms, corridors, doorways)."""

    name = "explore"

    def act(self, agent):
        return agent.step_toward(agent.state.level.frontier())


class Search(Strategy):
    """Nothing left to see: search at dead ends and along walls for hidden doors and passages, the
    spots with the most rock around them and the fewest searches first."""

    name = "search"
    BURST = 10
    LIMIT = 30  # searches per spot before it is given up

    def act(self, agent):
        level, pos = agent.state.level, agent.state.pos
        score = search_value(level)
        if score[pos] > 0 and level.searched[pos] < self.LIMIT and agent.search_spot == pos:
            level.searched[pos] += self.BURST
            return ["1", "0", "s"]
        agent.search_spot = None
        paths = agent.paths()
        reach = (paths.dist >= 0) & (score > 0) & (level.searched < self.LIMIT)
        if not reach.any():
            return None
        cost = np.where(reach, paths.dist + 3 * level.searched - 4 * score, 10**9)
        target = divmod(int(np.argmin(cost)), cost.shape[1])
        if target == pos:
            agent.search_spot = pos
            level.searched[pos] += self.BURST
            return ["1", "0", "s"]
        agent.search_spot = target
        return agent.step_along(paths, target)


def search_value(level) -> np.ndarray:
    """For each walkable cell, how many of its neighbours are unexplained rock (0 elsewhere)."""
    rock = np.pad((level.terrain == G.UNKNOWN) | (level.terrain == G.WALL), 1)
    rows, cols = level.terrain.shape
    n = sum(rock[1 + dy:1 + dy + rows, 1 + dx:1 + dx + cols].astype(np.int32) for dy, dx in DIRECTIONS)
    walk = G.WALKABLE_TERRAIN[level.terrain]
    corridor_end = (level.terrain == G.CORRIDOR) & (n >= 7)  # dead ends weigh most
    return np.where(walk, n + 4 * corridor_end, 0) * (n >= 3)


class Wander(Strategy):
    """Last resort: a random step (the watchdog ends the game if this goes on without progress)."""

    name = "wander"

    def act(self, agent):
        return [agent.random_step()]


def default_strategies() -> list[Strategy]:
    return [Pray(), Elbereth(), Fight(), LeaveMines(), Eat(), Rest(), Approach(), Descend(), Explore(), Search(),
            Wander()]


__all__ = ["FIRST_PRAYER", "KICK_KEY", "PRAYER_GAP", "Strategy", "default_strategies"]
