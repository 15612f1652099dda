"""Play episodes with a trained agent (step by step, recurrent state carried) and report results."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from chimera.envs import make
from chimera.envs.vector import episode_success
from chimera.rl.train import clip_action, env_kwargs, load_agent, to_tensor


def render_text(env, obs, action) -> str:
    """The NetHack screen as text (tty_chars), the env's own ansi rendering, or else (CartPole, MuJoCo)
    the observation vector and the action, which is what such an agent sees and does."""
    last = getattr(env.unwrapped, "last_observation", None)
    keys = getattr(env.unwrapped, "_observation_keys", None)
    if last is not None and keys and "tty_chars" in keys:
        chars = last[keys.index("tty_chars")]
        return "\n".join(bytes(row).decode("latin-1").rstrip() for row in chars)
    if env.render_mode == "ansi":
        return env.render()
    vec = np.array2string(np.asarray(obs, dtype=float).ravel(), precision=3, suppress_small=True, max_line_width=100)
    act = np.array2string(np.asarray(action, dtype=float).ravel(), precision=3, suppress_small=True)
    return f"  obs {vec}\n  action {act}"


def can_record(task: str) -> bool:
    """Environments with an image rendering (gymnasium's rgb_array): classic control and MuJoCo."""
    return task.startswith(("gym/", "mujoco/"))


def save_gif(frames: list[np.ndarray], path: Path, fps: float) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


@torch.no_grad()
def evaluate_agent(run_dir: str | Path, episodes: int, seed: int, greedy: bool = False,
                   render: bool = False, record: str | Path | None = None,
                   max_frames: int = 400) -> dict[str, dict[str, float]]:
    """Mean return and success over ``episodes`` seeded episodes per environment of the run.

    ``render``: every step of the first episode is printed under a line naming the environment.
    ``record``: a folder; the first episode of every environment with an image rendering (gym, MuJoCo:
    headless, MuJoCo's EGL backend unless MUJOCO_GL says otherwise) is saved there as ``<env>.gif``;
    an environment without one (NetHack / MiniHack) is named on stderr.
    """
    if record:
        os.environ.setdefault("MUJOCO_GL", "egl")  # read when mujoco is first imported
    agent, cfg = load_agent(run_dir)
    out = {}
    for task in cfg.tasks:
        kw = env_kwargs(task, cfg)
        if render and task.startswith(("minihack/", "nethack/")):
            kw["observation_keys"] = (*kw["observation_keys"], "tty_chars")
        filming = bool(record) and can_record(task)
        if record and not filming:
            print(f"--record: {task} has no image rendering; nothing recorded for it (--render prints its screen "
                  "as text)", file=sys.stderr)
        if filming:
            kw["render_mode"] = "rgb_array"
        env = make(task, **kw)
        frames: list[np.ndarray] = []
        returns, successes = [], []
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            state = agent.initial_state(1)
            start = torch.ones(1, dtype=torch.bool)
            total, done, t = 0.0, False, 0
            while not done:
                o = to_tensor({k: v[None] for k, v in obs.items()} if isinstance(obs, dict) else obs[None])
                if isinstance(o, dict):
                    o = {k: v for k, v in o.items() if k != "tty_chars"}
                dist, _, state = agent.step(task, o, state, start)
                start = torch.zeros(1, dtype=torch.bool)
                if greedy:
                    action = dist.mode
                else:
                    action = dist.sample()
                act = clip_action(action[0].numpy(), env.action_space)
                obs, r, term, trunc, info = env.step(act)
                if filming and ep == 0 and len(frames) < max_frames:
                    frames.append(env.render())
                total += float(r)
                done, t = term or trunc, t + 1
                if render and ep == 0:
                    print(f"== {task}  episode 1  step {t}  reward {float(r):+.2f}  return {total:.2f}"
                          + ("  (episode over)" if done else ""))
                    print(render_text(env, obs, act))
            returns.append(total)
            successes.append(episode_success(info, term, r))
        succ = [s for s in successes if not math.isnan(s)]
        out[task] = {"episodes": episodes, "return": float(np.mean(returns)),
                     "success": float(np.mean(succ)) if succ else float("nan")}
        if frames:
            fps = env.metadata.get("render_fps", 30)
            out[task]["recording"] = str(save_gif(frames, Path(record) / f"{task.replace('/', '_')}.gif", fps))
        env.close()
    return out
