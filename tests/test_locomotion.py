"""Centipede-N generation and graph, NerveNet policies (Snowflake freezing, equivariance, transfer),
observation / reward normalisation in checkpoints, and headless recording."""

import dataclasses

import numpy as np
import pytest
import torch

mujoco = pytest.importorskip("mujoco")

from chimera.envs import make  # noqa: E402
from chimera.rl.agent import Agent, AgentConfig  # noqa: E402
from chimera.rl.gnn import NerveNet  # noqa: E402
from chimera.rl.normalize import RewardScaler, RunningNorm  # noqa: E402


@pytest.mark.parametrize("n", [4, 6, 10, 20, 40])
def test_centipede_xml_is_valid_with_the_right_sizes(n):
    env = make(f"mujoco/Centipede-{n}")
    model = env.unwrapped.model
    assert model.nu == 3 * n - 2
    assert model.opt.integrator == mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    assert env.observation_space.shape == (6 * n + 7,) and env.action_space.shape == (3 * n - 2,)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (6 * n + 7,)
    for _ in range(5):
        obs, r, *_ = env.step(env.action_space.sample())
        assert np.isfinite(obs).all() and np.isfinite(r)


@pytest.mark.parametrize("bad", ["Centipede-5", "Centipede-2", "Centipede-42", "Centipede-x"])
def test_bad_centipede_sizes_are_named(bad):
    with pytest.raises(ValueError, match="legs"):
        make(f"mujoco/{bad}")


@pytest.mark.parametrize("n", [4, 10])
def test_morphology_graph_matches_the_bodies(n):
    env = make(f"mujoco/Centipede-{n}").unwrapped
    m, g = env.model, env.morphology
    assert len(g.node_names) == m.nbody - 1
    for p, c, etype in g.edges:
        assert m.body_parentid[m.body(g.node_names[c]).id] == m.body(g.node_names[p]).id
        assert etype == f"{g.node_types[p]}-{g.node_types[c]}"
    assert len(g.edges) == m.nbody - 2  # a tree under the root
    counts = {t: g.node_types.count(t) for t in set(g.node_types)}
    assert counts == {"root": 1, "torso": n // 2 - 1, "thigh": n, "shin": n}
    assert sorted(a for acts in g.node_actuators for a in acts) == list(range(m.nu))
    assert sorted(o for obs in g.node_obs for o in obs) == list(range(env.observation_space.shape[0]))
    for node, acts in enumerate(g.node_actuators):  # a node's actuators drive its own body's joints
        for a in acts:
            assert m.jnt_bodyid[m.actuator_trnid[a, 0]] == m.body(g.node_names[node]).id


def _swap_legs(graph, k):
    """Permutations of observation and action indices swapping segment k's left and right legs."""
    obs_perm, act_perm = np.arange(graph.obs_dim), np.arange(graph.act_dim)
    for part in ("thigh", "shin"):
        left, right = graph.node_names.index(f"{part}_{k}_L"), graph.node_names.index(f"{part}_{k}_R")
        for a, b in ((left, right), (right, left)):
            obs_perm[graph.node_obs[a]] = graph.node_obs[b]
            act_perm[graph.node_actuators[a]] = graph.node_actuators[b]
    return torch.as_tensor(obs_perm), torch.as_tensor(act_perm)


def test_nervenet_is_equivariant_under_the_left_right_symmetry():
    graph = make("mujoco/Centipede-6").unwrapped.morphology
    torch.manual_seed(0)
    net = NerveNet(graph, hidden=16, steps=3)
    for out in net.outputs.values():  # non-trivial outputs (the head starts near zero)
        torch.nn.init.normal_(out[-1].weight)
    obs = torch.randn(5, graph.obs_dim)
    for k in range(3):
        op, ap = _swap_legs(graph, k)
        mean, _ = net(obs)
        mean_swapped, _ = net(obs[:, op])
        assert torch.allclose(mean_swapped, mean[:, ap], atol=1e-6)
        assert not torch.allclose(mean_swapped, mean, atol=1e-3)  # the swap does change the actions


def test_nervenet_transfers_zero_shot_to_other_sizes():
    small = make("mujoco/Centipede-6").unwrapped.morphology
    net = NerveNet(small, hidden=16)
    for n in (10, 40):
        env = make(f"mujoco/Centipede-{n}")
        net.bind(env.unwrapped.morphology)
        obs, _ = env.reset(seed=0)
        mean, log_std = net(torch.as_tensor(obs)[None])
        assert mean.shape == log_std.shape == (1, 3 * n - 2)
        env.step(mean[0].detach().numpy())


def _centipede_agent(freeze=(), n=6, **kw):
    env = make(f"mujoco/Centipede-{n}")
    spaces = {"c": (env.observation_space, env.action_space)}
    cfg = AgentConfig(core="nervenet", hidden=16, freeze=freeze, **kw)
    return Agent(spaces, cfg, {"c": env.unwrapped.morphology}), env


def test_snowflake_frozen_parameters_stay_bit_identical():
    torch.manual_seed(0)
    agent, env = _centipede_agent(freeze=("input", "message", "output"))
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    opt = torch.optim.Adam([p for p in agent.parameters() if p.requires_grad], lr=1e-2)
    obs = torch.randn(32, env.observation_space.shape[0])
    for _ in range(5):
        dist, value = agent.graph_policy("c", obs)
        loss = -dist.log_prob(torch.randn(32, env.action_space.shape[0])).mean() + value.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = agent.state_dict()
    frozen = [k for k in before if k.startswith(("gnn.c.inputs", "gnn.c.messages", "gnn.c.outputs"))]
    trained = [k for k in before if k.startswith(("gnn.c.update_cell", "gnn.c.log_std", "gnn_critic"))]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in trained)


def test_freeze_names_are_checked():
    with pytest.raises(ValueError, match="unknown NerveNet part"):
        _centipede_agent(freeze=("inputs",))
    with pytest.raises(ValueError, match="nervenet needs environments that expose a morphology"):
        env = make("gym/CartPole")
        Agent({"x": (env.observation_space, env.action_space)}, AgentConfig(core="nervenet"))


def test_running_norm_matches_numpy_and_reward_scaler_matches_its_definition():
    norm = RunningNorm(3)
    data = np.random.default_rng(0).normal(2.0, 3.0, (100, 3))
    for chunk in np.array_split(data, 7):
        norm.update(torch.as_tensor(chunk))
    assert np.allclose(norm.mean.numpy(), data.mean(0), atol=1e-5)
    assert np.allclose(norm.var.numpy(), data.var(0), atol=1e-4)
    scaler = RewardScaler(2, gamma=0.9)
    rewards = [torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0]), torch.tensor([1.0, 1.0])]
    dones = [torch.tensor([False, True]), torch.tensor([False, False]), torch.tensor([False, False])]
    ret, seen = np.zeros(2), []
    for r, d in zip(rewards, dones):
        ret = ret * 0.9 + r.numpy()
        seen += list(ret)
        scaled = scaler(r, d)
        ret[d.numpy()] = 0
        assert np.allclose(scaled.numpy(), r.numpy() / np.sqrt(np.var(seen) + 1e-8), rtol=1e-3)


def test_normalisation_is_saved_and_restored_for_evaluation(tmp_path):
    from chimera.rl.train import PPOConfig, RLRunConfig, TrainRLConfig, load_agent, train_rl

    cfg = TrainRLConfig(tasks=("mujoco/Centipede-4",), num_envs=2, total_steps=2 * 64 * 2, reward_norm=True,
                        ppo=PPOConfig(num_steps=64, minibatches=2, epochs=1),
                        agent=AgentConfig(core="nervenet", hidden=8, obs_norm=True, freeze=("input",)),
                        run=RLRunConfig(out_dir=str(tmp_path), ckpt_every=1, plots=False))
    run = train_rl(cfg, log=lambda *_: None)
    ckpt = torch.load(sorted((run.path / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    agent, _ = load_agent(run.path)
    norm = agent.obs_norms["mujoco/Centipede-4"]
    assert float(norm.count) > 200  # two iterations of 128 observations folded in
    assert torch.equal(norm.mean, ckpt["agent"]["obs_norms.mujoco/Centipede-4.mean"])
    assert float(agent.gnn["mujoco/Centipede-4"].norms["thigh"].count) > 4 * 200
    assert float(ckpt["reward_norm"]["mujoco/Centipede-4"]["stats.count"]) > 200
    # resume picks the reward statistics up again
    more = dataclasses.replace(cfg, total_steps=2 * 64 * 3)
    resumed = train_rl(more, resume=str(run.path), log=lambda *_: None)
    ckpt2 = torch.load(sorted((resumed.path / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    assert float(ckpt2["reward_norm"]["mujoco/Centipede-4"]["stats.count"]) > \
        float(ckpt["reward_norm"]["mujoco/Centipede-4"]["stats.count"])


def _egl_works() -> bool:
    import subprocess
    import sys

    code = ("import mujoco; m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=\"1\"/>"
            "</worldbody></mujoco>'); mujoco.Renderer(m, 8, 8)")
    return subprocess.run([sys.executable, "-c", code], env={"MUJOCO_GL": "egl", "PATH": ""},
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not _egl_works(), reason="no EGL rendering on this machine (libEGL / a GPU or Mesa driver)")
def test_eval_rl_records_a_gif(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from chimera.rl.train import PPOConfig, RLRunConfig, TrainRLConfig, train_rl

    cfg = TrainRLConfig(tasks=("mujoco/Centipede-4",), num_envs=2, total_steps=2 * 32,
                        ppo=PPOConfig(num_steps=32, minibatches=2, epochs=1),
                        agent=AgentConfig(core="mlp", hidden=8), run=RLRunConfig(out_dir=str(tmp_path), plots=False))
    run = train_rl(cfg, log=lambda *_: None)
    out = subprocess.run([sys.executable, "-m", "chimera.cli", "eval-rl", str(run.path), "--episodes", "1",
                          "--record", str(tmp_path / "rec")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    gif = tmp_path / "rec" / "mujoco_Centipede-4.gif"
    assert f"recorded mujoco/Centipede-4: {gif}" in out.stdout
    img = Image.open(gif)
    assert img.n_frames > 1 and img.size == (480, 320)


def test_a_nervenet_built_on_the_smallest_centipede_knows_every_edge_type():
    net = NerveNet(make("mujoco/Centipede-4").unwrapped.morphology, hidden=8)  # no torso-torso edge at N=4
    net.bind(make("mujoco/Centipede-8").unwrapped.morphology)
    assert net(torch.zeros(2, 6 * 8 + 7))[0].shape == (2, 22)
