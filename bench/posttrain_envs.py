"""The environment side of post-train's rollout alone (no model): in-process vs Ray actors
(``--envs-backend ray``), for ``game/Room-5x5`` and ``tools/calculator``. Writes results/posttrain_envs.json.

For each backend: ``start`` is the seconds to build N instances and reset them once (NLE builds a game per
instance; actors build theirs side by side); ``turns_per_sec`` is environment turns per second over
``rounds`` rounds of reset + turns, every turn one ``call_all`` over the N environments (the rollout's
call), with seeded random directions for the game and a fixed wrong answer for the calculator. A third
case stands for a slow tool: the calculator with a wait of ``--slow-ms`` before each step (patched into
the instances, in this process or inside the actors), which actors overlap and one process cannot. Ray's
own start is not counted. The turns are the same on every backend (checked).

    python bench/posttrain_envs.py
    python bench/posttrain_envs.py --n 8 --rounds 2   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

from chimera.posttrain.envs import call_all
from chimera.posttrain.envs.game import ACTIONS
from chimera.posttrain.train import EnvPool

ROOT = Path(__file__).resolve().parents[1]


def _slow(env, delay: float) -> None:
    """Make ``env.step`` wait ``delay`` seconds first: a tool that waits on something (a sandbox, a service)."""
    step = env.step

    def slow_step(text):
        time.sleep(delay)
        return step(text)

    env.step = slow_step


def _slow_host(host, delay: float) -> None:
    for env in host.envs.values():
        _slow(env, delay)


def play(pool: EnvPool, env_id: str, n: int, rounds: int, delay: float = 0.0) -> dict:
    t0 = time.perf_counter()
    envs = pool.take([env_id] * n)
    call_all(envs, "reset", [(s, False) for s in range(n)])
    start = time.perf_counter() - t0
    if delay and pool.hosts is None:
        for env in envs:
            _slow(env, delay)
    elif delay:  # inside the actors, on the instances they host
        import ray

        ray.get([a.handle.__ray_call__.remote(_slow_host, delay) for a in pool.hosts.actors[env_id]])
    rng, turns, seen = random.Random(0), 0, []
    t0 = time.perf_counter()
    for r in range(rounds):
        call_all(envs, "reset", [(r * n + s, False) for s in range(n)])
        live = list(range(n))
        while live:
            texts = [(f"</think>{rng.choice(ACTIONS)}<eos>" if env_id.startswith("game/") else "</think>0<eos>",)
                     for _ in live]
            got = call_all([envs[i] for i in live], "step", texts)
            turns += len(live)
            seen += [(g.reward, g.done, g.info) for g in got]
            live = [i for i, g in zip(live, got) if not g.done]
    return {"start_s": start, "turns": turns, "turns_per_sec": turns / (time.perf_counter() - t0), "_seen": seen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="instances per environment id")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="Ray actors per environment id")
    ap.add_argument("--slow-ms", type=float, default=20.0, help="the slow tool's wait per step")
    ap.add_argument("--out", default=str(ROOT / "results" / "posttrain_envs.json"))
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from chimera.envs.ray_vector import connect
    from chimera.posttrain.envs.remote import EnvHosts

    cases = [("game/Room-5x5", 0.0), ("tools/calculator", 0.0), ("tools/calculator", args.slow_ms / 1000)]
    connect("", max(args.workers))  # Ray's start, not timed; logical CPUs (a sleeping tool needs no core)
    out: dict = {"n": args.n, "rounds": args.rounds, "cpus": os.cpu_count(), "slow_ms": args.slow_ms, "results": {}}
    for env_id, delay in cases:
        name = env_id + (f" +{args.slow_ms:g} ms per step" if delay else "")
        rows, ref = {}, None
        for backend in ["inprocess", *[f"ray/{w}" for w in args.workers]]:
            hosts = EnvHosts([env_id], int(backend.split("/")[1])) if backend != "inprocess" else None
            pool = EnvPool(hosts)
            try:
                got = play(pool, env_id, args.n, args.rounds, delay)
            finally:
                pool.close()
            seen = got.pop("_seen")
            if ref is None:
                ref = seen
            elif seen != ref:
                raise SystemExit(f"{name} on {backend} answered differently from in-process")
            rows[backend] = got
            print(f"{name:36s} {backend:10s} start {got['start_s']:6.2f} s  {got['turns_per_sec']:8.0f} turns/s",
                  flush=True)
        out["results"][name] = rows
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
