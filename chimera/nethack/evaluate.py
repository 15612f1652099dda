"""The NetHack Challenge's evaluation: games of NetHackChallenge-v0 under its rules, scored by median.

Rules as the challenge's evaluation wrapper applied them: at most 300 s per action, 30 min per game,
and a game still below 1,000 points at 50,000 steps is cut (its score as it stands counts). The
challenge environment refuses seeding, so its games are not reproducible; compare agents by the
spread over independent batches. ``nethack/NetHackScore`` takes seeds, for development.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from chimera.nethack.state import OBS_KEYS, Status, text

AGENTS = ("random", "symbolic")


@dataclass
class EvalArgs:
    """Play games of NetHack under the NetHack Challenge's rules and score them by median in-game score.
    NetHackChallenge-v0 cannot be seeded (each game is new); use --env nethack/NetHackScore with --seed
    for reproducible development runs."""

    agent: str = "symbolic"
    """random or symbolic."""
    episodes: int = 16
    """Games to play."""
    workers: int = 1
    """Processes playing games in parallel."""
    out: str = ""
    """Write the records and summary as JSON here (empty: print the summary only)."""
    env: str = "nethack/NetHackChallenge"
    """nethack/NetHackChallenge (the challenge, unseeded) or a seedable id such as nethack/NetHackScore."""
    seed: int = 0
    """First game's seed on a seedable env (game g gets seed + g); also seeds the agents' own choices."""


@dataclass(frozen=True)
class Rules:
    """The challenge's limits (defaults) on one game."""

    action_seconds: float = 300.0
    episode_seconds: float = 1800.0
    cut_steps: int = 50_000
    cut_below_score: int = 1000
    max_steps: int = 1_000_000  # NetHackChallenge's own limit


def make_env(env_id: str):
    """The game, with the full keyboard and the observation keys the agents read."""
    from nle import nethack as nh

    from chimera.envs import make

    kwargs = {"observation_keys": OBS_KEYS}
    if env_id != "nethack/NetHackChallenge":
        kwargs["actions"] = nh.ACTIONS
    return make(env_id, **kwargs)


def make_agent(name: str, actions, seed: int, **options):
    from chimera.nethack.agent import RandomAgent, SymbolicAgent

    if name == "random":
        return RandomAgent(actions, seed)
    if name == "symbolic":
        return SymbolicAgent(actions, seed, **options)
    raise ValueError(f"unknown agent {name!r}; choose one of {', '.join(AGENTS)}")


def play(env, agent, rules: Rules = Rules(), seed: int | None = None) -> dict:
    """One game to its end; the record the evaluation keeps."""
    t0, cpu0 = time.monotonic(), time.process_time()
    obs, _ = env.reset(seed=seed)
    agent.reset()
    steps, reason = 0, None
    start = Status.of(obs["blstats"])
    role = _role(text(obs["message"]))
    max_depth, status, last_msgs = start.depth, start, []
    while reason is None:
        a0 = time.monotonic()
        action = agent.act(obs)
        if time.monotonic() - a0 > rules.action_seconds:
            reason = f"action took over {rules.action_seconds:.0f} s"
            break
        obs, _, terminated, truncated, _ = env.step(action)
        steps += 1
        if obs["blstats"].any():  # the observation after death is blank: keep the last status
            status = Status.of(obs["blstats"])
        max_depth = max(max_depth, status.depth)
        msg = text(obs["message"])
        if msg:
            last_msgs = [*last_msgs, msg][-4:]
        if terminated:
            how = env.unwrapped.nethack.how_done()
            reason = getattr(how, "name", str(how)).lower()
        elif truncated:
            reason = "environment step limit or no in-game progress"
        elif steps >= rules.max_steps:
            reason = f"{rules.max_steps} steps"
        elif steps >= rules.cut_steps and status.score < rules.cut_below_score:
            reason = f"cut at {rules.cut_steps} steps below {rules.cut_below_score} points"
        elif time.monotonic() - t0 > rules.episode_seconds:
            reason = f"over {rules.episode_seconds:.0f} s"
        else:
            reason = agent.stop_reason()
    return {"score": status.score, "turns": status.turn, "steps": steps, "max_depth": max_depth,
            "xl": status.xl, "role": role, "end": reason, "death": " | ".join(last_msgs[-2:]),
            "seconds": time.monotonic() - t0, "cpu_seconds": time.process_time() - cpu0,
            "agent_stats": getattr(agent, "stats", {})}


def _role(welcome: str) -> str:
    """The character from the welcome message (e.g. 'lawful female human Samurai'), '' if not shown."""
    m = re.search(r"You are an? (.*?)\.", welcome)
    return m.group(1) if m else ""


def summary(records: list[dict]) -> dict:
    """Median, mean and quantiles of score; median max depth; games."""
    scores = [r["score"] for r in records]
    if not scores:
        return {"games": 0}
    q = np.quantile(scores, [0.1, 0.25, 0.5, 0.75, 0.9]).tolist()
    return {"games": len(scores), "median_score": statistics.median(scores), "mean_score": statistics.fmean(scores),
            "quantiles": dict(zip(("q10", "q25", "q50", "q75", "q90"), q)),
            "median_max_depth": statistics.median(r["max_depth"] for r in records),
            "mean_cpu_seconds": statistics.fmean(r["cpu_seconds"] for r in records),
            "ends": _count(r["end"] for r in records)}


def _count(items) -> dict:
    out: dict = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _worker(args: tuple) -> list[dict]:
    agent_name, env_id, games, seed0, rules, queue, options = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    env = make_env(env_id)
    agent = make_agent(agent_name, env.unwrapped.actions, seed0 + games[0], **options)
    seeded = env_id != "nethack/NetHackChallenge"
    for g in games:
        queue.put(play(env, agent, rules, seed=seed0 + g if seeded else None) | {"game": g})
    env.close()
    return []


def evaluate(agent: str, episodes: int, workers: int = 1, env_id: str = "nethack/NetHackChallenge",
             seed: int = 0, rules: Rules = Rules(), out: str | None = None, log=print,
             agent_options: dict | None = None) -> dict:
    """Play ``episodes`` games in ``workers`` processes; print progress; write and return the results.
    ``agent_options`` go to the agent's constructor (e.g. ``dive_margin`` for the symbolic agent)."""
    if agent not in AGENTS:
        raise ValueError(f"unknown agent {agent!r}; choose one of {', '.join(AGENTS)}")
    if episodes < 1 or workers < 1:
        raise ValueError(f"episodes ({episodes}) and workers ({workers}) must be at least 1")
    workers = min(workers, episodes)
    ctx = mp.get_context("spawn")
    queue = ctx.Manager().Queue()
    parts = [list(range(w, episodes, workers)) for w in range(workers)]
    t0, records = time.monotonic(), []
    with ctx.Pool(workers) as pool:
        result = pool.map_async(_worker, [(agent, env_id, p, seed, rules, queue, agent_options or {})
                                             for p in parts])
        while len(records) < episodes:
            try:
                records.append(queue.get(timeout=5))
            except Exception:
                if result.ready():
                    result.get()  # re-raises a worker's error
                    break
                continue
            dt = time.monotonic() - t0
            med = statistics.median(r["score"] for r in records)
            log(f"\r[{agent}] {len(records)}/{episodes} games  {len(records) / dt:.2f} games/s  "
                f"median score {med:g}  last {records[-1]['score']} ({records[-1]['end']})", end="")
        result.get()
    log("")
    records.sort(key=lambda r: r["game"])
    res = {"agent": agent, "agent_options": agent_options or {}, "env": env_id,
           "rules": asdict(rules), "seedable": env_id != "nethack/NetHackChallenge",
           "wall_seconds": time.monotonic() - t0, "episodes": records, "summary": summary(records)}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(out) + ".tmp")
        tmp.write_text(json.dumps(res, indent=1, default=_jsonable))
        tmp.replace(out)
    return res


def _jsonable(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


if __name__ == "__main__":  # python -m chimera.nethack.evaluate symbolic 2
    print(json.dumps(evaluate(sys.argv[1], int(sys.argv[2]))["summary"], indent=1))
