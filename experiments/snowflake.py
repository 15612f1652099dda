"""MLP vs NerveNet vs NerveNet + Snowflake on Centipede-N with PPO, several seeds, then zero-shot
transfer of the NerveNets trained at the smallest N to the larger ones.

Snowflake freezes the input, output and message MLPs at initialisation (the paper's set
{F_in, F_out, M}). Every policy gets observation and reward normalisation; the GNNs normalise
per node type, which is what lets their statistics transfer. Per update the JSON keeps the
approximate KL and the clip fraction, whose growth with N is what Snowflake is meant to curb.

    python experiments/snowflake.py                                  # N = 6, 10, 20; 3 seeds; 20k steps
    python experiments/snowflake.py --legs 6 --seeds 1 --steps 4096  # a smoke run
Writes results/snowflake.json and results/snowflake.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from chimera.envs import make
from chimera.rl.agent import Agent, AgentConfig
from chimera.rl.train import PPOConfig, RLRunConfig, TrainRLConfig, clip_action, load_agent, task_specs, train_rl
from chimera.runs import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SNOWFLAKE = ("input", "message", "output")
POLICIES = {"mlp": {"core": "mlp", "hidden": 64},
            "nervenet": {"core": "nervenet", "hidden": 32},
            "snowflake": {"core": "nervenet", "hidden": 32, "freeze": SNOWFLAKE}}


@torch.no_grad()
def play(agent, task_key: str, env_id: str, episodes: int, seed: int) -> dict[str, float]:
    """Mean return and forward distance of the policy's mean action (the GNN re-bound to this env's morphology)."""
    env = make(env_id)
    if agent.cfg.core == "nervenet":
        agent.gnn[task_key].bind(env.unwrapped.morphology)
    returns, distances = [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        x0 = float(env.unwrapped.data.xpos[1, 0])
        total, done, info = 0.0, False, {}
        while not done:
            mean, _ = agent.gnn[task_key](torch.as_tensor(obs, dtype=torch.float32)[None])
            obs, r, term, trunc, info = env.step(clip_action(mean[0].numpy(), env.action_space))
            total, done = total + float(r), term or trunc
        returns.append(total)
        distances.append(info["x_position"] - x0)
    env.close()
    return {"return": float(np.mean(returns)), "distance": float(np.mean(distances))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--legs", type=int, nargs="+", default=[6, 10, 20])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--transfer-episodes", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results" / "snowflake.json"))
    a = ap.parse_args()
    results: dict = {}
    for n in a.legs:
        task = f"mujoco/Centipede-{n}"
        for name, agent_kw in POLICIES.items():
            for seed in range(1, a.seeds + 1):
                cfg = TrainRLConfig(tasks=(task,), num_envs=4, total_steps=a.steps, reward_norm=True,
                                    ppo=PPOConfig(num_steps=256, minibatches=4, epochs=4, lr=3e-4, ent_coef=0.0),
                                    agent=AgentConfig(obs_norm=True, **agent_kw),
                                    run=RLRunConfig(name=f"snowflake-{name}-{n}-s{seed}", seed=seed,
                                                    out_dir=str(ROOT / "runs"), log_every=1, ckpt_every=1000,
                                                    plots=False))
                run = train_rl(cfg, log=lambda *_: None)
                rows = read_metrics(run.metrics_path)
                key = f"charts/episodic_return/{task}"
                curve = [(r["step"], r[key]) for r in rows if key in r]
                results.setdefault(str(n), {}).setdefault(name, []).append({
                    "seed": seed, "run": str(run.path), "curve": curve,
                    "final_return": curve[-1][1] if curve else float("nan"),
                    "approx_kl": [r["losses/approx_kl"] for r in rows],
                    "clipfrac": [r["losses/clipfrac"] for r in rows],
                    "sps": float(np.mean([r["charts/SPS"] for r in rows]))})
                print(f"Centipede-{n} {name} seed {seed}: final return {results[str(n)][name][-1]['final_return']:.1f}"
                      f" ({results[str(n)][name][-1]['sps']:.0f} steps/s)", flush=True)
    summary = {n: {name: {"final_return_mean": float(np.mean([r["final_return"] for r in runs])),
                          "final_return_std": float(np.std([r["final_return"] for r in runs])),
                          "approx_kl_mean": float(np.mean([np.mean(r["approx_kl"]) for r in runs])),
                          "clipfrac_mean": float(np.mean([np.mean(r["clipfrac"]) for r in runs]))}
                   for name, runs in pols.items()} for n, pols in results.items()}
    # zero-shot transfer: GNNs trained at the smallest N, run on every larger N (mean action, no training)
    small = min(a.legs)
    transfer: dict = {}
    for name in ("nervenet", "snowflake"):
        for r in results[str(small)][name]:
            agent, _ = load_agent(r["run"])
            for n in a.legs:
                if n == small:
                    continue
                ret = play(agent, f"mujoco/Centipede-{small}", f"mujoco/Centipede-{n}", a.transfer_episodes,
                           10_000)
                transfer.setdefault(name, {}).setdefault(str(n), []).append(ret)
    # the baseline: the same NerveNet architecture, untrained (initial weights, empty normalisers)
    _, cfg_small = load_agent(results[str(small)]["nervenet"][0]["run"])
    spaces, graphs = task_specs(cfg_small)
    for seed in range(1, a.seeds + 1):
        torch.manual_seed(seed)
        fresh = Agent(spaces, cfg_small.agent, graphs).eval()
        for n in a.legs:
            if n != small:
                ret = play(fresh, f"mujoco/Centipede-{small}", f"mujoco/Centipede-{n}", a.transfer_episodes, 10_000)
                transfer.setdefault("untrained", {}).setdefault(str(n), []).append(ret)
    transfer_summary = {name: {n: {k: float(np.mean([r[k] for r in v])) for k in ("return", "distance")}
                               for n, v in by_n.items()} for name, by_n in transfer.items()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"steps": a.steps, "legs": a.legs, "summary": summary,
                               "transfer_from": small, "transfer": transfer, "transfer_summary": transfer_summary,
                               "runs": results}, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"mlp": "tab:gray", "nervenet": "tab:blue", "snowflake": "tab:orange"}
    fig, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 7), squeeze=False)
    for j, (n, pols) in enumerate(results.items()):
        for name, runs in pols.items():
            for i, r in enumerate(runs):
                axes[0][j].plot([p[0] for p in r["curve"]], [p[1] for p in r["curve"]], color=colors[name],
                                alpha=0.7, label=name if i == 0 else None)
                axes[1][j].plot(r["approx_kl"], color=colors[name], alpha=0.7, label=name if i == 0 else None)
        axes[0][j].set_title(f"Centipede-{n}: mean episodic return")
        axes[0][j].set_xlabel("env steps")
        axes[1][j].set_title("approx KL per update")
        axes[1][j].set_xlabel("iteration")
        for ax in axes[:, j]:
            ax.legend()
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    print(json.dumps({"summary": summary, "transfer_from": small, "transfer": transfer_summary}, indent=2))


if __name__ == "__main__":
    main()
