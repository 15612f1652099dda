"""``game/<minihack id>``: a MiniHack level played through its text rendering, one action per turn.

The observation is the level's map (the non-blank part of NetHack's ``chars``) and its message; the
model answers with one compass direction (``north`` ... ``northwest``, or ``n`` ... ``nw``). The
reward is the environment's: 1 for reaching the goal within ``max_turns`` turns, else 0. Levels are
seeded through ``chimera.envs`` (NetHack's own seeding). The held-out split of a level with random
layouts (Room-Random-5x5) is the layouts whose opening map hashes to 0 mod 10, so no held-out layout
is ever trained on; Room-5x5 has one layout, so its split is by NetHack seed.
"""

from __future__ import annotations

import random

import numpy as np

from chimera.posttrain.envs.base import Env, StepResult, final_answer, is_held_out
from chimera.tokenizer import Message

ACTIONS = ("north", "east", "south", "west", "northeast", "southeast", "southwest", "northwest")
SHORT = {"n": 0, "e": 1, "s": 2, "w": 3, "ne": 4, "se": 5, "sw": 6, "nw": 7}
MOVES = {0: (-1, 0), 1: (0, 1), 2: (1, 0), 3: (0, -1), 4: (-1, 1), 5: (1, 1), 6: (1, -1), 7: (-1, -1)}
GAMES = {"Room-5x5": "seed", "Room-Random-5x5": "layout"}
"""Each game and what its held-out split is drawn by."""


def render_map(chars: np.ndarray) -> str:
    """The non-blank rectangle of NetHack's character map."""
    rows = [i for i in range(chars.shape[0]) if (chars[i] != 32).any()]
    cols = [j for j in range(chars.shape[1]) if (chars[rows, j] != 32).any()] if rows else []
    if not rows:
        return ""
    return "\n".join(bytes(chars[i, cols[0]:cols[-1] + 1]).decode("latin-1") for i in rows)


def parse_action(text: str) -> int | None:
    word = final_answer(text).lower().strip(" .!")
    if word in ACTIONS:
        return ACTIONS.index(word)
    return SHORT.get(word)


class GameEnv(Env):
    """A MiniHack level as a text game (see the module docstring)."""

    def __init__(self, game: str, max_turns: int = 6):
        if game not in GAMES:
            raise ValueError(f"game/{game} is not available (available: {', '.join(f'game/{g}' for g in GAMES)})")
        from chimera.envs import make

        self.id, self.max_turns, self.split = f"game/{game}", max_turns, GAMES[game]
        self.env = make(f"minihack/{game}", observation_keys=("chars", "message"), max_episode_steps=max_turns + 1)
        self.turns, self.over = 0, True
        self.obs: dict | None = None

    def instructions(self) -> str:
        return (f"You are @ on a NetHack map; reach the stairs > within {self.max_turns} moves. Each turn reply "
                f"with one direction: {', '.join(ACTIONS)}.")

    def observation(self) -> str:
        msg = bytes(self.obs["message"]).decode("latin-1").strip("\x00 ")
        return render_map(self.obs["chars"]) + (f"\n{msg}" if msg else "")

    def reset(self, seed: int, held_out: bool = False) -> list[Message]:
        rng = random.Random(f"{self.id}/{seed}")
        for _ in range(1000):
            nle_seed = rng.randrange(2**31)
            self.obs, _ = self.env.reset(seed=nle_seed)
            key = render_map(self.obs["chars"]) if self.split == "layout" else f"seed {nle_seed}"
            if is_held_out(key) == held_out:
                break
        else:
            raise RuntimeError(f"{self.id} produced no {'held-out' if held_out else 'training'} level")
        self.turns, self.over = 0, False
        return [Message("system", self.instructions()), Message("user", self.observation())]

    def step(self, assistant_text: str) -> StepResult:
        if self.over:
            raise RuntimeError(f"{self.id}: step() after the episode ended; call reset()")
        self.turns += 1
        action = parse_action(assistant_text)
        info = {"turns": float(self.turns), "invalid_actions": 0.0, "correct": 0.0}
        if action is None:
            info["invalid_actions"] = 1.0
            note = f"unknown action; reply with one of {', '.join(ACTIONS)}"
            done, reward = self.turns >= self.max_turns, 0.0
        else:
            self.obs, r, term, trunc, _ = self.env.step(action)
            reward = float(r > 0)
            done, note = bool(term or trunc or self.turns >= self.max_turns), ""
        info["correct"] = reward
        self.over = done
        if done:
            return StepResult([], reward, True, info)
        text = self.observation() + (f"\n{note}" if note else "")
        return StepResult([Message("user", text)], 0.0, False, info)

    def solve(self) -> str:
        """The shortest-path solver's next turn: one move toward the stairs (diagonal where it can)."""
        return f"</think>{self.solver_action()}<eos>"

    def solver_action(self) -> str:
        """The shortest-path solver's next action (an open room: diagonal moves toward the stairs)."""
        ch = self.obs["chars"]
        (ar, ac), (gr, gc) = (tuple(np.argwhere(ch == ord(c))[0]) for c in "@>")
        dr, dc = int(np.sign(gr - ar)), int(np.sign(gc - ac))
        return ACTIONS[next(a for a, m in MOVES.items() if m == (dr, dc))]

    def close(self) -> None:
        self.env.close()


def random_policy_rate(env: GameEnv, episodes: int, seed: int = 0, held_out: bool = True) -> float:
    """The share of ``episodes`` a uniformly random mover solves within the turn limit (the baseline a
    game result is read against)."""
    rng = random.Random(f"random-policy/{seed}")
    wins = 0
    for k in range(episodes):
        env.reset(seed=k, held_out=held_out)
        for _ in range(env.max_turns):
            r = env.step(f"</think>{rng.choice(ACTIONS)}<eos>")
            if r.done:
                wins += int(r.reward > 0)
                break
    return wins / episodes


IDS = [f"game/{g}" for g in GAMES]
