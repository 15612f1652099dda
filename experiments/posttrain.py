"""Post-training with multi-environment RL, at the size two shared CPU cores allow.

Per seed: a random tiny model is first taught the environments' formats by SFT on solver-made
demonstrations (``chimera.posttrain.sft``: reasoning traces, the scripted calculator user, the JSON
and CLRS answers); that SFT model is the start of every arm. Arms: GRPO, DAPO and ESPO post-training
(``chimera.posttrain.train``) on all environments mixed, and "SFT continued" for the same wall-clock
time as the mean RL arm (the compute baseline). Held-out pass rates (greedy, problems never trained on)
per environment before and after, the RL arms' reward curves and the rollout / trainer mismatch.

Budget control: the SFT demonstrations include a ``--thinking-off`` share without reasoning and a
``--thinking-cut`` share with the trace cut at random (``chimera.posttrain.sft``); the RL arms roll a
``--budget-prob`` share of their groups out under a sampled thinking budget (``budget.*``). Every model
(SFT, each RL arm, SFT continued) gets the accuracy-vs-budget curve (``chimera.posttrain.budget``: 0, 25%,
50%, 100% of each held-out problem's natural trace length) on the reasoning environments.

    python experiments/posttrain.py                       # the tiny default (see --help for sizes)
    python experiments/posttrain.py --seeds 1 --sft-steps 20 --rl-steps 2   # a smoke run
Writes results/posttrain.json, results/posttrain.md and results/posttrain.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import chimera.posttrain.train as pt
from chimera.models import HybridLM, get_config
from chimera.posttrain.budget import FRACTIONS, budget_curve
from chimera.posttrain.sft import sft
from chimera.tokenizer import ByteTokenizer

ROOT = Path(__file__).resolve().parents[1]
ENVS = ("reasoning/add", "clrs/insertion_sort", "json/sort", "tools/calculator")


def config(a, model: str, algo: str, seed: int, out: Path) -> pt.PostTrainConfig:
    extra = {"dapo": dict(eps_high=0.28, dynamic_sampling=True, overlong="soft", overlong_cache=8),
             "espo": dict(epochs=4, minibatches=2, espo_delta=0.25)}.get(algo, {})
    cfg = pt.PostTrainConfig(
        model=model, envs=tuple(a.envs), steps=a.rl_steps, prompts_per_step=a.prompts, samples_per_prompt=a.samples,
        rollout=pt.RolloutOptions(max_new_tokens=a.max_new_tokens, max_len=512),
        objective=pt.Objective(algo=algo, **extra), optim=pt.OptimOptions(lr=a.rl_lr),
        budget=pt.BudgetOptions(prob=a.budget_prob),
        run=pt.PostTrainRunConfig(name=f"posttrain-exp-{algo}-s{seed}", seed=seed, out_dir=str(out),
                                  eval_problems=a.eval_problems, ckpt_every=a.rl_steps, plots=False, threads=a.threads))
    cfg.validate()
    return cfg


def held_out(model, a, seed: int) -> dict[str, float]:
    cfg = config(a, "tiny", "grpo", seed, ROOT / "runs")
    pool = pt.EnvPool()
    got = pt.evaluate(model, ByteTokenizer(), cfg, pool)
    pool.close()
    return {e: got[f"eval/pass_rate/{e}"] for e in a.envs}


def curve(model, a) -> dict:
    """Accuracy against the thinking budget on the reasoning environments (empty when there are none)."""
    envs = [e for e in a.envs if e.startswith("reasoning/")]
    if not envs:
        return {}
    return budget_curve(model, ByteTokenizer(), envs, a.eval_problems, FRACTIONS, a.max_new_tokens, 512)


def write(a, seeds: list[dict]) -> list[str]:
    """Write the JSON, the Markdown table and the plot for the seeds done so far; return the table."""
    arms = ["sft", "sft_continued", *a.algos]
    mean = {arm: {e: sum(r[arm]["held_out"][e] for r in seeds) / len(seeds) for e in a.envs} for arm in arms}
    curve_envs = list(seeds[0]["sft"]["budget_curve"].get("envs", {}))
    budget = {arm: {e: [sum(r[arm]["budget_curve"]["envs"][e]["accuracy"][k] for r in seeds) / len(seeds)
                        for k in range(len(FRACTIONS))] for e in curve_envs} for arm in arms}
    natural = {arm: {e: sum(r[arm]["budget_curve"]["envs"][e]["natural_tokens"] for r in seeds) / len(seeds)
                     for e in curve_envs} for arm in arms}
    result = {"label": f"TINY run on 2 shared CPU cores: model {a.model}, {a.sft_steps} SFT steps (lr {a.sft_lr:g}, "
                       f"warmup {a.sft_warmup}, final lr x{a.sft_min_lr_ratio:g}, env weights "
                       f"{a.sft_env_weights or 'equal'}, thinking off {a.thinking_off:.0%}, cut "
                       f"{a.thinking_cut:.0%}), RL lr {a.rl_lr:g}, {a.rl_steps} RL steps of {a.prompts} "
                       f"prompts x {a.samples} samples ({a.budget_prob:.0%} of groups under a sampled budget), "
                       f"{a.eval_problems} held-out problems per environment, {len(seeds)} of {a.seeds} seed(s) done; "
                       f"far below the issue's goals' scale",
              "args": vars(a), "mean_held_out": mean, "budget_fractions": list(FRACTIONS),
              "mean_budget_accuracy": budget, "mean_natural_tokens": natural, "seeds": seeds}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Post-training (multi-environment RL)\n\n{result['label']}.\n",
             "Held-out pass rate (greedy), mean over seeds:\n",
             "| environment | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    lines += [f"| {e} | " + " | ".join(f"{mean[arm][e]:.3f}" for arm in arms) + " |" for e in a.envs]
    lines += ["", "Training reward per step (mean over environments, seed 1) and rollout/trainer mismatch "
              "(token_mult_prob_error, 1 = identical):", "", "| algo | reward per step | mismatch (max) |",
              "|---|---|---|"]
    lines += [f"| {algo} | {' '.join(f'{x:.2f}' for x in seeds[0][algo]['reward_curve'])} | "
              f"{max(seeds[0][algo]['mismatch']):.5f} |" for algo in a.algos]
    if curve_envs:
        lines += ["", "Held-out accuracy (greedy) against the thinking budget, as a share of each problem's natural "
                  "(unbudgeted greedy) trace length, mean over seeds; 0% closes the thinking at once. "
                  "'sft' is the budget-trained model before RL:", "",
                  "| environment | model | natural tokens | " + " | ".join(f"{f:.0%}" for f in FRACTIONS) + " |",
                  "|---|---|---|" + "---|" * len(FRACTIONS)]
        lines += [f"| {e} | {arm} | {natural[arm][e]:.1f} | " + " | ".join(f"{x:.3f}" for x in budget[arm][e]) + " |"
                  for e in curve_envs for arm in arms]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2 if curve_envs else 1, figsize=(11 if curve_envs else 6, 3.5), squeeze=False)
        ax = axes[0][0]
        for algo in a.algos:
            ax.plot(range(1, a.rl_steps + 1), seeds[0][algo]["reward_curve"], marker=".", label=algo)
        ax.set_xlabel("RL step")
        ax.set_ylabel("mean training reward")
        ax.set_title("post-training reward (tiny CPU run, seed 1)")
        ax.legend()
        if curve_envs:
            ax = axes[0][1]
            for arm in arms:
                ys = [sum(budget[arm][e][k] for e in curve_envs) / len(curve_envs) for k in range(len(FRACTIONS))]
                ax.plot([100 * f for f in FRACTIONS], ys, marker="o", label=arm)
            ax.set_xlabel("thinking budget (% of natural trace)")
            ax.set_ylabel("held-out accuracy")
            ax.set_title(f"accuracy vs thinking budget ({', '.join(curve_envs)})")
            ax.legend()
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=100)
    except ImportError:
        pass
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", nargs="+", default=list(ENVS))
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--sft-steps", type=int, default=200)
    ap.add_argument("--sft-batch", type=int, default=8)
    ap.add_argument("--sft-lr", type=float, default=3e-3)
    ap.add_argument("--sft-env-weights", type=float, nargs="+", default=None,
                    help="share of the demonstrations per environment, in --envs order (default: equal)")
    ap.add_argument("--sft-warmup", type=int, default=0, help="SFT warmup steps (then cosine decay)")
    ap.add_argument("--sft-min-lr-ratio", type=float, default=1.0,
                    help="SFT lr at the end as a share of --sft-lr (1: constant after the warmup); SFT continued "
                         "trains on at this final lr")
    ap.add_argument("--rl-steps", type=int, default=8)
    ap.add_argument("--rl-lr", type=float, default=1e-4)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--eval-problems", type=int, default=16)
    ap.add_argument("--algos", nargs="+", default=["grpo", "dapo", "espo"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--thinking-off", type=float, default=0.1, help="share of SFT demonstrations without reasoning")
    ap.add_argument("--thinking-cut", type=float, default=0.1, help="share of SFT demonstrations with a cut trace")
    ap.add_argument("--budget-prob", type=float, default=0.5, help="share of RL groups under a sampled budget")
    ap.add_argument("--out", default=str(ROOT / "results" / "posttrain.json"))
    a = ap.parse_args()
    weights = tuple(a.sft_env_weights or (1.0,) * len(a.envs))
    if len(weights) != len(a.envs):
        ap.error(f"--sft-env-weights has {len(weights)} values for {len(a.envs)} environments (--envs)")
    torch.set_num_threads(a.threads)
    tok, out_dir = ByteTokenizer(), ROOT / "runs" / "posttrain-exp"
    seeds: list[dict] = []
    for seed in range(1, a.seeds + 1):
        torch.manual_seed(seed)
        model = HybridLM(get_config(a.model))
        pool = pt.EnvPool()
        demo_envs = dict(zip(a.envs, pool.take(list(a.envs))))
        t = time.time()
        sft_losses = sft(model, demo_envs, weights, tok, a.sft_steps, a.sft_batch, a.sft_lr, 512, seed,
                         thinking_off=a.thinking_off, thinking_cut=a.thinking_cut, warmup_steps=a.sft_warmup,
                         min_lr_ratio=a.sft_min_lr_ratio)
        sft_time = time.time() - t
        sft_dir = out_dir / f"sft-s{seed}"
        model.save_pretrained(sft_dir)
        row = {"seed": seed, "sft": {"steps": a.sft_steps, "seconds": sft_time, "loss_first": sft_losses[0],
                                     "loss_last": sft_losses[-1], "held_out": held_out(model, a, seed),
                                     "budget_curve": curve(model, a)}}
        print(f"seed {seed} SFT: {row['sft']['held_out']}  budget curve "
              f"{row['sft']['budget_curve'].get('mean_accuracy')}  ({sft_time:.0f} s)")
        for algo in a.algos:
            t = time.time()
            run = pt.train(config(a, str(sft_dir), algo, seed, out_dir), log=lambda s: None)
            secs = time.time() - t
            metrics = run.metrics()
            evals = [m for m in metrics if any(k.startswith("eval/pass_rate/") for k in m)]
            steps = [m for m in metrics if "losses/grad_steps" in m]
            row[algo] = {"seconds": secs, "run": str(run.path.relative_to(ROOT)),
                         "held_out_before": {e: evals[0][f"eval/pass_rate/{e}"] for e in a.envs},
                         "held_out": {e: evals[-1][f"eval/pass_rate/{e}"] for e in a.envs},
                         "reward_curve": [sum(m.get(f"charts/reward/{e}", 0.0) for e in a.envs
                                              if f"charts/reward/{e}" in m)
                                          / max(1, sum(f"charts/reward/{e}" in m for e in a.envs)) for m in steps],
                         "mismatch": [m.get("mismatch/token_mult_prob_error", 1.0) for m in steps],
                         "grad_steps": [m["losses/grad_steps"] for m in steps],
                         "budget_curve": curve(HybridLM.from_pretrained(run.path / "model").eval(), a)}
            print(f"seed {seed} {algo}: {row[algo]['held_out']}  budget curve "
                  f"{row[algo]['budget_curve'].get('mean_accuracy')}  ({secs:.0f} s)")
        budget = sum(row[x]["seconds"] for x in a.algos) / len(a.algos)
        model = HybridLM.from_pretrained(sft_dir)
        t, done, chunk = time.time(), 0, 10
        while time.time() - t < budget:
            sft(model, demo_envs, weights, tok, chunk, a.sft_batch, a.sft_lr * a.sft_min_lr_ratio, 512, seed,
                log=lambda s: None, first_step=a.sft_steps + done, thinking_off=a.thinking_off,
                thinking_cut=a.thinking_cut)
            done += chunk
        row["sft_continued"] = {"extra_steps": done, "seconds": time.time() - t, "held_out": held_out(model, a, seed),
                                "budget_curve": curve(model, a)}
        print(f"seed {seed} SFT continued ({done} steps): {row['sft_continued']['held_out']}")
        pool.close()
        seeds.append(row)
        lines = write(a, seeds)  # after every seed, so a cut run keeps what it finished
    print("\n".join(lines))


if __name__ == "__main__":
    main()
