"""Post-training environments in Ray actors, routed by environment id (NeMo-Gym's environments as servers).

``EnvHosts`` starts ``workers`` actors (one CPU each) per environment id; an actor (``EnvHost``) holds any
number of instances of its id, by slot. ``EnvHosts.make(id)`` puts a new instance on that id's actors in
turn and returns a ``RemoteEnv``: the ``Env`` interface (``reset``, ``step``, ``solve``, ``id``,
``max_turns``) whose calls run in the actor. ``RemoteEnv.call_many`` sends one call per actor for all the
environments it is given and only then waits, so the rollout's turn (``base.call_all``) steps slow games
and tools side by side, in processes beside the trainer's. The hosted environments are the in-process
ones, reset by seed, so a seeded run plays the same episodes and logs the same metrics.

A proxy answers ``isinstance`` for the class it hosts (its ``__class__`` is that class, as in wrapt's
``ObjectProxy``), so checks such as ``isinstance(env, GameEnv)`` hold for it.

An actor that dies, or does not answer within ``timeout`` seconds, stops the run with an error naming the
environment id and the actor: a text episode cannot be cut short and continued the way a vector env's
can, so there is no restart; ``--resume`` continues from the last checkpoint. Each process (each torchrun
rank) starts its own actors, on its own local Ray or on the cluster at ``address``.

Ray is the optional ``dist`` extra, imported only here and only when this backend is asked for.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from chimera.posttrain.envs.base import Env


def require_ray():
    """The ray module, or an error that says how to install it."""
    from chimera.envs.ray_vector import require_ray as require

    return require("envs_backend=ray", "--envs-backend inprocess")


class EnvHost:
    """A Ray actor's body: environment instances of one id, by slot."""

    def __init__(self, env_id: str):
        self.env_id = env_id
        self.envs: dict[int, Env] = {}
        self.failed: dict[int, str] = {}  # slots whose make() raised, and why

    def make(self, slot: int) -> tuple[int, type]:
        """A new instance in ``slot``; -> its max_turns and class."""
        from chimera.posttrain.envs import make

        try:
            env = self.envs[slot] = make(self.env_id)
        except Exception as e:
            self.failed[slot] = f"{type(e).__name__}: {e}"
            raise
        return env.max_turns, type(env)

    def call(self, calls: list[tuple[int, str, tuple]]) -> list[Any]:
        """``(slot, method, args)`` calls, in order; -> their results."""
        for slot, _, _ in calls:
            if slot in self.failed:
                raise RuntimeError(f"{self.env_id} could not be built in its Ray actor: {self.failed[slot]}")
        return [getattr(self.envs[slot], method)(*args) for slot, method, args in calls]

    def close(self) -> None:
        for env in self.envs.values():
            if hasattr(env, "close"):
                env.close()


class _Actor:
    """One started actor and what it hosts (for error messages)."""

    def __init__(self, handle: Any, env_id: str, index: int):
        self.handle, self.env_id, self.index = handle, env_id, index

    def __str__(self) -> str:
        return f"Ray actor {self.index} of {self.env_id}"


class RemoteEnv(Env):
    """An environment that lives in a Ray actor (see the module docstring)."""

    def __init__(self, hosts: EnvHosts, actor: _Actor, slot: int, made: Any):
        self.id, self._hosts, self._actor, self._slot = actor.env_id, hosts, actor, slot
        self._made, self._meta = made, None  # the actor's make() call: (max_turns, class) once answered

    def _info(self) -> tuple[int, type]:
        if self._meta is None:
            self._meta = self._hosts.wait([self._made], [self._actor], "make")[0]
        return self._meta

    @property
    def max_turns(self) -> int:  # type: ignore[override]
        return self._info()[0]

    @property
    def __class__(self) -> type:  # type: ignore[override]
        return self._info()[1]

    @classmethod
    def call_many(cls, envs: Sequence[Env], method: str, args: Sequence[tuple]) -> list[Any]:
        by_actor: dict[_Actor, list[int]] = {}
        for i, env in enumerate(envs):
            by_actor.setdefault(env._actor, []).append(i)
        actors = list(by_actor)
        refs = [a.handle.call.remote([(envs[i]._slot, method, tuple(args[i])) for i in by_actor[a]]) for a in actors]
        out: list[Any] = [None] * len(envs)
        for a, got in zip(actors, envs[0]._hosts.wait(refs, actors, method)):
            for i, r in zip(by_actor[a], got):
                out[i] = r
        return out

    def reset(self, seed: int, held_out: bool = False):
        return RemoteEnv.call_many([self], "reset", [(seed, held_out)])[0]

    def step(self, assistant_text: str):
        return RemoteEnv.call_many([self], "step", [(assistant_text,)])[0]

    def solve(self) -> str:
        return RemoteEnv.call_many([self], "solve", [()])[0]


class EnvHosts:
    """``workers`` Ray actors per environment id, and the ``RemoteEnv``s they hold."""

    def __init__(self, env_ids: Sequence[str], workers: int = 1, address: str = "", timeout: float = 300.0):
        """``address``: the Ray cluster to join (empty: start Ray in this process with one CPU per actor);
        ``timeout``: seconds an actor may take to answer one call (its environments' turns)."""
        from chimera.envs.ray_vector import connect

        if workers < 1:
            raise ValueError(f"workers={workers} must be at least 1 (Ray actors per environment id)")
        self._ray = require_ray()
        connect(address, len(env_ids) * workers)
        self.timeout = timeout
        remote = self._ray.remote(num_cpus=1, max_restarts=0)(EnvHost)
        self.actors = {e: [_Actor(remote.remote(e), e, w) for w in range(workers)] for e in env_ids}
        self._turn = {e: itertools.cycle(a) for e, a in self.actors.items()}
        self._slots = itertools.count()

    def make(self, env_id: str) -> RemoteEnv:
        """A new instance of ``env_id`` on the next of its actors (the actor builds it in the background)."""
        if env_id not in self.actors:
            raise ValueError(f"no Ray actors host {env_id!r} (hosted: {', '.join(self.actors)})")
        actor, slot = next(self._turn[env_id]), next(self._slots)
        return RemoteEnv(self, actor, slot, actor.handle.make.remote(slot))

    def wait(self, refs: list[Any], actors: list[_Actor], method: str) -> list[Any]:
        """The answers of ``refs`` (one per actor); a dead or silent actor raises naming its environment id."""
        ray = self._ray
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.timeout)
        ready = set(ready)
        out = []
        for ref, actor in zip(refs, actors):
            if ref not in ready:
                raise RuntimeError(f"{actor} did not answer {method}() within {self.timeout:g} s; the run stops "
                                   f"(resume it from its last checkpoint with --resume)")
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayActorError as e:
                raise RuntimeError(f"{actor} died during {method}(): {type(e).__name__}: {str(e).strip()}; the "
                                   f"run stops (resume it from its last checkpoint with --resume)") from None
        return out

    def close(self) -> None:
        """Close every hosted environment (NLE's temporary folders) and stop the actors."""
        actors = [a for group in self.actors.values() for a in group]
        ray = self._ray
        ray.wait([a.handle.close.remote() for a in actors], num_returns=len(actors), timeout=30)
        for a in actors:
            ray.kill(a.handle, no_restart=True)
        self.actors = {}
