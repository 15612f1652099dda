"""Environments by family id (gym/, mujoco/, minihack/, nethack/), NLE wrappers, vector envs."""

from chimera.envs.registry import list_ids, make

__all__ = ["list_ids", "make"]
