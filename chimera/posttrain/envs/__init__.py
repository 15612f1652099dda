"""Post-training environments behind one protocol (``chimera.posttrain.envs.base``): ``make(id)``,
``env.reset(seed=s, held_out=False)`` -> opening messages, ``env.step(text)`` -> ``StepResult``.

Ids: ``reasoning/<task>`` (add, sort, search, isort, grid), ``tools/calculator``, ``tools/lookup``,
``json/<task>`` (record, sort), ``clrs/<algorithm>`` and ``game/Room-5x5`` (needs the envs extra).
"""

from __future__ import annotations

import difflib

from chimera.posttrain.envs import clrs_text, game, json_tasks, reasoning
from chimera.posttrain.envs.base import Env, StepResult, call_all, final_answer, is_held_out
from chimera.posttrain.envs.tools import CalculatorEnv, LookupEnv


def list_ids() -> list[str]:
    """Every id ``make`` accepts."""
    return [*reasoning.IDS, "tools/calculator", "tools/lookup", *json_tasks.IDS, *clrs_text.IDS, *game.IDS]


def make(env_id: str) -> Env:
    """A fresh environment for ``env_id``; an unknown id raises ValueError listing the known ones."""
    family, _, name = env_id.partition("/")
    if env_id not in list_ids():
        close = difflib.get_close_matches(env_id, list_ids(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown post-training environment {env_id!r}{hint}; known ids: {', '.join(list_ids())}")
    if family == "reasoning":
        return reasoning.ReasoningEnv(name)
    if family == "json":
        return json_tasks.JSONEnv(name)
    if family == "clrs":
        return clrs_text.CLRSEnv(name)
    if family == "game":
        return game.GameEnv(name)
    return CalculatorEnv() if name == "calculator" else LookupEnv()


__all__ = ["Env", "StepResult", "call_all", "final_answer", "is_held_out", "list_ids", "make"]
