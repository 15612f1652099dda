"""Language-model training: pretraining or SFT of a hybrid model on synthetic reasoning tasks.

One straight loop: schedule, evaluate / checkpoint, accumulate, clip, step, MoE bias update, log.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from chimera.config import to_dict
from chimera.data.batching import IGNORE, TaskBatcher, parse_answer, prompt_tokens
from chimera.inference import SamplingConfig, generate
from chimera.models import HybridLM, get_config
from chimera.models.config import SIZES
from chimera.models.hybrid import LMOutput
from chimera.runs import Run, RunSettings, plot_metrics, rng_state, seed_everything, set_rng_state
from chimera.train import distributed


@dataclass
class OptimConfig:
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak (cosine decay)."""
    warmup_steps: int = 50
    weight_decay: float = 0.1
    """AdamW decay on matrices; biases, norms, A_log, D and dt_bias never decay."""
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""


@dataclass
class DataConfig:
    tasks: tuple[str, ...] = ("add", "sort")
    """Synthetic tasks to mix (see chimera.data.synthetic.TASKS)."""
    mode: Literal["sft", "pretrain"] = "sft"
    """sft: loss on the assistant turn only; pretrain: packed sequences, loss on every token."""
    thinking: bool = True
    """Train with the reasoning trace inside <think>...</think> before the answer."""
    thinking_off: float = 0.0
    """Fraction of examples with thinking off (an empty think segment, then the answer), as Nemotron's
    reasoning-off data: the model then answers `chimera generate --no-thinking` too."""
    thinking_cut: float = 0.0
    """Fraction of examples whose trace is cut at a random point and closed with </think> before the answer
    (budget-control data: the model learns to answer when a thinking budget closes the trace early)."""
    seq_len: int = 96
    batch_size: int = 32
    grad_accum: int = 1


@dataclass
class RunConfig(RunSettings):
    name: str = "lm"
    eval_every: int = 200
    eval_samples: int = 64
    """Held-out problems answered by greedy generation at each evaluation."""


@dataclass
class TrainLMConfig:
    """Train a hybrid Mamba/attention/MoE language model on synthetic tasks with reasoning traces."""

    model: str = "tiny-moe"
    """A named size (chimera models) or an HF NemotronH checkpoint directory to start from."""
    steps: int = 1000
    """Optimizer steps."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """bfloat16 runs the forward under autocast; weights and optimizer stay fp32."""
    precision: Literal["none", "fp8", "nvfp4"] = "none"
    """Low-precision recipe for the backbone's GEMMs (chimera.precision; emulated on CPU)."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun (WORLD_SIZE > 1): DDP (replicated weights) or FSDP2 (weights, gradients and optimizer
    state sharded per layer). The global batch stays batch_size x grad_accum; one process ignores this."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        if self.model not in SIZES and not (Path(self.model) / "config.json").exists():
            raise ValueError(f"model={self.model!r} is neither a named size ({', '.join(SIZES)}) "
                             f"nor a checkpoint directory with config.json")
        if self.steps <= 0:
            raise ValueError(f"steps={self.steps} must be positive")
        for name in ("seq_len", "batch_size", "grad_accum"):
            if getattr(self.data, name) <= 0:
                raise ValueError(f"data.{name}={getattr(self.data, name)} must be positive")
        if not self.data.tasks:
            raise ValueError("data.tasks is empty; pick from add, sort")


Objective = Callable[[torch.Tensor, torch.Tensor, LMOutput], torch.Tensor]
"""A training loss in place of next-token cross-entropy: (inputs (b, T), targets (b, T), the model's
output) -> scalar; its ``name`` labels the held-out metric (e.g. chimera.compress.distill.LogitKL)."""


def mtp_loss(mtp_logits: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Mean over depths of the cross-entropy of depth k (b, T-k, V) against targets[:, k:]
    (targets[t] is token t+1, so depth k at position t predicts targets[t + k])."""
    losses = [F.cross_entropy(lg.flatten(0, 1), targets[:, k:].flatten(), ignore_index=IGNORE)
              for k, lg in enumerate(mtp_logits, start=1)]
    return torch.stack(losses).mean()


def build_model(spec: str) -> HybridLM:
    if spec in SIZES:
        return HybridLM(get_config(spec))
    return HybridLM.from_pretrained(spec, dtype=torch.float32).train()


def lr_lambda(cfg: TrainLMConfig):
    o = cfg.optim

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


@torch.no_grad()
def evaluate(model: HybridLM, batcher: TaskBatcher, n: int, max_new_tokens: int = 80,
             objective: Objective | None = None) -> dict[str, float]:
    """Held-out accuracy per task by greedy generation (``eval/accuracy/<task>``; also with thinking off,
    ``eval/accuracy_no_thinking/<task>``, when the data mixes thinking-off examples in), the held-out loss
    (and the objective's)."""
    was_training = model.training
    model.eval()
    tok = batcher.tok
    items = batcher.held_out(n)
    modes = {"accuracy": batcher.thinking} | ({"accuracy_no_thinking": False} if batcher.thinking_off else {})
    metrics = {}
    for label, thinking in modes.items():
        prompts = [prompt_tokens(tok, ex.prompt, thinking) for _, ex in items]
        outs = generate(model, prompts, SamplingConfig(max_new_tokens=max_new_tokens, stop_tokens=(tok.eos_id,)))
        correct: dict[str, list[bool]] = {}
        for (name, ex), out in zip(items, outs):
            task = next(t for t in batcher.tasks if t.name == name)
            correct.setdefault(name, []).append(task.verify(ex.prompt, parse_answer(tok.decode(out))))
        metrics |= {f"eval/{label}/{k}": sum(v) / len(v) for k, v in correct.items()}
    x, y = batcher.batch(step=-1)  # a fixed batch from its own stream for the eval loss
    out = model(x)
    loss = F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
    model.train(was_training)
    metrics["eval/loss"] = loss.item()
    if objective is not None:
        metrics[f"eval/{objective.name}"] = objective(x, y, out).item()
    return metrics


def train(cfg: TrainLMConfig, resume: str | None = None, log=print,
          objective: Objective | None = None) -> Run | None:
    """Run (or resume) training; returns the run directory handle (None on ranks other than 0 under
    torchrun). ``objective`` replaces the next-token cross-entropy as the loss (the MTP and MoE auxiliary
    terms stay)."""
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    with distributed.session(cfg.parallel) as world:
        return _train(cfg, resume, log if world.main else _silent, objective, world)


def _silent(*args, **kwargs) -> None:
    """The log of ranks other than 0."""


def _train(cfg: TrainLMConfig, resume: str | None, log, objective: Objective | None,
           world: distributed.World) -> Run | None:
    micros = distributed.micro_steps(cfg.data.grad_accum, world, cfg.data.batch_size)
    seed_everything(cfg.run.seed)
    model = build_model(cfg.model).train()
    if cfg.precision != "none":
        from chimera.precision import FP8Recipe, NVFP4Recipe, convert

        convert(model, FP8Recipe() if cfg.precision == "fp8" else NVFP4Recipe())
    gathered = distributed.Gatherer(model, world)
    trained = distributed.parallelize(model, world, lambda m: list(m.backbone.layers))
    opt = torch.optim.AdamW(model.param_groups(cfg.optim.weight_decay), lr=cfg.optim.lr,
                            betas=(cfg.optim.beta1, cfg.optim.beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    batcher = TaskBatcher(cfg.data.tasks, cfg.data.seq_len, cfg.data.batch_size, cfg.run.seed,
                          cfg.data.mode, cfg.data.thinking, cfg.data.thinking_off, cfg.data.thinking_cut)
    run, ckpt = distributed.start_run(world, cfg.run, to_dict(cfg), resume)
    start = 0
    if ckpt is not None:
        distributed.load_full_state_dict(model, ckpt["model"])
        distributed.load_full_optimizer_state(opt, ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        start = ckpt["step"]
        log(f"resumed {resume} at step {start}")
    elif resume:
        log(f"no loadable checkpoint in {resume}; starting from step 0")
    if resume and world.main:
        run.truncate_metrics(start)
    distributed.decorrelate_rng(world, cfg.run.seed, start)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"run {run.path if run else ''}: model {cfg.model} ({n_params / 1e6:.2f}M params, pattern "
        f"{model.config.pattern}), {cfg.steps} steps, {cfg.dtype}"
        + (f" with {cfg.precision} GEMMs" if cfg.precision != "none" else "")
        + (f", {world.size} processes ({world.parallel})" if world.distributed else ""))

    def checkpoint(step: int) -> None:
        state = {"model": distributed.full_state_dict(model), "optimizer": distributed.full_optimizer_state(opt)}
        if world.main:
            run.checkpoints.save(step, {**state, "scheduler": sched.state_dict(), "rng": rng_state(),
                                        "config": to_dict(cfg)})

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
    t0, tokens, t_start = time.time(), 0, time.time()
    for step in range(start, cfg.steps):
        loss_sum = mtp_sum = 0.0
        for micro in micros:
            x, y = batcher.batch(step, micro)
            with distributed.grad_sync(trained, world, sync=micro == micros[-1]):
                with autocast:
                    out = trained(x, return_mtp=True)
                if objective is None:
                    loss = F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
                else:
                    loss = objective(x, y, out)
                total = loss if out.aux_loss is None else loss + out.aux_loss
                if out.mtp_logits:
                    mtp = mtp_loss(out.mtp_logits, y)
                    total = total + model.config.mtp_loss_scale * mtp
                    mtp_sum += mtp.item() / len(micros)
                (total / len(micros)).backward()
            loss_sum += loss.item() / len(micros)
            tokens += int((y != IGNORE).sum())
        grad_norm = distributed.clip_grad_norm(model, cfg.optim.grad_clip or float("inf"))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        # each rank counted its own micro-batches' routing; the bias update needs the global batch's
        distributed.all_reduce_many([moe.expert_load for moe in model.moe_layers()], world)
        model.update_moe_bias()
        done = step + 1
        if done % cfg.run.log_every == 0 or done == cfg.steps:
            sums = distributed.all_reduce(torch.tensor([loss_sum, mtp_sum, tokens], dtype=torch.float64), world)
            loss_mean, mtp_mean = (sums[:2] / world.size).tolist()
            dt = time.time() - t0
            rate = float(sums[2]) / max(dt, 1e-9)
            eta = (cfg.steps - done) * (time.time() - t_start) / max(1, done - start)
            row = {"losses/train_loss": loss_mean, "losses/grad_norm": grad_norm,
                   "charts/learning_rate": sched.get_last_lr()[0], "charts/tokens_per_sec": rate}
            if model.mtp is not None:
                row["losses/mtp_loss"] = mtp_mean
            if world.main:
                run.log(done, row)
            log(f"step {done:>6}/{cfg.steps}  loss {loss_mean:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{rate:,.0f} tok/s  eta {eta / 60:.1f} min")
            t0, tokens = time.time(), 0
        if done % cfg.run.eval_every == 0 or done == cfg.steps:
            full = gathered(trained)
            if world.main:
                metrics = evaluate(full, batcher, cfg.run.eval_samples, objective=objective)
                run.log(done, metrics)
                log("eval  " + "  ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in metrics.items()))
        if done % cfg.run.ckpt_every == 0 or done == cfg.steps:
            checkpoint(done)
    full = gathered(trained)
    if not world.main:
        return None
    full.save_pretrained(run.path / "model")
    plots = plot_metrics(run.metrics_path, run.path / "plots") if cfg.run.plots else []
    log(f"model saved to {run.path / 'model'}" + (f"; plots: {', '.join(str(p) for p in plots)}" if plots else ""))
    run.close()
    return run
