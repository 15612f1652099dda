"""Pretrain, then SFT, a tiny hybrid MoE on the synthetic reasoning tasks; report held-out accuracy.

Stage 1 pretrains on packed chat-formatted documents (loss on every token); stage 2 starts from
the stage-1 checkpoint and fine-tunes with the loss on the assistant turn only (reasoning trace
in <think>...</think>, then the answer). Accuracy is measured by greedy generation on held-out
problems (a hash split that training never sees), per task, after each stage.
Writes results/pretrain_sft.json.

    python experiments/pretrain_sft.py                              # ~15 min on 2 cores
    python experiments/pretrain_sft.py --pretrain-steps 50 --sft-steps 50
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chimera.runs import read_metrics
from chimera.train.lm import DataConfig, OptimConfig, RunConfig, TrainLMConfig, train

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("add", "sort", "search", "isort", "grid")


def final_eval(run) -> dict[str, float]:
    rows = [r for r in read_metrics(run.metrics_path) if "eval/loss" in r]
    return {k.removeprefix("eval/"): v for k, v in rows[-1].items() if k.startswith("eval/")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-moe")
    ap.add_argument("--pretrain-steps", type=int, default=1200)
    ap.add_argument("--sft-steps", type=int, default=800)
    ap.add_argument("--out", default=str(ROOT / "results" / "pretrain_sft.json"))
    a = ap.parse_args()
    run_kw = dict(out_dir=str(ROOT / "runs"), eval_samples=100, log_every=50)
    pre = train(TrainLMConfig(
        model=a.model, steps=a.pretrain_steps, optim=OptimConfig(lr=3e-3, warmup_steps=100),
        data=DataConfig(tasks=TASKS, mode="pretrain", seq_len=128, batch_size=24),
        run=RunConfig(name="pretrain", eval_every=a.pretrain_steps, ckpt_every=a.pretrain_steps, **run_kw)))
    sft = train(TrainLMConfig(
        model=str(pre.path / "model"), steps=a.sft_steps, optim=OptimConfig(lr=1e-3, warmup_steps=50),
        data=DataConfig(tasks=TASKS, mode="sft", seq_len=128, batch_size=32),
        run=RunConfig(name="sft", eval_every=a.sft_steps, ckpt_every=a.sft_steps, seed=1, **run_kw)))
    result = {"model": a.model, "tasks": TASKS, "pretrain_steps": a.pretrain_steps, "sft_steps": a.sft_steps,
              "after_pretrain": final_eval(pre), "after_sft": final_eval(sft),
              "runs": [str(pre.path), str(sft.path)]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
