"""Environments by family id (gym/, mujoco/, minihack/, nethack/), NLE wrappers, vector envs."""

from collections.abc import Callable

import gymnasium as gym

from chimera.envs.registry import list_ids, make
from chimera.envs.subproc import SubprocVectorEnv
from chimera.envs.vector import InProcessVectorEnv

__all__ = ["InProcessVectorEnv", "SubprocVectorEnv", "list_ids", "make", "make_vector"]


def make_vector(make_env: Callable[[], gym.Env], n: int, seed: int, backend: str = "inprocess", workers: int = 0,
                log: Callable[[str], None] = print) -> InProcessVectorEnv | SubprocVectorEnv:
    """n copies of an env: ``inprocess`` (stepped in turn) or ``subprocess`` (workers + shared memory)."""
    if backend == "inprocess":
        return InProcessVectorEnv(make_env, n, seed)
    if backend == "subprocess":
        return SubprocVectorEnv(make_env, n, seed, workers=workers, log=log)
    raise ValueError(f"unknown vector backend {backend!r}; use inprocess or subprocess")
