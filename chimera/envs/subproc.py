"""Environments stepped in worker processes, observations passed through shared memory.

Each worker owns a contiguous slice of the n envs and writes their observations, rewards and
end flags straight into shared arrays; the pipe carries only the actions and the success flags
of finished episodes (returns and lengths are summed here, from the shared rewards). A worker
that dies (segfault, exception, OOM kill; during a step or between steps) or does not answer
within ``timeout`` seconds is killed and started again with fresh seeds: its envs' current
episodes are reported as truncated (final observation = the last one the learner saw, reward 0)
and enter the episode statistics with the return and length they had reached, the event is
logged through ``log`` and counted in ``restarts`` (a restarted worker that fails to start counts
as one more), and training goes on until ``max_restarts``.

Same interface as ``InProcessVectorEnv``: ``obs``, ``step(actions)``, ``stats``, ``close()``.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np

from chimera.envs.vector import EpisodeStats, episode_success


def _leaves(space: gym.Space) -> dict[str | None, gym.spaces.Box]:
    if isinstance(space, gym.spaces.Dict):
        return dict(space.spaces.items())
    return {None: space}


class _Shared:
    """Named numpy views over shared memory: obs / final per observation key, and step results."""

    def __init__(self, ctx, space: gym.Space, n: int):
        self.spec = {k: (s.shape, np.dtype(s.dtype)) for k, s in _leaves(space).items()}
        self.spec.update({"_rew": ((), np.dtype(np.float64)), "_term": ((), np.dtype(bool)),
                          "_trunc": ((), np.dtype(bool)), "_final": ((), np.dtype(bool))})
        self.n = n
        self.raw = {}
        for k, (shape, dtype) in self.spec.items():
            size = n * int(np.prod(shape)) * dtype.itemsize
            self.raw[("obs", k)] = ctx.RawArray("b", max(1, size))
            if not str(k).startswith("_"):
                self.raw[("fin", k)] = ctx.RawArray("b", max(1, size))
        self.views()

    def views(self) -> None:
        self.v = {key: np.frombuffer(buf, dtype=self.spec[key[1]][1], count=self.n * int(np.prod(self.spec[key[1]][0])))
                  .reshape(self.n, *self.spec[key[1]][0]) for key, buf in self.raw.items()}

    def __getstate__(self):
        return {"spec": self.spec, "n": self.n, "raw": self.raw}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.views()

    def write(self, kind: str, i: int, obs: Any) -> None:
        if None in self.spec:
            self.v[(kind, None)][i] = obs
        else:
            for k in self.spec:
                if not str(k).startswith("_"):
                    self.v[(kind, k)][i] = obs[k]

    def read(self, kind: str, idx: Any) -> Any:
        if None in self.spec:
            return self.v[(kind, None)][idx].copy()
        return {k: self.v[(kind, k)][idx].copy() for k in self.spec if not str(k).startswith("_")}


def _worker(conn: Connection, make_blob: bytes, shared: _Shared, indices: list[int], seeds: list[int]) -> None:
    try:
        make_env = cloudpickle.loads(make_blob)
        envs = [make_env() for _ in indices]
        rngs = [np.random.default_rng(s) for s in seeds]
        for j, (i, env) in enumerate(zip(indices, envs)):
            shared.write("obs", i, env.reset(seed=seeds[j])[0])
        conn.send(("ready", None))
        while True:
            cmd, actions = conn.recv()
            if cmd == "close":
                break
            successes = {}  # env index -> success of the episode that ended at this step
            for j, (i, env) in enumerate(zip(indices, envs)):
                o, r, te, tr, info = env.step(actions[j])
                shared.v[("obs", "_rew")][i] = r
                shared.v[("obs", "_term")][i] = te
                shared.v[("obs", "_trunc")][i] = tr
                shared.v[("obs", "_final")][i] = te or tr
                if te or tr:
                    successes[i] = episode_success(info, te, r)
                    shared.write("fin", i, o)
                    o, _ = env.reset(seed=int(rngs[j].integers(0, 2**31 - 1)))
                shared.write("obs", i, o)
            conn.send(("ok", successes))
        for env in envs:
            env.close()
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass
    except Exception:  # reported to the learner, which restarts this worker
        try:
            conn.send(("error", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass


class RestartingWorkers:
    """What the worker backends share (this one and chimera.envs.ray_vector): episode bookkeeping on the
    learner's side, the cut of a failed worker's episodes, and the restart policy. A backend provides
    ``_start(w, seeds)``, ``_stop(w)`` and ``_receive(w) -> (kind, payload)`` ("ready" once started)."""

    n: int
    obs: Any
    log: Callable[[str], None]
    max_restarts: int
    _slices: list[list[int]]

    def _init_bookkeeping(self, n: int, seed: int) -> None:
        self._rng = np.random.default_rng(seed)  # fresh seeds for restarted workers
        self.stats = EpisodeStats()
        self.restarts = 0
        self._ret = np.zeros(n)  # the running episode's return and length per env
        self._len = np.zeros(n, dtype=np.int64)
        self._scored = False  # whether this env reports success (then a cut episode counts as a failure)

    def _settle(self, rew: np.ndarray, term: np.ndarray, trunc: np.ndarray, ended: np.ndarray,
                final_of: Callable[[int], Any], successes: dict[int, float],
                failed: dict[int, tuple[str, str]]) -> list[Any]:
        """Cut the envs of failed workers (their step did not happen: reward 0, truncated, final observation
        the last one the learner saw), count returns, end episodes, restart the failed workers; -> finals.
        ``rew``, ``term``, ``trunc`` are changed in place."""
        cut = np.zeros(self.n, dtype=bool)
        for w in failed:
            cut[self._slices[w]] = True
        rew[cut], term[cut], trunc[cut], ended[cut] = 0.0, False, True, False
        self._ret[~cut] += rew[~cut]
        self._len[~cut] += 1
        finals: list[Any] = [None] * self.n
        for i in range(self.n):
            if ended[i]:
                finals[i] = final_of(i)
                self._end_episode(i, successes[i])
            elif cut[i]:  # the episode is cut where the learner last saw it
                finals[i] = {k: v[i].copy() for k, v in self.obs.items()} if isinstance(self.obs, dict) \
                    else self.obs[i].copy()
                self._end_episode(i, 0.0 if self._scored else float("nan"))
        for w in sorted(failed):
            self._restart(w, *failed[w])
        return finals

    def _restart(self, w: int, kind: str, detail: str) -> None:
        """Start worker ``w`` again with fresh seeds; each attempt counts, up to ``max_restarts`` in all."""
        envs = self._slices[w]
        while True:
            self.restarts += 1
            self.log(f"vector env: worker {w} (envs {envs[0]}-{envs[-1]}) {kind}: "
                     f"{detail.strip().splitlines()[-1]}; restarting it, its episodes end as truncated "
                     f"(restart {self.restarts})")
            if self.restarts > self.max_restarts:
                self.close()
                raise RuntimeError(f"vector env workers restarted {self.restarts} times (max_restarts="
                                   f"{self.max_restarts}); the environment keeps failing: "
                                   f"{detail.strip().splitlines()[-1]}\n{detail}")
            self._stop(w)
            self._start(w, [int(self._rng.integers(0, 2**31 - 1)) for _ in envs])
            kind, detail = self._receive(w)
            if kind == "ready":
                self._started(w, detail)
                return
            kind = f"failed to start after a restart ({kind})"

    def _started(self, w: int, payload: Any) -> None:
        """Worker ``w`` is up again (``payload``: what its "ready" carried)."""

    def _end_episode(self, i: int, success: float) -> None:
        self.stats.returns.append(float(self._ret[i]))
        self.stats.lengths.append(int(self._len[i]))
        self.stats.successes.append(success)
        self._scored = self._scored or not np.isnan(success)
        self._ret[i], self._len[i] = 0.0, 0


class SubprocVectorEnv(RestartingWorkers):
    """n envs over ``workers`` processes; crashed or hung workers are restarted."""

    def __init__(self, make_env: Callable[[], gym.Env], n: int, seed: int, workers: int = 0, timeout: float = 60.0,
                 max_restarts: int = 100, log: Callable[[str], None] = print, start_method: str | None = None):
        workers = min(n, workers or mp.cpu_count())
        probe = make_env()  # read the spaces in the parent, as gymnasium's AsyncVectorEnv does
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        probe.close()
        self.n, self.timeout, self.max_restarts, self.log = n, timeout, max_restarts, log
        self._ctx = mp.get_context(start_method or ("fork" if "fork" in mp.get_all_start_methods() else "spawn"))
        self._blob = cloudpickle.dumps(make_env)
        self._shared = _Shared(self._ctx, self.observation_space, n)
        self._slices = [[int(i) for i in s] for s in np.array_split(np.arange(n), workers)]
        self._init_bookkeeping(n, seed)
        self._procs: list[Any] = [None] * workers
        self._conns: list[Any] = [None] * workers
        for w in range(workers):
            self._start(w, [seed + int(i) for i in self._slices[w]])
        for w in range(workers):
            self._await_ready(w)
        self.obs = self._shared.read("obs", slice(None))

    # ---- worker lifecycle -----------------------------------------------------------------------------
    def _start(self, w: int, seeds: list[int]) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker, args=(child, self._blob, self._shared, self._slices[w], seeds),
                                 daemon=True)
        proc.start()
        child.close()
        self._procs[w], self._conns[w] = proc, parent

    def _receive(self, w: int) -> tuple[str, Any]:
        conn = self._conns[w]
        try:
            if not conn.poll(self.timeout):
                return "hang", f"no answer within {self.timeout:g} s"
            return conn.recv()
        except (EOFError, ConnectionResetError, BrokenPipeError):
            self._procs[w].join(1.0)
            return "crash", f"process exited (exit code {self._procs[w].exitcode})"

    def _await_ready(self, w: int) -> None:
        kind, detail = self._receive(w)
        if kind != "ready":
            self._stop(w)
            raise RuntimeError(f"vector env worker {w} failed to start its environments ({kind}): "
                               f"{detail.strip().splitlines()[-1]}\n{detail}")

    def _stop(self, w: int) -> None:
        proc = self._procs[w]
        if proc is not None and proc.is_alive():
            proc.kill()
        if proc is not None:
            proc.join(5)
        self._conns[w].close()

    # ---- stepping -----------------------------------------------------------------------------------------
    def step(self, actions: np.ndarray):
        """-> next obs (reset where an episode ended), reward, terminated, truncated, final_obs (per env or None)."""
        actions = np.asarray(actions)
        sv = self._shared.v
        sv[("obs", "_final")][:] = False
        failed: dict[int, tuple[str, str]] = {}
        for w, idx in enumerate(self._slices):
            try:
                self._conns[w].send(("step", actions[idx]))
            except (BrokenPipeError, ConnectionResetError, OSError):  # it died since the last step
                self._procs[w].join(1.0)
                failed[w] = ("crash", f"process exited between steps (exit code {self._procs[w].exitcode})")
        successes: dict[int, float] = {}
        for w in range(len(self._slices)):
            if w in failed:
                continue
            kind, payload = self._receive(w)
            if kind == "ok":
                successes.update(payload)
            else:
                failed[w] = (kind, payload)
        rew, term = sv[("obs", "_rew")].astype(np.float64), sv[("obs", "_term")].copy()
        trunc, ended = sv[("obs", "_trunc")].copy(), sv[("obs", "_final")].copy()
        finals = self._settle(rew, term, trunc, ended, lambda i: self._shared.read("fin", i), successes, failed)
        self.obs = self._shared.read("obs", slice(None))
        return self.obs, rew, term, trunc, finals

    def close(self) -> None:
        for w, conn in enumerate(self._conns):
            if conn is None or conn.closed:
                continue
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
            self._procs[w].join(2)
            self._stop(w)
