"""High precision vs FP8 vs NVFP4 training of one tiny hybrid MoE on the same tokens.

Three runs of `chimera train-lm` that differ only in `precision`: same model, seed, data order
and schedule. FP8 and NVFP4 are exact quantise-dequantise emulations on the CPU
(chimera.precision). The high-precision reference runs in fp32 here, standing in for the BF16
of the papers: bf16 autocast on a CPU without bf16 matmul units runs ~30x slower, and `--bf16`
switches it on where that is affordable. Writes results/precision.json (final losses and the
relative gaps to the reference) and results/precision.png (the three loss curves).

    python experiments/precision.py               # ~15 min on 2 cores
    python experiments/precision.py --steps 60    # a quick check
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chimera.runs import read_metrics
from chimera.train.lm import DataConfig, OptimConfig, RunConfig, TrainLMConfig, train

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"fp32": {}, "fp8": dict(precision="fp8"), "nvfp4": dict(precision="nvfp4")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--model", default="small-moe")
    ap.add_argument("--bf16", action="store_true", help="run the reference under bf16 autocast (slow on CPU)")
    ap.add_argument("--out", default=str(ROOT / "results" / "precision.json"))
    a = ap.parse_args()
    runs = dict(RUNS)
    if a.bf16:
        runs = {"bf16": dict(dtype="bfloat16"), **{k: v for k, v in RUNS.items() if k != "fp32"}}
    curves, final = {}, {}
    for name, kw in runs.items():
        cfg = TrainLMConfig(model=a.model, steps=a.steps, optim=OptimConfig(lr=2e-3, warmup_steps=50),
                            data=DataConfig(tasks=("add", "sort"), mode="pretrain", seq_len=128, batch_size=16),
                            run=RunConfig(name=f"precision-{name}", out_dir=str(ROOT / "runs"), log_every=10,
                                          eval_every=a.steps, eval_samples=32, ckpt_every=a.steps), **kw)
        run = train(cfg)
        rows = [r for r in read_metrics(run.metrics_path) if "losses/train_loss" in r]
        curves[name] = [(r["step"], r["losses/train_loss"]) for r in rows]
        tail = [loss for _, loss in curves[name][-5:]]  # mean of the last 5 logged losses: less noise
        evals = [r for r in read_metrics(run.metrics_path) if "eval/loss" in r]
        final[name] = {"train_loss": sum(tail) / len(tail), "eval_loss": evals[-1]["eval/loss"],
                       "run": str(run.path)}
    ref = next(iter(runs))
    base = final[ref]
    for name in final:
        final[name][f"train_gap_vs_{ref}"] = final[name]["train_loss"] / base["train_loss"] - 1
        final[name][f"eval_gap_vs_{ref}"] = final[name]["eval_loss"] / base["eval_loss"] - 1
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": a.model, "steps": a.steps, "final": final, "curves": curves}, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{name} (final {final[name]['train_loss']:.3f})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title(f"{a.model}: the same tokens in {', '.join(runs)}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    print(json.dumps(final, indent=2))


if __name__ == "__main__":
    main()
