"""Answers to everything the game asks: --More--, menus, y/n and letter prompts, text lines.

An answer depends on what the agent is doing (its ``intent``): a prayer confirms, an engraving writes
Elbereth in the dust, a meal names the food; anything unexpected is declined with Escape, so that no
prompt can hold a game.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chimera.nethack.state import MENU, GameState

ESC, ENTER = "\x1b", "\r"
# a question with its choices at the end of the line ("[yn] (n)", "[- abcd or ?*]"): some builds
# (MiniHack's) do not raise the in_yn_function flag for every such prompt
_CHOICES = re.compile(r"\[[^\]]{1,40}\]( \(.\))?\s*$")


@dataclass
class Intent:
    """What the agent's current command is about: ``kind`` in pray / engrave / eat_floor / eat_item."""

    kind: str
    item: str = ""        # eat_item: the inventory letter; eat_floor: the corpse's name
    turn: int = 0


def answer(state: GameState, intent: Intent | None) -> list[str] | None:
    """The keys that answer the prompt on screen (None when nothing is being asked)."""
    in_yn, in_getlin, waiting = state.misc
    msg = state.message
    in_yn = in_yn or bool(_CHOICES.search(msg))
    if waiting:
        return [ESC] if MENU.search(state.screen) else [ENTER]
    if in_getlin:
        if intent and intent.kind == "engrave" and "write in the" in msg:
            return [*"Elbereth", ENTER]
        return [ESC]
    if not in_yn:
        return None
    kind = intent.kind if intent else ""
    if "Are you sure you want to pray" in msg:
        return ["y" if kind == "pray" else "n"]
    if "What do you want to write with" in msg:
        return ["-" if kind == "engrave" else ESC]
    if "Do you want to add to the current engraving" in msg:
        return ["n"]  # write afresh: a half-old engraving may not read Elbereth
    if "eat it?" in msg or "eat one?" in msg:
        return ["y" if kind == "eat_floor" and intent.item and intent.item in msg else "n"]
    if "What do you want to eat" in msg:
        return [intent.item if kind == "eat_item" else ESC]
    if "Really attack" in msg:
        return [ESC]
    return [ESC]
