"""The Ray vector backend: the same episodes as the in-process one, and dead / failing / hung actors
restarted with their episodes truncated while the run goes on."""

import os
import sys
import time

import gymnasium as gym
import numpy as np
import pytest

from chimera.envs import InProcessVectorEnv, make

ray = pytest.importorskip("ray")

from chimera.envs.ray_vector import RayVectorEnv, require_ray  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors cannot import this test module


pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


def _rollout(venv, steps, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        obs, rew, term, trunc, finals = venv.step(rng.integers(venv.action_space.n, size=venv.n))
        out.append((obs, rew.copy(), term.copy(), trunc.copy(), finals))
    return out


def _same(a, b):
    if a is None or b is None:
        return a is b
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


@pytest.mark.parametrize("env_id,kw,steps", [("gym/CartPole", {}, 120),
                                             ("minihack/Room-5x5", {"max_episode_steps": 20}, 45)])
def test_ray_backend_steps_the_same_episodes_as_in_process(env_id, kw, steps):
    def make_env():
        return make(env_id, **kw)

    a = InProcessVectorEnv(make_env, 4, seed=7)
    b = RayVectorEnv(make_env, 4, seed=7, workers=2)
    try:
        assert _same(a.obs, b.obs)
        for x, y in zip(_rollout(a, steps), _rollout(b, steps)):
            assert _same(x[0], y[0])
            assert all(np.array_equal(u, v) for u, v in zip(x[1:4], y[1:4]))
            assert all(_same(u, v) for u, v in zip(x[4], y[4]))  # final observations
        assert a.stats.returns == b.stats.returns and a.stats.lengths == b.stats.lengths
        assert a.stats.successes == b.stats.successes or np.isnan(a.stats.successes).all()
        assert len(a.stats.returns) > 4 and b.restarts == 0  # several episodes ended and were reseeded
    finally:
        a.close()
        b.close()


class FailOnce(gym.Env):
    """Counts steps in obs; env 0 of a runner crashes its process, hangs or raises at step 3 (once: a marker)."""

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
        if self.t == 3 and action == 1 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            if self.mode == "crash":
                os._exit(3)
            if self.mode == "hang":
                time.sleep(3600)
            raise RuntimeError("env exploded")
        return np.array([self.t, 0], np.float32), 1.0, False, self.t >= 50, {}


@pytest.mark.parametrize("mode", ["crash", "hang", "raise"])
def test_failed_actor_is_restarted_and_its_episodes_truncated(tmp_path, mode):
    marker = str(tmp_path / "failed")
    logs = []
    venv = RayVectorEnv(lambda: FailOnce(mode, marker), 4, seed=0, workers=2, timeout=3.0, log=logs.append)
    try:
        before = venv.obs.copy()
        for _ in range(2):
            venv.step(np.zeros(4, dtype=np.int64))
        seen = venv.obs.copy()
        obs, rew, term, trunc, finals = venv.step(np.array([0, 0, 1, 0]))  # actor 1's env 2 fails at t=3
        assert venv.restarts == 1 and len(logs) == 1 and "worker 1 (envs 2-3)" in logs[0], logs
        assert {"crash": "crash", "hang": "hang", "raise": "error"}[mode] in logs[0]
        assert list(trunc) == [False, False, True, True] and not term.any()
        assert list(rew) == [1.0, 1.0, 0.0, 0.0]
        assert finals[0] is None and np.array_equal(finals[2], seen[2])
        assert list(obs[:2, 0]) == [3, 3] and list(obs[2:, 0]) == [0, 0]  # actor 1 restarted: fresh episodes
        assert not np.array_equal(before[2:], obs[2:])  # with fresh seeds
        obs, rew, term, trunc, _ = venv.step(np.zeros(4, dtype=np.int64))  # stepping goes on
        assert list(obs[:, 0]) == [4, 4, 1, 1] and not trunc.any() and venv.restarts == 1
        # the two cut episodes enter the statistics with the return and length they had reached
        assert venv.stats.returns == [2.0, 2.0] and venv.stats.lengths == [2, 2]
    finally:
        venv.close()


def _tiny_rl(tmp_path, vector):
    from chimera.rl.agent import AgentConfig
    from chimera.rl.train import PPOConfig, RLRunConfig, TrainRLConfig

    return TrainRLConfig(tasks=("gym/CartPole",), num_envs=4, total_steps=4 * 32 * 3, vector=vector, workers=2,
                         ppo=PPOConfig(num_steps=32, minibatches=2),
                         agent=AgentConfig(core="hybrid", hidden=16, pattern="M-"),
                         run=RLRunConfig(out_dir=str(tmp_path), ckpt_every=1, plots=False))


def test_train_rl_with_ray_logs_what_in_process_logs_and_survives_a_killed_actor(tmp_path, monkeypatch):
    from chimera.rl.train import train_rl
    from chimera.runs import read_metrics

    def rows(run):
        return [{k: v for k, v in r.items() if k not in ("time", "charts/SPS")} for r in read_metrics(run.metrics_path)]

    ref = rows(train_rl(_tiny_rl(tmp_path / "a", "inprocess"), log=lambda *_: None))
    with_ray = rows(train_rl(_tiny_rl(tmp_path / "b", "ray"), log=lambda *_: None))
    assert all(r.pop("charts/worker_restarts") == 0.0 for r in with_ray)  # only backends that can restart log it
    assert with_ray == ref

    step, calls, logs = RayVectorEnv.step, [], []

    def kill_on_the_40th(self, actions):  # the second iteration's rollout
        calls.append(1)
        if len(calls) == 40:
            ray.kill(self._actors[0], no_restart=True)
        return step(self, actions)

    monkeypatch.setattr(RayVectorEnv, "step", kill_on_the_40th)
    run = train_rl(_tiny_rl(tmp_path / "c", "ray"), log=logs.append)
    got = read_metrics(run.metrics_path)
    assert len(got) == len(ref) and got[-1]["charts/worker_restarts"] == 1.0
    assert any("worker 0 (envs 0-1) crash" in line for line in logs)


def test_without_ray_the_command_says_to_install_the_extra(monkeypatch, capsys):
    from chimera.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ValueError, match=r"pip install -e '\.\[dist\]'"):
        require_ray()
    assert main(["train-rl", "--vector", "ray", "--total-steps", "64"]) == 2
    assert "pip install -e '.[dist]'" in capsys.readouterr().err
