"""MiniHack-Room-5x5 with the hybrid backbone as the recurrent core: success rate over training
for several seeds, against a uniformly random policy under the same step limit.

Success is measured on evaluation episodes, not on the training episodes: every ``--eval-every``
iterations a checkpoint is kept, and after training each one plays ``--eval-episodes`` fresh seeded
episodes to their end (one per env, sampled actions as in training, the environment's 100-step
limit). The training statistic would mislead early on: before an env has run 100 steps only
episodes that reached the stairs can have ended, so the first iterations' training success is 1.0
by construction. The target (issue #5) is an evaluation success >= 0.9 within 1M steps. A random
walk reaches the stairs about half the time within the limit, so the mean episode length is
reported too: a learned policy walks to the stairs instead of stumbling on them.

    python experiments/minihack_room.py                        # 3 seeds x 30k steps
    python experiments/minihack_room.py --seeds 1 --steps 20000
Writes results/minihack_room.json and results/minihack_room.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from chimera.envs import InProcessVectorEnv, make
from chimera.rl.agent import Agent, AgentConfig
from chimera.rl.train import PPOConfig, RLRunConfig, TrainRLConfig, env_kwargs, task_specs, to_tensor, train_rl

ROOT = Path(__file__).resolve().parents[1]


def random_policy(task: str, episodes: int, seed: int = 0) -> dict[str, float]:
    env = make(task)
    rng = np.random.default_rng(seed)
    succ, lengths = [], []
    for ep in range(episodes):
        env.reset(seed=seed * 100_000 + ep)
        done, t, info = False, 0, {}
        while not done:
            _, _, te, tr, info = env.step(int(rng.integers(env.action_space.n)))
            t, done = t + 1, te or tr
        succ.append(float(info.get("end_status") == 2))
        lengths.append(t)
    env.close()
    return {"success": float(np.mean(succ)), "episode_length": float(np.mean(lengths)), "episodes": episodes}


@torch.no_grad()
def evaluate(agent: Agent, cfg: TrainRLConfig, task: str, episodes: int, seed: int) -> dict[str, float]:
    """Success and length of the first episode of each of ``episodes`` envs (seeds seed, seed + 1, ...)."""
    venv = InProcessVectorEnv(lambda: make(task, **env_kwargs(task, cfg)), episodes, seed)
    state, starts = agent.initial_state(episodes), torch.ones(episodes, dtype=torch.bool)
    success, length = np.full(episodes, np.nan), np.zeros(episodes)
    obs = venv.obs
    while np.isnan(success).any():
        dist, _, state = agent.step(task, to_tensor(obs), state, starts)
        obs, _, _, _, finals = venv.step(dist.sample().numpy())
        ended = np.array([f is not None for f in finals])
        length[np.isnan(success)] += 1
        _, _, succ = venv.stats.drain()  # one entry per env that ended at this step, in env order
        for i, s in zip(np.flatnonzero(ended), succ):
            if np.isnan(success[i]):
                success[i] = s
        starts = torch.as_tensor(ended)
    venv.close()
    return {"success": float(success.mean()), "episode_length": float(length.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="minihack/Room-5x5")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--pattern", default="ME", help="hybrid core layer pattern")
    ap.add_argument("--algo", default="ppo", choices=["ppo", "espo"])
    ap.add_argument("--eval-every", type=int, default=2, help="iterations between evaluated checkpoints")
    ap.add_argument("--eval-episodes", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "results" / "minihack_room.json"))
    a = ap.parse_args()
    baseline = random_policy(a.task, 200)
    print(f"random policy: success {baseline['success']:.2f}, episode length {baseline['episode_length']:.1f}")
    runs = []
    for seed in range(1, a.seeds + 1):
        cfg = TrainRLConfig(tasks=(a.task,), num_envs=16, total_steps=a.steps,
                            ppo=PPOConfig(algo=a.algo, num_steps=64, minibatches=4, lr=5e-4),
                            agent=AgentConfig(core="hybrid", hidden=64, pattern=a.pattern),
                            run=RLRunConfig(name=f"room-{a.algo}-s{seed}", seed=seed, out_dir=str(ROOT / "runs"),
                                            log_every=1, ckpt_every=a.eval_every, keep_checkpoints=0, plots=False))
        run = train_rl(cfg, log=lambda *_: None)
        spaces, graphs = task_specs(cfg)
        agent = Agent(spaces, cfg.agent, graphs).eval()
        curve = []
        for path in run.checkpoints.list():
            ckpt = run.checkpoints.load(path)
            agent.load_state_dict(ckpt["agent"])
            ev = evaluate(agent, cfg, a.task, a.eval_episodes, seed=10_000 * seed)
            curve.append((ckpt["global_step"], ev["success"], ev["episode_length"]))
            print(f"seed {seed} step {ckpt['global_step']:>6}: eval success {ev['success']:.2f}, "
                  f"episode length {ev['episode_length']:.1f}", flush=True)
        first = next((s for s, v, _ in curve if v >= 0.9), None)
        runs.append({"seed": seed, "run": str(run.path), "curve": curve, "first_step_eval_success_ge_0.9": first,
                     "final_success": curve[-1][1], "final_episode_length": curve[-1][2]})
        print(f"seed {seed}: eval success >= 0.9 first at {first} steps; final success {curve[-1][1]:.3f}, "
              f"episode length {curve[-1][2]:.1f}", flush=True)
    summary = {"random_policy": baseline,
               "final_success_mean": float(np.mean([r["final_success"] for r in runs])),
               "final_episode_length_mean": float(np.mean([r["final_episode_length"] for r in runs])),
               "seeds_reaching_0.9": sum(r["first_step_eval_success_ge_0.9"] is not None for r in runs),
               "first_step_eval_success_ge_0.9": [r["first_step_eval_success_ge_0.9"] for r in runs]}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"task": a.task, "steps": a.steps, "core": f"hybrid {a.pattern}", "algo": a.algo,
                               "evaluation": f"{a.eval_episodes} episodes per checkpoint, every {a.eval_every} "
                                             f"iterations, sampled actions",
                               "command": " ".join(sys.argv), "summary": summary, "runs": runs}, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        xs = [c[0] for c in r["curve"]]
        axes[0].plot(xs, [c[1] for c in r["curve"]], marker=".", label=f"seed {r['seed']}")
        axes[1].plot(xs, [c[2] for c in r["curve"]], marker=".", label=f"seed {r['seed']}")
    axes[0].axhline(baseline["success"], color="gray", ls="--", label="random policy")
    axes[0].axhline(0.9, color="k", lw=0.8)
    axes[1].axhline(baseline["episode_length"], color="gray", ls="--", label="random policy")
    for ax, title in zip(axes, (f"evaluation success ({a.eval_episodes} episodes)", "evaluation episode length")):
        ax.set_title(f"{a.task}: {title}")
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
