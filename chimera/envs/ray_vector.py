"""Environments stepped by Ray actors: RLlib's EnvRunnerGroup pattern behind the vector-env interface.

Each actor (an ``EnvRunner``, one CPU) owns a contiguous slice of the n envs as an ``InProcessVectorEnv``
seeded as the in-process backend seeds those envs, so a seeded run steps the very same episodes. Actions
go out and (obs, reward, terminated, truncated, final obs, successes) come back through Ray's object
store. An actor that dies (killed, its process crashed, its node lost), raises, or does not answer within
``timeout`` seconds is killed and started again with fresh seeds: its envs' episodes end as truncated,
the restart is logged and counted in ``restarts`` (the policy of chimera.envs.subproc, shared through
``RestartingWorkers``).

Ray is the optional ``dist`` extra, imported only here and only when this backend is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from chimera.envs.subproc import RestartingWorkers
from chimera.envs.vector import InProcessVectorEnv


def require_ray(feature: str = "the ray vector backend", instead: str = "--vector subprocess / inprocess"):
    """The ray module, or an error that says how to install it (or what to use ``instead``)."""
    from chimera.config import ConfigError

    try:
        import ray
    except ImportError:
        raise ConfigError(f"{feature} needs Ray, which is not installed: pip install -e '.[dist]' "
                          f"(or use {instead})") from None
    return ray


def connect(address: str = "", num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address`` ("auto": the one this machine belongs to), or start Ray in this
    process with ``num_cpus`` CPUs; nothing if Ray is already initialised."""
    ray = require_ray()
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)


class EnvRunner:
    """A Ray actor's body: a slice of the vector's envs, stepped in turn."""

    def __init__(self, make_env: Callable[[], gym.Env], seeds: list[int]):
        self.venv = InProcessVectorEnv(make_env, len(seeds), 0, seeds=seeds)

    def ready(self) -> Any:
        """The first observations (stacked)."""
        return self.venv.obs

    def step(self, actions: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, list[Any], list[float]]:
        """-> obs, reward, terminated, truncated, final obs per env (or None), success per ended episode."""
        obs, rew, term, trunc, finals = self.venv.step(actions)
        successes = self.venv.stats.drain()[2]
        return obs, rew, term, trunc, finals, successes


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def _put(obs: Any, idx: list[int], part: Any) -> None:
    if isinstance(obs, dict):
        for k in obs:
            obs[k][idx] = part[k]
    else:
        obs[idx] = part


class RayVectorEnv(RestartingWorkers):
    """n envs over ``workers`` Ray actors; dead, failing or hung actors are restarted."""

    def __init__(self, make_env: Callable[[], gym.Env], n: int, seed: int, workers: int = 0, timeout: float = 60.0,
                 max_restarts: int = 100, log: Callable[[str], None] = print, address: str = "",
                 start_timeout: float = 120.0):
        """``timeout``: seconds a step may take; ``start_timeout``: seconds an actor may take to start (Ray
        starts a process for it, which imports chimera.envs and builds its envs)."""
        ray = require_ray()
        workers = min(n, workers or os.cpu_count() or 1)
        connect(address, workers)
        probe = make_env()  # read the spaces here, as the subprocess backend does
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        probe.close()
        self.n, self.timeout, self.max_restarts, self.log = n, timeout, max_restarts, log
        self.start_timeout = start_timeout
        self._ray, self._make_env = ray, make_env
        self._runner = ray.remote(num_cpus=1, max_restarts=0)(EnvRunner)
        self._slices = [[int(i) for i in s] for s in np.array_split(np.arange(n), workers)]
        self._init_bookkeeping(n, seed)
        self._actors: list[Any] = [None] * workers
        self._pending: list[Any] = [None] * workers  # the ready() call of a starting actor
        for w in range(workers):
            self._start(w, [seed + i for i in self._slices[w]])
        parts = []
        for w in range(workers):
            kind, payload = self._receive(w)
            if kind != "ready":
                self.close()
                raise RuntimeError(f"vector env actor {w} failed to start its environments ({kind}): "
                                   f"{payload.strip().splitlines()[-1]}\n{payload}")
            parts.append(payload)
        self.obs = _concat(parts)

    # ---- actor lifecycle ------------------------------------------------------------------------------
    def _start(self, w: int, seeds: list[int]) -> None:
        self._actors[w] = self._runner.remote(self._make_env, seeds)
        self._pending[w] = self._actors[w].ready.remote()

    def _stop(self, w: int) -> None:
        if self._actors[w] is not None:
            self._ray.kill(self._actors[w], no_restart=True)
            self._actors[w] = None

    def _get(self, ref: Any, timeout: float | None = None) -> tuple[str, Any]:
        """("ok", value), or ("hang" | "crash" | "error", why); ``timeout`` None: ``ref`` is known to be ready."""
        ray = self._ray
        if timeout is not None and not ray.wait([ref], timeout=timeout)[0]:
            return "hang", f"no answer within {timeout:g} s"
        try:
            return "ok", ray.get(ref)
        except ray.exceptions.RayActorError as e:
            return "crash", f"actor died: {type(e).__name__}: {str(e).strip()}"
        except ray.exceptions.RayError as e:
            return "error", str(e)

    def _receive(self, w: int) -> tuple[str, Any]:
        """Wait for a starting actor's first observations: ("ready", obs) or why it failed."""
        kind, payload = self._get(self._pending[w], self.start_timeout)
        self._pending[w] = None
        return ("ready" if kind == "ok" else kind), payload

    def _started(self, w: int, payload: Any) -> None:
        _put(self.obs, self._slices[w], payload)

    # ---- stepping -------------------------------------------------------------------------------------
    def step(self, actions: np.ndarray):
        """-> next obs (reset where an episode ended), reward, terminated, truncated, final_obs (per env or None)."""
        actions = np.asarray(actions)
        refs = [actor.step.remote(actions[idx]) for actor, idx in zip(self._actors, self._slices)]
        answered, _ = self._ray.wait(refs, num_returns=len(refs), timeout=self.timeout)  # all, or the timeout
        answered = set(answered)
        rew, term = np.zeros(self.n), np.zeros(self.n, dtype=bool)
        trunc, ended = np.zeros(self.n, dtype=bool), np.zeros(self.n, dtype=bool)
        finals_in: list[Any] = [None] * self.n
        successes: dict[int, float] = {}
        failed: dict[int, tuple[str, str]] = {}
        # a failed actor's envs keep the observation the learner last saw (their cut episodes' final one)
        obs = {k: v.copy() for k, v in self.obs.items()} if isinstance(self.obs, dict) else self.obs.copy()
        for w, (ref, idx) in enumerate(zip(refs, self._slices)):
            kind, payload = (self._get(ref) if ref in answered
                             else ("hang", f"no answer within {self.timeout:g} s"))
            if kind != "ok":
                failed[w] = (kind, payload)
                continue
            o, r, te, tr, fin, succ = payload
            _put(obs, idx, o)
            rew[idx], term[idx], trunc[idx] = r, te, tr
            done = [i for i, f in zip(idx, fin) if f is not None]
            for i, f in zip(idx, fin):
                finals_in[i] = f
            ended[done] = True
            successes.update(zip(done, succ))
        self.obs = obs  # restarted actors write their first observations into it (_started)
        finals = self._settle(rew, term, trunc, ended, finals_in.__getitem__, successes, failed)
        return self.obs, rew, term, trunc, finals

    def close(self) -> None:
        for w in range(len(self._actors)):
            self._stop(w)
