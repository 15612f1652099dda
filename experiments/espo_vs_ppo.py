"""ESPO vs PPO-clip, several seeds: learning curves, final returns, and the mean |ratio - 1| per
iteration (the drift ESPO watches).

ESPO measures the drift after every gradient step (on the next minibatch) and stops the
iteration's epochs at the first step past delta; ``grad_steps`` records how many steps each
iteration took.

Classic control uses CleanRL's setting (MLP, 4 envs x 128 steps, 4 epochs of 4 minibatches, lr
2.5e-4 annealed); ``--setting zoo`` uses RL-Zoo's PPO setting tuned for CartPole instead (8 envs x 32
steps, 20 epochs of one 256-step minibatch, lr 1e-3 annealed, gamma 0.98, GAE 0.8, no entropy
bonus, no value clipping). Both check CartPole's target of a mean return >= 475 within 200k steps. MuJoCo
(mujoco/..., Centipede-N included) uses CleanRL's continuous setting adapted to whole-sequence
minibatches: 4 envs x 512 steps, 10 epochs of 4 minibatches, lr 3e-4 annealed,
no entropy bonus, observation and reward normalisation.

    python experiments/espo_vs_ppo.py --tasks gym/CartPole --out results/espo_vs_ppo_cartpole.json
    python experiments/espo_vs_ppo.py --tasks gym/CartPole --setting zoo --out results/espo_vs_ppo_cartpole_zoo.json
    python experiments/espo_vs_ppo.py --tasks gym/Acrobot --out results/espo_vs_ppo_acrobot.json
    python experiments/espo_vs_ppo.py --tasks mujoco/HalfCheetah mujoco/Hopper mujoco/Centipede-6 \
        --steps 100000 --out results/espo_vs_ppo_mujoco.json
Writes the JSON given by --out and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from chimera.rl.agent import AgentConfig
from chimera.rl.train import PPOConfig, RLRunConfig, TrainRLConfig, train_rl
from chimera.runs import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """The commit the results were produced at (with '+dirty' when the tree had changes)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--", "chimera") else "")


def config(task: str, algo: str, seed: int, a: argparse.Namespace) -> TrainRLConfig:
    run = RLRunConfig(name=f"{algo}-{task.split('/')[-1]}-s{seed}", seed=seed, out_dir=str(ROOT / "runs"),
                      log_every=1, ckpt_every=1000, plots=False)
    if task.startswith("mujoco/"):
        return TrainRLConfig(tasks=(task,), num_envs=a.num_envs, total_steps=a.steps, reward_norm=True,
                             ppo=PPOConfig(algo=algo, num_steps=512, minibatches=4, epochs=10, lr=3e-4, ent_coef=0.0),
                             agent=AgentConfig(core="mlp", hidden=64, obs_norm=True), run=run)
    if a.setting == "zoo":
        return TrainRLConfig(tasks=(task,), num_envs=8, total_steps=a.steps,
                             ppo=PPOConfig(algo=algo, num_steps=32, minibatches=1, epochs=20, lr=1e-3, gamma=0.98,
                                           gae_lambda=0.8, ent_coef=0.0, clip_vloss=False),
                             agent=AgentConfig(core=a.core, hidden=64), run=run)
    return TrainRLConfig(tasks=(task,), num_envs=a.num_envs, total_steps=a.steps,
                         ppo=PPOConfig(algo=algo, num_steps=128, minibatches=4, lr=2.5e-4),
                         agent=AgentConfig(core=a.core, hidden=64), run=run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["gym/CartPole", "gym/Acrobot"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--setting", default="cleanrl", choices=["cleanrl", "zoo"],
                    help="classic-control hyperparameters: CleanRL's defaults or RL-Zoo's CartPole PPO")
    ap.add_argument("--core", default="mlp", choices=["mlp", "lstm", "hybrid"], help="classic-control core")
    ap.add_argument("--num-envs", type=int, default=4, help="envs per task outside CartPole (CleanRL's 4 x 128 steps)")
    ap.add_argument("--out", default=str(ROOT / "results" / "espo_vs_ppo.json"))
    a = ap.parse_args()
    results: dict = {}
    for task in a.tasks:
        for algo in ("ppo", "espo"):
            for seed in range(1, a.seeds + 1):
                cfg = config(task, algo, seed, a)
                run = train_rl(cfg, log=lambda *_: None)
                rows = read_metrics(run.metrics_path)
                key = f"charts/episodic_return/{task}"
                curve = [(r["step"], r[key]) for r in rows if key in r]
                first_475 = next((s for s, v in curve if v >= 475), None)
                results.setdefault(task, {}).setdefault(algo, []).append({
                    "seed": seed, "run": str(run.path), "curve": curve,
                    "final_return": curve[-1][1] if curve else float("nan"),
                    "first_step_mean_return_ge_475": first_475,
                    "ratio_dev_mean": [r["losses/ratio_dev_mean"] for r in rows],
                    "epochs_used": [r["losses/epochs_used"] for r in rows],
                    "grad_steps": [r["losses/grad_steps"] for r in rows]})
                print(f"{task} {algo} seed {seed}: final mean return {results[task][algo][-1]['final_return']:.1f}"
                      f" (>=475 first at {first_475})", flush=True)
    summary = {task: {algo: {"final_return_mean": float(np.mean([r["final_return"] for r in runs])),
                             "final_return_std": float(np.std([r["final_return"] for r in runs])),
                             "mean_ratio_dev": float(np.mean([np.mean(r["ratio_dev_mean"]) for r in runs])),
                             "mean_epochs_used": float(np.mean([np.mean(r["epochs_used"]) for r in runs])),
                             "mean_grad_steps": float(np.mean([np.mean(r["grad_steps"]) for r in runs])),
                             "seeds_reaching_475": sum(r["first_step_mean_return_ge_475"] is not None for r in runs)}
                      for algo, runs in algos.items()} for task, algos in results.items()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"steps": a.steps, "core": a.core, "setting": a.setting, "commit": git_commit(),
                               "command": " ".join(sys.argv), "summary": summary, "runs": results}, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 7), squeeze=False)
    for j, (task, algos) in enumerate(results.items()):
        for algo, runs in algos.items():
            color = "tab:blue" if algo == "ppo" else "tab:orange"
            for i, r in enumerate(runs):
                xs = [p[0] for p in r["curve"]]
                axes[0][j].plot(xs, [p[1] for p in r["curve"]], color=color, alpha=0.7, label=algo if i == 0 else None)
                axes[1][j].plot(r["ratio_dev_mean"], color=color, alpha=0.7, label=algo if i == 0 else None)
        axes[0][j].set_title(f"{task}: mean episodic return")
        axes[0][j].set_xlabel("env steps")
        axes[1][j].set_title("mean |ratio - 1| per iteration")
        axes[1][j].set_xlabel("iteration")
        for ax in axes[:, j]:
            ax.legend()
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
