"""The NetHack Challenge evaluation of the random and symbolic agents, beside the challenge's figures.

Games of NetHackChallenge-v0 (random role, unseeded: the challenge refuses seeding) under its rules
(300 s per action, 30 min per game, cut at 50,000 steps below 1,000 points). The spread is shown over
independent batches, since the games cannot be replayed. Reference medians are those of the NeurIPS
2021 NetHack Challenge report (arXiv 2203.11889) as summarised in the project's FACTS.md: AutoAscend
(best symbolic) ~5,000, RAPH (best neural) ~1,700, the NLE IMPALA baseline ~280.

    python experiments/nethack.py                      # 512 games per agent, one worker
    python experiments/nethack.py --episodes 32 --workers 2
Writes results/nethack.json, results/nethack.md and results/nethack.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from chimera.nethack.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = {"AutoAscend (symbolic, 1st)": 5000, "RAPH (best neural)": 1700, "NLE IMPALA baseline": 280}


def batches(records: list[dict], n: int) -> list[float]:
    """Median score of each of n consecutive, independent batches of games."""
    parts = np.array_split(np.arange(len(records)), n)
    return [statistics.median(records[i]["score"] for i in p) for p in parts if len(p)]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    top = max(max(r["score"] for r in res["episodes"]) for res in results.values())
    bins = np.linspace(0, max(top, 5500), 45)
    for name, res in results.items():
        scores = [r["score"] for r in res["episodes"]]
        a.hist(scores, bins=bins, alpha=0.55, label=f"{name} (median {statistics.median(scores):g})")
        depths = [r["max_depth"] for r in res["episodes"]]
        b.hist(depths, bins=np.arange(0.5, max(depths) + 1.5), alpha=0.55, label=name)
    for (label, v), c in zip(REFERENCE.items(), ("k", "tab:red", "tab:purple")):
        a.axvline(v, color=c, ls="--", lw=1, label=f"{label}: median ~{v:,}")
    a.set(xlabel="in-game score", ylabel="games", title="NetHackChallenge-v0: score per game")
    b.set(xlabel="deepest level reached", ylabel="games", title="max depth per game")
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: dict, n_batches: int) -> str:
    lines = ["| agent | games | median score | mean score | q25 / q75 | batch medians | median max depth | "
             "CPU s / game |", "|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        s = res["summary"]
        bm = ", ".join(f"{m:g}" for m in batches(res["episodes"], n_batches))
        lines.append(f"| {name} (ours) | {s['games']} | {s['median_score']:g} | {s['mean_score']:.0f} | "
                     f"{s['quantiles']['q25']:.0f} / {s['quantiles']['q75']:.0f} | {bm} | "
                     f"{s['median_max_depth']:g} | {s['mean_cpu_seconds']:.2f} |")
    for label, v in REFERENCE.items():
        lines.append(f"| {label} (report) | 4,096 | ~{v:,} | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=512)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--agents", nargs="+", default=["random", "symbolic"])
    p.add_argument("--batches", type=int, default=4, help="independent batches whose medians show the spread")
    p.add_argument("--out", default=str(ROOT / "results" / "nethack"))
    a = p.parse_args(argv)
    results = {}
    for agent in a.agents:
        results[agent] = evaluate(agent, a.episodes, a.workers, seed=0,
                                  log=lambda s, end="\n": print(s, end=end, file=sys.stderr, flush=True))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(
        {"env": "nethack/NetHackChallenge", "reference_medians": REFERENCE,
         "agents": {k: {"summary": v["summary"], "batch_medians": batches(v["episodes"], a.batches),
                        "wall_seconds": v["wall_seconds"], "workers": a.workers, "episodes": v["episodes"]}
                    for k, v in results.items()}}, indent=1))
    plot(results, Path(f"{out}.png"))
    ends = "\n".join(f"- {k}: " + ", ".join(f"{e} {c}" for e, c in list(v["summary"]["ends"].items())[:5])
                     for k, v in results.items())
    Path(f"{out}.md").write_text(f"""# NetHack Challenge evaluation: random and symbolic agents

`python experiments/nethack.py --episodes {a.episodes} --workers {a.workers}`: games of NetHackChallenge-v0
(random role, unseeded, so not reproducible game by game; the spread is the medians of {a.batches}
independent batches) under the challenge's rules: 300 s per action, 30 min per game, a game still
below 1,000 points at 50,000 steps is cut. Reference rows are the challenge report's medians
(arXiv 2203.11889) as FACTS.md summarises them (approximate; their games were 4,096 per team).

{table(results, a.batches)}

How games ended (most common):
{ends}

![score and depth histograms](nethack.png)
""")
    for k, v in results.items():
        print(k, json.dumps({x: v["summary"][x] for x in ("games", "median_score", "mean_score",
                                                           "median_max_depth", "mean_cpu_seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
