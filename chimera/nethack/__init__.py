"""Full-game NetHack: a symbolic agent (strategies over a remembered map) and the NetHack Challenge's
evaluation (``chimera nethack eval``)."""

from chimera.nethack.agent import KeyMap, RandomAgent, SymbolicAgent

__all__ = ["KeyMap", "RandomAgent", "SymbolicAgent"]
