"""Environments by family id (gym/, mujoco/, minihack/, nethack/), NLE wrappers, vector envs."""

from collections.abc import Callable

import gymnasium as gym

from chimera.envs.registry import list_ids, make
from chimera.envs.subproc import SubprocVectorEnv
from chimera.envs.vector import InProcessVectorEnv

__all__ = ["InProcessVectorEnv", "SubprocVectorEnv", "list_ids", "make", "make_vector"]


def make_vector(make_env: Callable[[], gym.Env], n: int, seed: int, backend: str = "inprocess", workers: int = 0,
                log: Callable[[str], None] = print, ray_address: str = ""):
    """n copies of an env: ``inprocess`` (stepped in turn), ``subprocess`` (workers + shared memory) or ``ray``
    (Ray actors; ``ray_address`` joins a cluster, else Ray starts here with ``workers`` CPUs)."""
    if backend == "inprocess":
        return InProcessVectorEnv(make_env, n, seed)
    if backend == "subprocess":
        return SubprocVectorEnv(make_env, n, seed, workers=workers, log=log)
    if backend == "ray":
        from chimera.envs.ray_vector import RayVectorEnv

        return RayVectorEnv(make_env, n, seed, workers=workers, log=log, address=ray_address)
    raise ValueError(f"unknown vector backend {backend!r}; use inprocess, subprocess or ray")
