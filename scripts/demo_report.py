"""The agents demo's report (make demo-agents): evaluate a finished demo run and write results/demo_agents.json.

Called by scripts/demo-agents.sh after training, with the training's wall and CPU seconds:

    python scripts/demo_report.py runs/demo-20261129-101517 --wall-s 852 --cpu-s 834

Prints the per-environment table of ``chimera eval-rl`` (20 fresh seeded episodes each) and writes
the training curve's first and last logged values (means over the last 100 episodes), the
evaluation, and a uniformly random policy under the same 100-step limit for the MiniHack tasks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from chimera.config import load_preset
from chimera.envs import make
from chimera.envs.vector import episode_success
from chimera.rl.evaluate import evaluate_agent
from chimera.rl.train import TrainRLConfig, env_kwargs
from chimera.runs import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def random_policy(task: str, cfg: TrainRLConfig, episodes: int, seed: int = 0) -> dict[str, float]:
    """Success and episode length of uniformly random actions under the run's step limit."""
    env = make(task, **env_kwargs(task, cfg))
    rng = np.random.default_rng(seed)
    succ, lengths = [], []
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        done, t = False, 0
        while not done:
            _, r, term, trunc, info = env.step(int(rng.integers(env.action_space.n)))
            t, done = t + 1, term or trunc
        succ.append(episode_success(info, term, r))
        lengths.append(t)
    env.close()
    return {"success": float(np.mean(succ)), "episode_length": float(np.mean(lengths)), "episodes": episodes}


def first_last(rows: list[dict], key: str) -> list[float] | None:
    got = [r[key] for r in rows if key in r]
    return [got[0], got[-1]] if got else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--wall-s", type=float, required=True, help="wall seconds the training took")
    ap.add_argument("--cpu-s", type=float, required=True, help="CPU seconds (user + system) the training took")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "results" / "demo_agents.json"))
    a = ap.parse_args()
    run = Path(a.run_dir)
    cfg = load_preset(TrainRLConfig, run / "config.json")
    rows = read_metrics(run / "metrics.jsonl")
    training = {}
    for task in cfg.tasks:
        entry = {name: first_last(rows, f"charts/{metric}/{task}")
                 for name, metric in (("return", "episodic_return"), ("episode_length", "episodic_length"),
                                      ("success", "success"))}
        training[task] = {k: v for k, v in entry.items() if v is not None}
    evaluation = evaluate_agent(run, a.episodes, seed=10_000)
    print(f"{'environment':<32}{'episodes':>9}{'return':>10}{'success':>10}")
    for task, r in evaluation.items():
        success = "-" if np.isnan(r["success"]) else f"{r['success']:.2f}"  # '-': no notion of success
        print(f"{task:<32}{r['episodes']:>9}{r['return']:>10.2f}{success:>10}")
    baseline = {t: random_policy(t, cfg, 100) for t in cfg.tasks if t.startswith("minihack/")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    report = {"command": "bash scripts/demo-agents.sh", "commit": commit.stdout.strip(), "run": str(run),
              "steps": int(rows[-1]["step"]) if rows else 0, "tasks": list(cfg.tasks),
              "wall_min": round(a.wall_s / 60, 1), "cpu_min": round(a.cpu_s / 60, 1),
              "training_first_last": training,
              f"eval_{a.episodes}_episodes": {t: {k: r[k] for k in ("return", "success") if not np.isnan(r[k])}
                                              for t, r in evaluation.items()},
              "random_policy_100_step_limit": baseline}
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
