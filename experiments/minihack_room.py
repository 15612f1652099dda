"""MiniHack-Room-5x5 with the hybrid backbone as the recurrent core: success rate over training
for several seeds, against a uniformly random policy under the same step limit.

The target (issue #5) is a success rate >= 0.9 (mean over the last 100 episodes) within 1M
steps. Room-5x5's default limit is 100 steps, under which a random walk already reaches the
stairs about half the time, so the experiment also reports the mean episode length: a learned
policy walks to the stairs instead of stumbling on them.

    python experiments/minihack_room.py                        # 3 seeds x 150k steps
    python experiments/minihack_room.py --seeds 1 --steps 20000
Writes results/minihack_room.json and results/minihack_room.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from chimera.envs import make
from chimera.rl.agent import AgentConfig
from chimera.rl.train import PPOConfig, RLRunConfig, TrainRLConfig, train_rl
from chimera.runs import read_metrics

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="minihack/Room-5x5")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150_000)
    ap.add_argument("--pattern", default="ME", help="hybrid core layer pattern")
    ap.add_argument("--algo", default="ppo", choices=["ppo", "espo"])
    ap.add_argument("--out", default=str(ROOT / "results" / "minihack_room.json"))
    a = ap.parse_args()
    baseline = random_policy(a.task, 200)
    print(f"random policy: success {baseline['success']:.2f}, episode length {baseline['episode_length']:.1f}")
    key_s, key_r = f"charts/success/{a.task}", f"charts/episodic_return/{a.task}"
    runs = []
    for seed in range(1, a.seeds + 1):
        cfg = TrainRLConfig(tasks=(a.task,), num_envs=16, total_steps=a.steps,
                            ppo=PPOConfig(algo=a.algo, num_steps=64, minibatches=4, lr=5e-4),
                            agent=AgentConfig(core="hybrid", hidden=64, pattern=a.pattern),
                            run=RLRunConfig(name=f"room-{a.algo}-s{seed}", seed=seed, out_dir=str(ROOT / "runs"),
                                            log_every=1, ckpt_every=50))
        run = train_rl(cfg, log=lambda *_: None)
        rows = [r for r in read_metrics(run.metrics_path) if key_s in r]
        curve = [(r["step"], r[key_s], r[key_r], r.get(f"charts/episodic_length/{a.task}")) for r in rows]
        first = next((s for s, v, _, _ in curve if v >= 0.9), None)
        runs.append({"seed": seed, "run": str(run.path), "curve": curve, "first_step_success_ge_0.9": first,
                     "final_success": curve[-1][1], "final_return": curve[-1][2], "final_episode_length": curve[-1][3]})
        print(f"seed {seed}: success >= 0.9 first at {first} steps; final success {curve[-1][1]:.3f}, "
              f"return {curve[-1][2]:.3f}, episode length {curve[-1][3]}", flush=True)
    summary = {"random_policy": baseline,
               "final_success_mean": float(np.mean([r["final_success"] for r in runs])),
               "final_episode_length_mean": float(np.mean([r["final_episode_length"] for r in runs])),
               "seeds_reaching_0.9": sum(r["first_step_success_ge_0.9"] is not None for r in runs),
               "first_step_success_ge_0.9": [r["first_step_success_ge_0.9"] for r in runs]}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"task": a.task, "steps": a.steps, "core": f"hybrid {a.pattern}", "algo": a.algo,
                               "summary": summary, "runs": runs}, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        xs = [c[0] for c in r["curve"]]
        axes[0].plot(xs, [c[1] for c in r["curve"]], label=f"seed {r['seed']}")
        axes[1].plot(xs, [c[3] for c in r["curve"]], label=f"seed {r['seed']}")
    axes[0].axhline(baseline["success"], color="gray", ls="--", label="random policy")
    axes[0].axhline(0.9, color="k", lw=0.8)
    axes[1].axhline(baseline["episode_length"], color="gray", ls="--", label="random policy")
    for ax, title in zip(axes, ("success rate (last 100 episodes)", "episode length")):
        ax.set_title(f"{a.task}: {title}")
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
