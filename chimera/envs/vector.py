"""A batch of environments stepped in one process (the right choice on small machines: NLE's step
holds the GIL and several envs per process beat subprocess vector envs on two cores).

Episodes reset automatically; an ended episode's last observation is kept in ``final_obs`` so
the learner can bootstrap truncated episodes. Each env is seeded ``seed + i`` at construction
and reseeded at every reset from its own generator (also seeded ``seed + i``), so runs are reproducible
and the subprocess backend steps the very same episodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np


def stack_obs(obs: list[Any]) -> Any:
    if isinstance(obs[0], dict):
        return {k: np.stack([o[k] for o in obs]) for k in obs[0]}
    return np.stack(obs)


@dataclass
class EpisodeStats:
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)

    def drain(self) -> tuple[list[float], list[int], list[float]]:
        out = (self.returns, self.lengths, self.successes)
        self.returns, self.lengths, self.successes = [], [], []
        return out


def episode_success(info: dict[str, Any], terminated: bool, reward: float) -> float:
    """NLE / MiniHack report success through end_status (2 = task successful); others by return sign."""
    status = info.get("end_status")
    if status is not None:
        return float(int(status) == 2)
    if "is_success" in info:
        return float(info["is_success"])
    return float("nan")


class InProcessVectorEnv:
    """n copies of one environment, stepped in turn."""

    def __init__(self, make_env: Callable[[], gym.Env], n: int, seed: int, seeds: list[int] | None = None):
        """Env i is seeded ``seed + i``, or ``seeds[i]`` when given (a slice of a larger vector: Ray's runners)."""
        seeds = [seed + i for i in range(n)] if seeds is None else seeds
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} envs")
        self.envs = [make_env() for _ in range(n)]
        self.n = n
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self._rngs = [np.random.default_rng(s) for s in seeds]  # per env, as in SubprocVectorEnv
        self._ret = np.zeros(n)
        self._len = np.zeros(n, dtype=np.int64)
        self.stats = EpisodeStats()
        self.obs = stack_obs([env.reset(seed=s)[0] for s, env in zip(seeds, self.envs)])

    def step(self, actions: np.ndarray):
        """-> next obs (reset where an episode ended), reward, terminated, truncated, final_obs (per env or None)."""
        obs, rew, term, trunc, finals = [], np.zeros(self.n), np.zeros(self.n, bool), np.zeros(self.n, bool), []
        if isinstance(actions, np.ndarray) and actions.dtype.kind in "iu":
            actions = actions.tolist()  # Python ints: gymnasium's Discrete.contains checks them fastest
        for i, env in enumerate(self.envs):
            o, r, te, tr, info = env.step(actions[i])
            rew[i], term[i], trunc[i] = r, te, tr
            self._ret[i] += r
            self._len[i] += 1
            final = None
            if te or tr:
                self.stats.returns.append(float(self._ret[i]))
                self.stats.lengths.append(int(self._len[i]))
                self.stats.successes.append(episode_success(info, te, r))
                self._ret[i], self._len[i] = 0.0, 0
                # a copy: NLE writes the next reset's observation into the arrays it returned
                final = {k: np.array(v) for k, v in o.items()} if isinstance(o, dict) else np.array(o)
                o, _ = env.reset(seed=int(self._rngs[i].integers(0, 2**31 - 1)))
            obs.append(o)
            finals.append(final)
        self.obs = stack_obs(obs)
        return self.obs, rew, term, trunc, finals

    def close(self) -> None:
        for env in self.envs:
            env.close()
