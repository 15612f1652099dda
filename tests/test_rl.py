"""Environments (registry, NLE sharp edges) and the RL core (GAE, PPO / ESPO, recurrent agent)."""

import numpy as np
import pytest
import torch

from chimera.envs import list_ids, make
from chimera.rl.agent import Agent, AgentConfig
from chimera.rl.ppo import gae, policy_loss, value_loss

pytest.importorskip("nle")
pytest.importorskip("minihack")

GOOD_DES = """MAZE: "mylevel", ' '
FLAGS:premapped
GEOMETRY:center,center
MAP
|||||
|...|
|...|
|||||
ENDMAP
STAIR:(2,2),down
BRANCH:(1,1,1,1),(0,0,0,0)
"""


@pytest.mark.parametrize("env_id", [i for i in list_ids() if i != "minihack/Custom"])
def test_every_registered_environment_steps(env_id):
    env = make(env_id)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0) if env_id != "nethack/NetHackChallenge" else env.reset()
    assert env.observation_space.contains(obs) or isinstance(obs, dict)
    for _ in range(3):
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    env.close()


def test_unknown_id_names_close_matches():
    with pytest.raises(ValueError, match="unknown environment id 'minihack/Room-5x6'; did you mean minihack/Room-5x5"):
        make("minihack/Room-5x6")
    with pytest.raises(ValueError, match="must look like FAMILY/NAME"):
        make("CartPole-v1")


def test_time_limit_end_is_a_truncation_not_a_termination():
    env = make("minihack/Room-15x15", max_episode_steps=7)
    env.reset(seed=0)
    steps, term, trunc = 0, False, False
    while not (term or trunc) and steps < 20:
        _, _, term, trunc, _ = env.step(0)  # keep moving north: the goal is not reached
        steps += 1
    assert (steps, term, trunc) == (7, False, True)


def test_same_seed_same_episode_other_seed_other_episode():
    def episode(seed):
        env = make("minihack/Room-Random-5x5")
        obs, _ = env.reset(seed=seed)
        frames = [obs["glyphs"].copy()]
        for a in [1, 2, 3, 0, 1, 1, 2]:
            obs, *_ = env.step(a)
            frames.append(obs["glyphs"].copy())
        return np.stack(frames)

    assert np.array_equal(episode(3), episode(3))
    assert not np.array_equal(episode(3), episode(4))


def test_crop_equals_minihack_own_crop():
    ours = make("minihack/Room-Random-5x5", observation_keys=("glyphs", "blstats"), crop_size=9)
    ref = make("minihack/Room-Random-5x5", observation_keys=("glyphs", "blstats", "glyphs_crop"))
    a, _ = ours.reset(seed=5)
    b, _ = ref.reset(seed=5)
    for act in [1, 2, 3, 0, 5, 6]:
        assert np.array_equal(a["glyphs_crop"], b["glyphs_crop"])
        a, *_ = ours.step(act)
        b, *_ = ref.step(act)


def test_broken_des_file_raises_naming_the_line():
    broken = GOOD_DES.replace("STAIR:(2,2),down", "STAIR:(2,2),dwn")
    with pytest.raises(ValueError, match=r"des-file error at line 10.*syntax error.*STAIR:\(2,2\),dwn"):
        make("minihack/Custom", des_file=broken)
    env = make("minihack/Custom", des_file=GOOD_DES)
    obs, _ = env.reset(seed=0)
    assert obs["glyphs"].shape == (21, 79)


def test_level_generator_is_accepted():
    from minihack import LevelGenerator

    lvl = LevelGenerator(w=5, h=5)
    lvl.add_goal_pos((4, 4))
    env = make("minihack/Custom", des_file=lvl)
    obs, _ = env.reset(seed=0)
    assert obs["glyphs"].shape == (21, 79) and "blstats" in obs
    info = env.step(0)[-1]
    assert int(info["end_status"]) in (0, 2)  # running, or already at the goal; never aborted or dead


def test_gae_bootstraps_through_truncation_but_not_termination():
    # two envs, 3 steps; env 0 terminates at t=1, env 1 is truncated at t=1 (reward already bootstrapped)
    rewards = torch.tensor([[1.0, 1.0], [1.0, 1.0 + 0.5 * 2.0], [1.0, 1.0]])
    values = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    dones = torch.tensor([[False, False], [True, True], [False, False]])
    last = torch.tensor([2.0, 2.0])
    adv, ret = gae(rewards, values, dones, last, gamma=0.5, lam=1.0)
    # t=2: 1 + 0.5*2 - 0.5 = 1.5 ; t=1 env0: 1 - 0.5 = 0.5 ; env1: 2 - 0.5 = 1.5
    # t=0: delta = 1 + 0.5*0.5 - 0.5 = 0.75 ; adv = 0.75 + 0.5 * adv[1]
    torch.testing.assert_close(adv, torch.tensor([[1.0, 1.5], [0.5, 1.5], [1.5, 1.5]]))
    torch.testing.assert_close(ret, adv + values)


def test_ppo_and_espo_losses_equal_hand_computed_values():
    ratio = torch.tensor([0.5, 1.0, 1.5, 1.1])
    adv = torch.tensor([1.0, -1.0, 2.0, -2.0])
    # PPO: min(r A, clip(r) A) = [0.5, -1, 2.4, -2.2] -> mean -0.075 -> loss 0.075
    assert policy_loss(ratio, adv, "ppo", 0.2).item() == pytest.approx(-(0.5 - 1.0 + 2.4 - 2.2) / 4)
    # ESPO: unclipped r A = [0.5, -1, 3, -2.2]
    assert policy_loss(ratio, adv, "espo", 0.2).item() == pytest.approx(-(0.5 - 1.0 + 3.0 - 2.2) / 4)
    v, old, ret = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.9]), torch.tensor([2.0, 3.0])
    assert value_loss(v, old, ret, None).item() == pytest.approx(0.5 * (1.0 + 0.0) / 2)
    # clipped: v0 clips to 0.2 -> err 3.24 > 1; v1 clips to 3.0 -> 0
    assert value_loss(v, old, ret, 0.2).item() == pytest.approx(0.5 * (3.24 + 0.0) / 2)


@pytest.mark.parametrize("core", ["hybrid", "lstm"])
def test_training_scan_reproduces_rollout_steps_across_resets(core):
    import gymnasium as gym

    torch.manual_seed(0)
    space = gym.spaces.Box(-1, 1, (5,))
    agent = Agent({"t": (space, gym.spaces.Discrete(3))}, AgentConfig(core=core, hidden=32, pattern="ME-M")).eval()
    T, n = 23, 3
    obs = torch.randn(T, n, 5)
    starts = torch.rand(T, n) < 0.2
    starts[0] = True
    state0 = agent.initial_state(n)
    with torch.no_grad():
        state = agent.clone_state(state0)
        step_values = []
        for t in range(T):
            _, v, state = agent.step("t", obs[t], state, starts[t])
            step_values.append(v)
        _, seq_values = agent.evaluate("t", obs, agent.clone_state(state0), starts)
    torch.testing.assert_close(seq_values, torch.stack(step_values), atol=1e-5, rtol=1e-5)


def _tiny_rl_cfg(tmp_path, algo, **ppo):
    from chimera.rl.train import PPOConfig, RLRunConfig, TrainRLConfig

    return TrainRLConfig(tasks=("gym/CartPole",), num_envs=4, total_steps=4 * 32 * 2,
                         ppo=PPOConfig(algo=algo, num_steps=32, minibatches=2, **ppo),
                         agent=AgentConfig(core="hybrid", hidden=16, pattern="M-"),
                         run=RLRunConfig(out_dir=str(tmp_path), ckpt_every=1))


def test_espo_stops_epochs_once_drift_exceeds_delta_and_ppo_runs_them_all(tmp_path):
    from chimera.rl.train import train_rl
    from chimera.runs import read_metrics

    espo = train_rl(_tiny_rl_cfg(tmp_path / "e", "espo", espo_delta=1e-9, espo_max_epochs=8, lr=1e-2),
                    log=lambda *_: None)
    ppo = train_rl(_tiny_rl_cfg(tmp_path / "p", "ppo", epochs=3), log=lambda *_: None)
    e_rows, p_rows = read_metrics(espo.metrics_path), read_metrics(ppo.metrics_path)
    # epoch 1 moves the policy (mean |r - 1| > 0 from the second minibatch on), so epoch 1 is the last
    assert [r["losses/epochs_used"] for r in e_rows] == [1.0, 1.0]
    assert all(r["losses/ratio_dev_mean"] > 1e-9 for r in e_rows)
    assert [r["losses/epochs_used"] for r in p_rows] == [3.0, 3.0]
    for key in ("losses/approx_kl", "losses/clipfrac", "losses/explained_variance", "charts/SPS",
                "losses/ratio_dev_max", "charts/episodic_return/gym/CartPole"):
        assert key in p_rows[-1]


def test_seeded_runs_are_reproducible_and_eval_rl_plays(tmp_path, capsys):
    from chimera.cli import main
    from chimera.rl.train import train_rl
    from chimera.runs import read_metrics

    a = train_rl(_tiny_rl_cfg(tmp_path / "a", "ppo"), log=lambda *_: None)
    b = train_rl(_tiny_rl_cfg(tmp_path / "b", "ppo"), log=lambda *_: None)
    strip = [{k: v for k, v in r.items() if k not in ("time", "charts/SPS")} for r in read_metrics(a.metrics_path)]
    assert strip == [{k: v for k, v in r.items() if k not in ("time", "charts/SPS")}
                     for r in read_metrics(b.metrics_path)]
    assert main(["eval-rl", str(a.path), "--episodes", "2"]) == 0
    assert "gym/CartPole" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["pcgrad", "cagrad"])
def test_multi_task_run_with_an_aggregator(tmp_path, method):
    import dataclasses

    from chimera.rl.train import train_rl
    from chimera.runs import read_metrics

    cfg = dataclasses.replace(_tiny_rl_cfg(tmp_path, "ppo"), tasks=("gym/CartPole", "gym/Acrobot"),
                              total_steps=2 * 4 * 32, aggregator=method)
    rows = read_metrics(train_rl(cfg, log=lambda *_: None).metrics_path)
    assert -1 <= rows[-1]["multitask/cosine"] <= 1
    if method == "cagrad":
        assert rows[-1]["multitask/weight/gym/CartPole"] + rows[-1]["multitask/weight/gym/Acrobot"] == pytest.approx(1)
