"""Whole PPO iterations per second (collection + update): chimera vs Stable-Baselines3, one run.

Same environment (CartPole-v1, 8 envs in one process), same rollout (128 steps per env), same
update (4 epochs of 4 minibatches of 256, Adam 2.5e-4, clipping 0.2, GAE 0.95), same network
(actor 3 x 64 tanh: chimera's 2-layer encoder + MLP core, SB3's pi=[64, 64, 64]; critic 2 x 64
tanh: SB3's vf=[64, 64], chimera's separate critic encoder) and one torch thread for both.
Steps/s are measured over whole ``learn`` / ``train_rl`` calls (chimera without its end-of-run plots),
after a short warm-up run of each so that neither pays for first imports. Writes results/rl_throughput.json.

    pip install -e '.[bench]'   # stable-baselines3
    python bench/rl_throughput.py [--steps 65536] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NUM_ENVS, NUM_STEPS, MINIBATCHES, EPOCHS = 8, 128, 4, 4


def run_chimera(steps: int, seed: int) -> float:
    from chimera.rl.agent import AgentConfig
    from chimera.rl.train import PPOConfig, RLRunConfig, TrainRLConfig, train_rl

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainRLConfig(tasks=("gym/CartPole",), num_envs=NUM_ENVS, total_steps=steps,
                            ppo=PPOConfig(num_steps=NUM_STEPS, minibatches=MINIBATCHES, epochs=EPOCHS, ent_coef=0.0),
                            agent=AgentConfig(core="mlp", hidden=64),
                            run=RLRunConfig(out_dir=out, seed=seed, log_every=10**9, ckpt_every=10**9, threads=1,
                                            plots=False))
        t = time.perf_counter()
        train_rl(cfg, log=lambda *_: None)
        return steps / (time.perf_counter() - t)


def run_sb3(steps: int, seed: int) -> float:
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    env = make_vec_env(lambda: gym.make("CartPole-v1"), n_envs=NUM_ENVS, seed=seed)
    model = PPO("MlpPolicy", env, n_steps=NUM_STEPS, batch_size=NUM_ENVS * NUM_STEPS // MINIBATCHES,
                n_epochs=EPOCHS, learning_rate=2.5e-4, clip_range=0.2, gae_lambda=0.95, ent_coef=0.0,
                policy_kwargs={"net_arch": {"pi": [64, 64, 64], "vf": [64, 64]}}, device="cpu", seed=seed,
                verbose=0)
    t = time.perf_counter()
    model.learn(total_timesteps=steps)
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best is kept")
    ap.add_argument("--out", default=str(ROOT / "results" / "rl_throughput.json"))
    args = ap.parse_args()
    runs: dict[str, list[float]] = {"chimera": [], "sb3": []}
    run_chimera(2048, seed=0), run_sb3(2048, seed=0)  # warm-up: imports, allocator
    for r in range(args.repeats):
        for name, fn in (("chimera", run_chimera), ("sb3", run_sb3)):
            runs[name].append(fn(args.steps, seed=r))
            print(f"{name:8s} run {r + 1}: {runs[name][-1]:,.0f} steps/s", flush=True)
    best = {k: max(v) for k, v in runs.items()}
    result = {"env": "CartPole-v1", "num_envs": NUM_ENVS, "num_steps": NUM_STEPS, "minibatches": MINIBATCHES,
              "epochs": EPOCHS, "steps": args.steps, "threads": 1, "steps_per_s": runs, "best": best,
              "ratio_chimera_over_sb3": best["chimera"] / best["sb3"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"chimera / SB3 = {result['ratio_chimera_over_sb3']:.2f}x  -> {args.out}")


if __name__ == "__main__":
    main()
