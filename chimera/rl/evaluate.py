"""Play episodes with a trained agent (step by step, recurrent state carried) and report results."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from chimera.envs import make
from chimera.envs.vector import episode_success
from chimera.rl.train import env_kwargs, load_agent, to_tensor


def render_text(env) -> str:
    """The NetHack screen as text (tty_chars), or the env's own ansi / text rendering."""
    obs = getattr(env.unwrapped, "last_observation", None)
    keys = getattr(env.unwrapped, "_observation_keys", None)
    if obs is not None and keys and "tty_chars" in keys:
        chars = obs[keys.index("tty_chars")]
        return "\n".join(bytes(row).decode("latin-1").rstrip() for row in chars)
    try:
        frame = env.render()
        return frame if isinstance(frame, str) else ""
    except Exception:
        return ""


@torch.no_grad()
def evaluate_agent(run_dir: str | Path, episodes: int, seed: int, greedy: bool = False,
                   render: bool = False) -> dict[str, dict[str, float]]:
    """Mean return and success over ``episodes`` seeded episodes per environment of the run."""
    agent, cfg = load_agent(run_dir)
    out = {}
    for task in cfg.tasks:
        kw = env_kwargs(task, cfg)
        if render and task.startswith(("minihack/", "nethack/")):
            kw["observation_keys"] = (*kw["observation_keys"], "tty_chars")
        env = make(task, **kw)
        returns, successes = [], []
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            state = agent.initial_state(1)
            start = torch.ones(1, dtype=torch.bool)
            total, done = 0.0, False
            while not done:
                o = to_tensor({k: v[None] for k, v in obs.items()} if isinstance(obs, dict) else obs[None])
                if isinstance(o, dict):
                    o = {k: v for k, v in o.items() if k != "tty_chars"}
                dist, _, state = agent.step(task, o, state, start)
                start = torch.zeros(1, dtype=torch.bool)
                if greedy:
                    action = dist.probs.argmax(-1) if hasattr(dist, "probs") else dist.mean
                else:
                    action = dist.sample()
                obs, r, term, trunc, info = env.step(action[0].numpy())
                total += float(r)
                done = term or trunc
                if render and ep == 0:
                    print(render_text(env))
            returns.append(total)
            successes.append(episode_success(info, term, r))
        succ = [s for s in successes if not math.isnan(s)]
        out[task] = {"episodes": episodes, "return": float(np.mean(returns)),
                     "success": float(np.mean(succ)) if succ else float("nan")}
        env.close()
    return out
