"""Scale-out throughput: train-lm in 1 and 2 processes (torchrun, DDP and FSDP2 on gloo), post-train in 1 and
2 processes (rollout tokens/s and steps/s at the same global batch), train-rl with the in-process, subprocess
and Ray vector backends at the same env count, and those vector envs alone (random actions, no learner).
Writes results/scaling.json.

Each configuration is the real command (`python -m chimera ...`, `python -m torch.distributed.run ...`) in
its own process; steps/s come from the run's metrics.jsonl timestamps (train-lm: optimizer steps after the
first, which includes start-up; post-train: the logged charts/rollout_tokens_per_sec of every step after the
first, sampled tokens of all ranks over rank 0's rollout time including the gather, and steps/s from the
timestamps; train-rl: the logged charts/SPS of every iteration after the first).
Process start-up, Ray's start and the final evaluation are not counted.

    python bench/scaling.py
    python bench/scaling.py --lm-steps 10 --rl-steps 2048   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], out: Path) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.time()
    proc = subprocess.run([*cmd, "--run.out-dir", str(out)], env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    print(f"  {time.time() - t0:5.1f} s  {' '.join(cmd[2:6])} ...", flush=True)
    (run,) = [p for p in out.iterdir() if (p / "config.json").exists()]
    return run


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def lm_steps_per_s(nproc: int, parallel: str, args, tmp: Path) -> dict:
    flags = ["train-lm", "--model", args.model, "--steps", str(args.lm_steps), "--data.batch-size",
             str(args.batch_size), "--data.grad-accum", str(args.grad_accum), "--data.seq-len", "96",
             "--run.log-every", "1", "--run.eval-every", str(10 * args.lm_steps), "--run.eval-samples", "2",
             "--run.ckpt-every", str(10 * args.lm_steps), "--run.no-plots", "--run.threads", "1",
             "--parallel", parallel]
    launcher = ([sys.executable, "-m", "chimera"] if nproc == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                 "-m", "chimera"])
    rows = [r for r in _rows(_run([*launcher, *flags], tmp)) if "losses/train_loss" in r]
    dt = rows[-1]["time"] - rows[0]["time"]
    return {"processes": nproc, "parallel": parallel if nproc > 1 else "none",
            "steps_per_s": (len(rows) - 1) / dt, "final_loss": rows[-1]["losses/train_loss"]}


def posttrain_rates(nproc: int, args, tmp: Path) -> dict:
    """post-train from a random model: every turn runs to max_new_tokens, so each step samples the same
    number of tokens whatever the world size."""
    flags = ["post-train", "--model", args.model, "--envs", "reasoning/add", "json/record", "--steps",
             str(args.pt_steps), "--prompts-per-step", str(args.pt_prompts), "--samples-per-prompt", "4",
             "--rollout.max-new-tokens", "40", "--rollout.max-len", "400", "--run.eval-problems", "1",
             "--run.ckpt-every", str(10 * args.pt_steps), "--run.no-plots", "--run.threads", "1"]
    launcher = ([sys.executable, "-m", "chimera"] if nproc == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                 "-m", "chimera"])
    rows = [r for r in _rows(_run([*launcher, *flags], tmp)) if "charts/rollout_tokens_per_sec" in r]
    dt = rows[-1]["time"] - rows[0]["time"]
    return {"processes": nproc, "rollout_tokens_per_s": statistics.median(r["charts/rollout_tokens_per_sec"]
                                                                           for r in rows[1:]),
            "steps_per_s": (len(rows) - 1) / dt}


def rl_steps_per_s(vector: str, args, tmp: Path) -> dict:
    cmd = [sys.executable, "-m", "chimera", "train-rl", "--tasks", args.rl_task, "--num-envs", str(args.num_envs),
           "--total-steps", str(args.rl_steps), "--ppo.num-steps", "64", "--vector", vector, "--workers",
           str(args.workers), "--run.no-plots", "--run.log-every", "1"]
    sps = [r["charts/SPS"] for r in _rows(_run(cmd, tmp)) if "charts/SPS" in r][1:]
    return {"vector": vector, "workers": args.workers if vector != "inprocess" else 0,
            "env_steps_per_s": statistics.median(sps), "iterations_timed": len(sps)}


def vector_steps_per_s(vector: str, args) -> dict:
    """The vector env alone, random actions: what the backend costs without the learner."""
    import numpy as np

    from chimera.envs import make, make_vector

    venv = make_vector(lambda: make(args.rl_task), args.num_envs, 0, vector, args.workers, log=print)
    rng = np.random.default_rng(0)
    for _ in range(20):  # warm up (Ray's first calls)
        venv.step(rng.integers(venv.action_space.n, size=venv.n))
    t0 = time.perf_counter()
    for _ in range(args.vector_steps):
        venv.step(rng.integers(venv.action_space.n, size=venv.n))
    dt = time.perf_counter() - t0
    venv.close()
    return {"vector": vector, "env_steps_per_s": args.vector_steps * args.num_envs / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-moe")
    ap.add_argument("--lm-steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch")
    ap.add_argument("--grad-accum", type=int, default=2, help="micro-batches per step (a multiple of 2)")
    ap.add_argument("--pt-steps", type=int, default=6)
    ap.add_argument("--pt-prompts", type=int, default=8, help="post-train prompt groups per step (4 samples each)")
    ap.add_argument("--rl-task", default="minihack/Room-5x5")
    ap.add_argument("--num-envs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rl-steps", type=int, default=8 * 64 * 6)
    ap.add_argument("--vector-steps", type=int, default=500, help="vector steps timed without the learner")
    ap.add_argument("--out", default=str(ROOT / "results" / "scaling.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("train-lm", flush=True)
        lm = [lm_steps_per_s(n, p, args, Path(tempfile.mkdtemp(dir=tmp)))
              for n, p in ((1, "ddp"), (2, "ddp"), (2, "fsdp"))]
        print("post-train", flush=True)
        pt = [posttrain_rates(n, args, Path(tempfile.mkdtemp(dir=tmp))) for n in (1, 2)]
        print("train-rl", flush=True)
        rl = [rl_steps_per_s(v, args, Path(tempfile.mkdtemp(dir=tmp))) for v in ("inprocess", "subprocess", "ray")]
    print("vector envs alone", flush=True)
    vec = [vector_steps_per_s(v, args) for v in ("inprocess", "subprocess", "ray")]
    base_lm, base_rl = lm[0]["steps_per_s"], rl[0]["env_steps_per_s"]
    for r in lm:
        r["speedup"] = r["steps_per_s"] / base_lm
        r["efficiency"] = r["speedup"] / r["processes"]
    for r in pt:
        r["rollout_speedup"] = r["rollout_tokens_per_s"] / pt[0]["rollout_tokens_per_s"]
        r["steps_speedup"] = r["steps_per_s"] / pt[0]["steps_per_s"]
    for r in rl:
        r["vs_inprocess"] = r["env_steps_per_s"] / base_rl
    for r in vec:
        r["vs_inprocess"] = r["env_steps_per_s"] / vec[0]["env_steps_per_s"]
    result = {
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
        "train_lm": {"model": args.model, "global_batch": args.batch_size * args.grad_accum,
                     "micro_batch": args.batch_size, "steps": args.lm_steps, "backend": "gloo (CPU)", "runs": lm},
        "post_train": {"model": args.model, "envs": ["reasoning/add", "json/record"], "prompts_per_step":
                       args.pt_prompts, "samples_per_prompt": 4, "max_new_tokens": 40, "steps": args.pt_steps,
                       "backend": "gloo (CPU)", "runs": pt},
        "train_rl": {"task": args.rl_task, "num_envs": args.num_envs, "total_steps": args.rl_steps, "runs": rl},
        "vector_only": {"task": args.rl_task, "num_envs": args.num_envs, "workers": args.workers,
                        "steps": args.vector_steps, "runs": vec},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in lm:
        print(f"train-lm {r['processes']} proc {r['parallel']:<5} {r['steps_per_s']:6.2f} steps/s  "
              f"x{r['speedup']:.2f} (efficiency {r['efficiency']:.2f})")
    for r in pt:
        print(f"post-train {r['processes']} proc {r['rollout_tokens_per_s']:8.0f} rollout tok/s  "
              f"x{r['rollout_speedup']:.2f}  {r['steps_per_s']:5.2f} steps/s  x{r['steps_speedup']:.2f}")
    for r in rl:
        print(f"train-rl {r['vector']:<10} {r['env_steps_per_s']:8.0f} env steps/s  x{r['vs_inprocess']:.2f}")
    for r in vec:
        print(f"vector   {r['vector']:<10} {r['env_steps_per_s']:8.0f} env steps/s  x{r['vs_inprocess']:.2f} "
              f"(random actions, no learner)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
