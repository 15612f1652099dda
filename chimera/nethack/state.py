"""The agent's view of the game, rebuilt from each observation: status line, messages, inventory, map."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from nle import nethack as nh

from chimera.nethack import glyphs as G
from chimera.nethack.level import DungeonMemory, Level

OBS_KEYS = ("glyphs", "blstats", "message", "inv_letters", "inv_oclasses", "inv_strs", "tty_chars", "misc")
MENU = re.compile(r"\(end\)|\(\d+ of \d+\)")
# blstats hunger is NetHack's u.uhs
SATIATED, NOT_HUNGRY, HUNGRY, WEAK, FAINTING = range(5)


def text(a: np.ndarray) -> str:
    return bytes(a).split(b"\0", 1)[0].decode("latin-1")


@dataclass
class Status:
    """The blstats fields the strategies use."""

    x: int
    y: int
    hp: int
    hpmax: int
    depth: int
    dnum: int
    dlevel: int
    turn: int
    score: int
    xl: int
    hunger: int
    gold: int

    @classmethod
    def of(cls, b: np.ndarray) -> Status:
        return cls(x=int(b[nh.NLE_BL_X]), y=int(b[nh.NLE_BL_Y]), hp=int(b[nh.NLE_BL_HP]),
                   hpmax=max(1, int(b[nh.NLE_BL_HPMAX])), depth=int(b[nh.NLE_BL_DEPTH]),
                   dnum=int(b[nh.NLE_BL_DNUM]), dlevel=int(b[nh.NLE_BL_DLEVEL]), turn=int(b[nh.NLE_BL_TIME]),
                   score=int(b[nh.NLE_BL_SCORE]), xl=int(b[nh.NLE_BL_XP]), hunger=int(b[nh.NLE_BL_HUNGER]),
                   gold=int(b[nh.NLE_BL_GOLD]))


@dataclass
class Item:
    letter: str
    oclass: int
    name: str


@dataclass
class GameState:
    """Everything known at one step; ``memory`` and the fields after it persist across steps."""

    memory: DungeonMemory = field(default_factory=DungeonMemory)
    status: Status | None = None
    glyphs: np.ndarray | None = None
    prev_glyphs: np.ndarray | None = None
    message: str = ""
    screen: str = ""
    misc: tuple[int, int, int] = (0, 0, 0)
    inventory: list[Item] = field(default_factory=list)
    level: Level | None = None
    max_depth: int = 1

    def update(self, obs: dict) -> None:
        """Read one observation and fold the map into the current level's memory."""
        self.prev_glyphs = self.glyphs
        self.glyphs = obs["glyphs"]
        self.status = s = Status.of(obs["blstats"])
        self.message = text(obs["message"])
        self.screen = "\n".join(text(r) for r in obs["tty_chars"]) if "tty_chars" in obs else self.message
        if "misc" in obs:  # (in a y/n question, in a text line, waiting for a key at --More-- or a menu)
            self.misc = tuple(int(v) for v in obs["misc"])
        else:  # MiniHack has no misc key: read the screen
            self.misc = (0, 0, int("--More--" in self.screen or bool(MENU.search(self.screen))))
        if "inv_letters" in obs:
            self.inventory = [Item(chr(int(c)), int(k), text(n)) for c, k, n in
                              zip(obs["inv_letters"], obs["inv_oclasses"], obs["inv_strs"]) if c]
        self.max_depth = max(self.max_depth, s.depth)
        self.level = self.memory.level(s.dnum, s.dlevel)
        if self.misc == (0, 0, 0):  # a menu or --More-- may cover the map
            self.level.update(self.glyphs, s.y, s.x)
            self._note_corpses()

    def _note_corpses(self) -> None:
        """A corpse appearing where a monster stood a step ago is fresh: remember its kind and the turn."""
        if self.prev_glyphs is None:
            return
        new = (G.CORPSE[self.glyphs] >= 0) & (G.MONSTER[self.prev_glyphs] >= 0)
        for y, x in zip(*np.nonzero(new)):
            self.level.corpses[(int(y), int(x))] = (int(G.CORPSE[self.glyphs[y, x]]), self.status.turn)

    @property
    def pos(self) -> tuple[int, int]:
        return self.status.y, self.status.x

    def monsters(self) -> list[tuple[int, int, int]]:
        """(y, x, monster index) of every non-pet monster shown, the hero excluded."""
        mon = G.MONSTER[self.glyphs]
        ys, xs = np.nonzero((mon >= 0) & ~G.PET[self.glyphs])
        return [(int(y), int(x), int(mon[y, x])) for y, x in zip(ys, xs) if (y, x) != self.pos]
