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
    assert env.observation_space.contains(obs), f"reset: {_outside(env.observation_space, obs)}"
    for _ in range(3):
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs), f"step: {_outside(env.observation_space, obs)}"
        if term or trunc:
            env.reset()
    env.close()


def _outside(space, obs) -> str:
    if isinstance(obs, dict):
        return ", ".join(f"{k} {obs[k].dtype}{obs[k].shape} not in {space[k]}" for k in obs
                         if k not in space.spaces or not space[k].contains(obs[k])) or "extra or missing keys"
    return f"{getattr(obs, 'dtype', type(obs))}{getattr(obs, 'shape', '')} not in {space}"


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


def test_ppo_runs_every_epoch_and_logs_cleanrl_metrics(tmp_path):
    from chimera.rl.train import train_rl
    from chimera.runs import read_metrics

    rows = read_metrics(train_rl(_tiny_rl_cfg(tmp_path, "ppo", epochs=3), log=lambda *_: None).metrics_path)
    assert [r["losses/epochs_used"] for r in rows] == [3.0, 3.0]
    assert [r["losses/grad_steps"] for r in rows] == [6.0, 6.0]
    for key in ("losses/approx_kl", "losses/clipfrac", "losses/explained_variance", "charts/SPS",
                "losses/ratio_dev_max", "charts/episodic_return/gym/CartPole"):
        assert key in rows[-1]


def _update_inputs(tasks=("a",), core="mlp", pattern="M-", T=16, n=8):
    """An agent and one synthetic rollout per task (random observations, actions drawn from the agent)."""
    import gymnasium as gym

    from chimera.rl.train import Rollout

    torch.manual_seed(0)
    spaces = {t: (gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(3)) for t in tasks}
    agent = Agent(spaces, AgentConfig(core=core, hidden=16, pattern=pattern, experts=4))
    rollouts, state0, adv, ret = {}, {}, {}, {}
    for t in tasks:
        ro = Rollout(T, n, torch.zeros(n, 4))
        ro.obs = torch.randn(T, n, 4)
        ro.starts[0] = True
        state0[t] = agent.initial_state(n)
        with torch.no_grad():
            dist, values = agent.evaluate(t, ro.obs, agent.clone_state(state0[t]), ro.starts)
            a = dist.sample()
        ro.actions, ro.logp, ro.values = a.view(T, n), dist.log_prob(a).view(T, n), values
        adv[t], ret[t] = torch.randn(T, n), torch.randn(T, n)
        rollouts[t] = ro
    return agent, rollouts, state0, adv, ret


def _run_update(p, monkeypatch, **kw):
    """update() on fresh synthetic inputs; -> (metrics, [(mean |r - 1|, approx KL) of every minibatch forward])."""
    import chimera.rl.train as rl_train

    seen = []
    real = rl_train.policy_loss

    def recording(ratio, adv, algo, clip):
        with torch.no_grad():
            seen.append(((ratio - 1).abs().mean().item(), ((ratio - 1) - ratio.log()).mean().item()))
        return real(ratio, adv, algo, clip)

    monkeypatch.setattr(rl_train, "policy_loss", recording)
    agent, rollouts, state0, adv, ret = _update_inputs(**kw)
    opt = torch.optim.Adam(agent.parameters(), lr=p.lr)
    torch.manual_seed(1)  # the minibatch permutations
    metrics = rl_train.update(agent, opt, rollouts, state0, adv, ret, p)
    monkeypatch.setattr(rl_train, "policy_loss", real)
    return metrics, seen


def _stop_point(values, minibatches):
    """A step k inside an epoch whose measured value exceeds all earlier ones, and a threshold between."""
    ks = [i for i in range(2, len(values)) if i % minibatches and values[i] > 1.05 * max(values[:i])]
    assert ks, f"the drift never rises within an epoch: {values}"
    k = ks[len(ks) // 2]
    return k, (max(values[:k]) + values[k]) / 2


@pytest.mark.parametrize("algo", ["espo", "ppo"])
def test_epochs_stop_at_the_first_step_whose_drift_exceeds_the_threshold(algo, monkeypatch):
    from chimera.rl.train import PPOConfig

    def config(threshold):
        if algo == "espo":
            return PPOConfig(algo="espo", espo_delta=threshold, espo_max_epochs=6, minibatches=4, lr=3e-3)
        return PPOConfig(algo="ppo", target_kl=threshold, epochs=6, minibatches=4, lr=3e-3)

    which = 0 if algo == "espo" else 1  # ESPO watches mean |ratio - 1|, PPO the approximate KL
    capped, seen = _run_update(config(1e9), monkeypatch)
    assert capped["losses/grad_steps"] == 24 and capped["losses/epochs_used"] == 6 and len(seen) == 24
    drift = [s[which] for s in seen]
    k, threshold = _stop_point(drift, 4)
    stopped, seen_k = _run_update(config(threshold), monkeypatch)
    # k gradient steps taken; the (k+1)-th forward measured the drift they caused and stopped the epochs
    assert stopped["losses/grad_steps"] == k and len(seen_k) == k + 1, (k, drift)
    assert [s[which] for s in seen_k] == drift[:k + 1]
    assert stopped["losses/ratio_dev_last"] == pytest.approx(seen_k[-1][0], rel=1e-6)
    assert stopped["losses/epochs_used"] == k / 4


def _expert_imbalance(agent, rollouts, state0):
    """max / mean tokens per expert of the core's MoE layer over one training forward of the rollout."""
    moe = next(m for m in agent.core.modules() if hasattr(m, "update_bias"))
    moe.expert_load.zero_()
    agent.train()
    with torch.no_grad():
        for t, ro in rollouts.items():
            agent.evaluate(t, ro.obs, agent.clone_state(state0[t]), ro.starts)
    load = moe.expert_load.clone()
    moe.expert_load.zero_()
    return float(load.max() / load.mean())


def test_rl_update_balances_the_moe_core_load():
    from chimera.rl.train import PPOConfig, update

    agent, rollouts, state0, adv, ret = _update_inputs(core="hybrid", pattern="E")
    moe = next(m for m in agent.core.modules() if hasattr(m, "update_bias"))
    moe.gate.e_score_correction_bias.copy_(torch.tensor([0.1, 0.1, -0.1, -0.1]))  # experts 0, 1 take everything
    before = _expert_imbalance(agent, rollouts, state0)
    opt = torch.optim.SGD(agent.parameters(), lr=0.0)  # only the balancing moves anything
    update(agent, opt, rollouts, state0, adv, ret, PPOConfig(epochs=50, minibatches=4))
    after = _expert_imbalance(agent, rollouts, state0)
    assert before > 1.9 and after < 1.3, (before, after)


def test_imtl_g_projections_are_equal_for_three_tasks():
    from chimera.rl.multitask import aggregate

    G = torch.tensor([[1.0, 0.5, 0.0, 2.0], [-1.0, 0.5, 1.0, -3.0], [0.3, -2.0, 0.7, 0.4]])
    theta = torch.nn.Parameter(torch.zeros(4))
    info = aggregate([g @ theta for g in G], [theta], "imtl_g")
    w = torch.tensor([info[f"weight/{i}"] for i in range(3)])
    g = theta.grad
    torch.testing.assert_close(g, w @ G)
    proj = G / G.norm(dim=1, keepdim=True) @ g  # the aggregate's projection on each unit task gradient
    torch.testing.assert_close(proj, proj[:1].expand(3), rtol=1e-5, atol=1e-6)
    assert proj[0] > 0 and abs(float(w.sum()) - 1) < 1e-6


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
    out = capsys.readouterr().out
    assert "gym/CartPole" in out
    assert out.splitlines()[1].split()[-1] == "-"  # CartPole has no success: '-', as in training's table
    assert not any("worker_restarts" in r for r in read_metrics(a.metrics_path))  # in-process: nothing restarts


def test_eval_rl_render_names_the_environment_and_record_films_cartpole(tmp_path, capsys):
    from chimera.cli import main
    from chimera.rl.train import train_rl

    run = train_rl(_tiny_rl_cfg(tmp_path, "ppo"), log=lambda *_: None)
    assert main(["eval-rl", str(run.path), "--episodes", "1", "--render", "--record", str(tmp_path / "v")]) == 0
    out = capsys.readouterr().out
    assert "== gym/CartPole  episode 1  step 1  reward +1.00" in out and "  obs [" in out
    assert "(episode over)" in out
    gif = tmp_path / "v" / "gym_CartPole.gif"
    assert f"recorded gym/CartPole: {gif}" in out and gif.stat().st_size > 1000


def test_multi_task_update_aggregates_the_core_gradient_and_logs_its_cosine():
    from chimera.rl.multitask import task_gradients
    from chimera.rl.ppo import policy_loss, value_loss
    from chimera.rl.train import PPOConfig, update

    p = PPOConfig(epochs=1, minibatches=1, lr=1e-2, norm_adv=False, max_grad_norm=1e9)
    after = {}
    for method in ("sum", "pcgrad"):
        agent, rollouts, state0, adv, ret = _update_inputs(tasks=("a", "b"))
        if method == "pcgrad":  # the task gradients on the core, by hand, before the update
            losses = []
            for t, ro in rollouts.items():
                dist, values = agent.evaluate(t, ro.obs, agent.clone_state(state0[t]), ro.starts)
                ratio = (dist.log_prob(ro.actions.flatten()) - ro.logp.flatten()).exp()
                vl = value_loss(values.flatten(), ro.values.flatten(), ret[t].flatten(), p.clip_coef)
                losses.append(policy_loss(ratio, adv[t].flatten(), "ppo", p.clip_coef) + p.vf_coef * vl
                              - p.ent_coef * dist.entropy().mean())
            G = task_gradients(losses, list(agent.core.parameters()))
            cosine = float(torch.nn.functional.cosine_similarity(G[0], G[1], dim=0))
        opt = torch.optim.SGD(agent.parameters(), lr=p.lr)
        metrics = update(agent, opt, rollouts, state0, adv, ret, p, method)
        after[method] = {k: v.detach().clone() for k, v in agent.state_dict().items()}
    assert metrics["multitask/cosine"] == pytest.approx(cosine, abs=1e-5)
    core = [k for k in after["sum"] if k.startswith("core.")]
    heads = [k for k in after["sum"] if k.startswith("heads.")]
    # one SGD step: the heads get the summed loss's gradient either way, the core the aggregated one
    assert all(torch.allclose(after["sum"][k], after["pcgrad"][k], atol=1e-7) for k in heads)
    if cosine < 0:  # conflicting gradients are projected, so the core moves differently
        assert any(not torch.allclose(after["sum"][k], after["pcgrad"][k]) for k in core)


@pytest.mark.parametrize("method", ["pcgrad", "cagrad"])
def test_multi_task_run_with_an_aggregator(tmp_path, method):
    import dataclasses

    from chimera.rl.train import train_rl
    from chimera.runs import read_metrics

    cfg = dataclasses.replace(_tiny_rl_cfg(tmp_path, "ppo"), tasks=("gym/CartPole", "gym/Acrobot"),
                              total_steps=2 * 4 * 32, aggregator=method)
    rows = read_metrics(train_rl(cfg, log=lambda *_: None).metrics_path)
    for task in cfg.tasks:
        assert f"charts/episodic_return/{task}" in rows[-1] or task == "gym/Acrobot"  # Acrobot may not end yet
    key = "multitask/cosine" if method == "pcgrad" else "multitask/weight/gym/CartPole"
    assert all(key in r for r in rows)
    if method == "cagrad":  # the weights move with the gradients: not the uniform start
        assert rows[-1][key] != pytest.approx(0.5, abs=1e-3)


def test_ppo_weight_decay_shrinks_the_weights(tmp_path):
    import dataclasses

    from chimera.rl.train import load_agent, train_rl

    norms = {}
    for wd in (0.0, 0.5):
        cfg = _tiny_rl_cfg(tmp_path / str(wd), "ppo")
        cfg = dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, weight_decay=wd, lr=1e-2))
        agent, _ = load_agent(train_rl(cfg, log=lambda *_: None).path)
        norms[wd] = float(sum(p.norm() ** 2 for p in agent.parameters()))
    assert norms[0.5] < 0.98 * norms[0.0], norms
