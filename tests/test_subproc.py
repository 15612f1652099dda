"""The subprocess vector env: same episodes as the in-process one, and crashed / hung workers restarted."""

import multiprocessing
import os
import signal
import time

import gymnasium as gym
import numpy as np
import pytest

from chimera.envs import InProcessVectorEnv, SubprocVectorEnv, make


def _rollout(venv, steps, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        a = rng.integers(venv.action_space.n, size=venv.n)
        obs, rew, term, trunc, finals = venv.step(a)
        out.append((obs, rew.copy(), term.copy(), trunc.copy(), [f is not None for f in finals], finals))
    return out


def _same(a, b):
    if isinstance(a, dict):
        return all(np.array_equal(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


@pytest.mark.parametrize("env_id,kw,steps", [("gym/CartPole", {}, 120),
                                             ("minihack/Room-5x5", {"max_episode_steps": 20}, 45)])
def test_subprocess_backend_steps_the_same_episodes(env_id, kw, steps):
    def make_env():
        return make(env_id, **kw)

    a = InProcessVectorEnv(make_env, 4, seed=7)
    b = SubprocVectorEnv(make_env, 4, seed=7, workers=2)
    try:
        assert _same(a.obs, b.obs)
        ra, rb = _rollout(a, steps), _rollout(b, steps)
        for x, y in zip(ra, rb):
            assert _same(x[0], y[0])
            assert all(np.array_equal(u, v) for u, v in zip(x[1:4], y[1:4])) and x[4] == y[4]
            # the final observations too (NLE reuses its arrays at reset: a kept reference would show the reset)
            assert all(f is None or _same(f, g) for f, g in zip(x[5], y[5]))
        assert a.stats.returns == b.stats.returns and a.stats.lengths == b.stats.lengths
        assert len(a.stats.returns) > 4  # several episodes ended and were reseeded
    finally:
        a.close()
        b.close()


class FailingEnv(gym.Env):
    """Counts steps in obs; at step 3 of env 1 it crashes the process, hangs or raises (once: a marker file)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, mode, marker):
        self.mode, self.marker, self.t = mode, marker, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0, seed % 1000], np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t == 3 and not os.path.exists(self.marker) and os.environ.get("FAIL_ME"):
            open(self.marker, "w").close()
            if self.mode == "crash":
                os._exit(3)
            if self.mode == "hang":
                time.sleep(3600)
            raise RuntimeError("env exploded")
        return np.array([self.t, 0], np.float32), 1.0, False, self.t >= 50, {}


@pytest.mark.parametrize("mode", ["crash", "hang", "raise"])
def test_failed_worker_is_restarted_and_its_episodes_truncated(tmp_path, mode, monkeypatch):
    marker = str(tmp_path / "failed")
    logs = []
    venv = SubprocVectorEnv(lambda: FailingEnv(mode, marker), 4, seed=0, workers=2, timeout=2.0, log=logs.append)
    try:
        monkeypatch.setenv("FAIL_ME", "1")  # workers forked from here on fail; the running ones read their env
        venv._restart(1, "test", "arm the failure")  # restart worker 1 so it sees FAIL_ME
        logs.clear()
        venv.restarts = 0
        before = venv.obs.copy()
        for _ in range(2):
            venv.step(np.zeros(4, dtype=np.int64))
        obs_before_fail = venv.obs.copy()
        obs, rew, term, trunc, finals = venv.step(np.zeros(4, dtype=np.int64))  # worker 1's envs fail at t=3
        assert venv.restarts == 1 and len(logs) == 1 and "worker 1 (envs 2-3)" in logs[0]
        assert list(trunc) == [False, False, True, True] and not term.any()
        assert list(rew) == [1.0, 1.0, 0.0, 0.0]
        assert finals[0] is None and np.array_equal(finals[2], obs_before_fail[2])
        assert list(obs[:2, 0]) == [3, 3] and list(obs[2:, 0]) == [0, 0]  # worker 1 restarted: fresh episodes
        assert not np.array_equal(before[2:], obs[2:])  # with fresh seeds
        obs, rew, term, trunc, _ = venv.step(np.zeros(4, dtype=np.int64))  # training goes on
        assert list(obs[:, 0]) == [4, 4, 1, 1] and not trunc.any() and venv.restarts == 1
        # the two cut episodes enter the statistics with the return and length they had reached
        assert venv.stats.returns == [2.0, 2.0] and venv.stats.lengths == [2, 2]
    finally:
        venv.close()


def test_worker_killed_between_steps_is_restarted():
    logs = []
    venv = SubprocVectorEnv(lambda: gym.make("CartPole-v1"), 4, seed=0, workers=2, log=logs.append)
    try:
        for _ in range(3):
            venv.step(np.zeros(4, dtype=np.int64))
        proc = venv._procs[0]
        os.kill(proc.pid, signal.SIGKILL)  # the worker is idle, waiting for the next step's actions
        proc.join(5)
        _, rew, term, trunc, finals = venv.step(np.zeros(4, dtype=np.int64))
        assert venv.restarts == 1 and "worker 0 (envs 0-1) crash" in logs[0] and not term.any()
        assert list(trunc) == [True, True, False, False] and list(rew) == [0.0, 0.0, 1.0, 1.0]
        assert venv.stats.returns == [3.0, 3.0] and venv.stats.lengths == [3, 3]  # the cut episodes
        assert finals[0] is not None and finals[2] is None
        _, rew, *_ = venv.step(np.zeros(4, dtype=np.int64))
        assert list(rew) == [1.0] * 4 and venv.restarts == 1
    finally:
        venv.close()


class BrokenAfterRestartEnv(gym.Env):
    """Builds in the parent and in the first workers; a worker forked after FAIL_BUILD is set cannot build it."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        if os.environ.get("FAIL_BUILD") and multiprocessing.parent_process() is not None:
            raise RuntimeError("level file vanished")

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {}


def test_restart_that_fails_to_start_counts_and_max_restarts_ends_it(monkeypatch):
    logs = []
    venv = SubprocVectorEnv(BrokenAfterRestartEnv, 2, seed=0, workers=1, max_restarts=3, log=logs.append)
    monkeypatch.setenv("FAIL_BUILD", "1")
    os.kill(venv._procs[0].pid, signal.SIGKILL)
    venv._procs[0].join(5)
    with pytest.raises(RuntimeError, match=r"restarted 4 times \(max_restarts=3\).*level file vanished"):
        venv.step(np.zeros(2, dtype=np.int64))
    assert venv.restarts == 4 and len(logs) == 4
    assert all("failed to start after a restart" in line for line in logs[1:])


def test_worker_that_cannot_build_its_env_fails_clearly():
    parent = os.getpid()

    def make_env():  # builds in the parent (the space probe), fails in the worker
        if os.getpid() != parent:
            raise ValueError("no such level")
        return gym.make("CartPole-v1")

    with pytest.raises(RuntimeError, match=r"worker 0 failed to start its environments.*no such level"):
        SubprocVectorEnv(make_env, 2, seed=0, workers=1)


def test_train_rl_subprocess_backend_logs_the_same_metrics(tmp_path):
    import dataclasses

    from chimera.rl.agent import AgentConfig
    from chimera.rl.train import PPOConfig, RLRunConfig, TrainRLConfig, train_rl
    from chimera.runs import read_metrics

    base = TrainRLConfig(tasks=("gym/CartPole",), num_envs=4, total_steps=4 * 32 * 2,
                         ppo=PPOConfig(num_steps=32, minibatches=2), agent=AgentConfig(core="mlp", hidden=16),
                         run=RLRunConfig(out_dir=str(tmp_path / "a")))
    a = read_metrics(train_rl(base, log=lambda *_: None).metrics_path)
    sub = dataclasses.replace(base, vector="subprocess", workers=2, run=RLRunConfig(out_dir=str(tmp_path / "b")))
    b = read_metrics(train_rl(sub, log=lambda *_: None).metrics_path)
    drop = ("time", "charts/SPS")
    assert all(r.pop("charts/worker_restarts") == 0.0 for r in b)  # only backends that can restart log it
    assert not any("charts/worker_restarts" in r for r in a)
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b]
