"""Training CLRS learners: one algorithm, or several sharing one processor (the generalist).

Each step draws a batch per algorithm at a train size chosen from 4, 7, 11, 13, 16 (string
matchers: 5/4 of it, haystack + needle), sums the output and hint losses (no teacher forcing),
clips the gradient norm at 1.0 and takes an Adam step. Validation (n = 16) picks the best
checkpoint; the final table scores it out of distribution (n = 64) with the benchmark's scores.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from chimera.clrs.model import (
    EncodeProcessDecode,
    Feature,
    ModelConfig,
    Processor,
    categories,
    feature_loss,
    output_predictions,
    score,
    targets,
    to_feature,
)
from chimera.clrs.samplers import TRAIN_SIZES, Batch, Sampler, pred_as_input, randomize_pos, unknown_algorithm
from chimera.clrs.specs import SPECS, Type
from chimera.config import to_dict
from chimera.mtl.cost import StepMeter
from chimera.rl.multitask import METHODS, Method, aggregate
from chimera.runs import Run, RunSettings, plot_metrics, rng_state, seed_everything, set_rng_state
from chimera.train import distributed

MATCHERS = ("naive_string_matcher", "kmp_matcher")


@dataclass
class CLRSRunConfig(RunSettings):
    name: str = "clrs"
    seed: int = 42
    log_every: int = 50
    ckpt_every: int = 500
    threads: int = 0


@dataclass
class TrainCLRSConfig:
    """Train an encode-process-decode learner on CLRS algorithms (several: one shared processor)."""

    algorithms: tuple[str, ...] = ("insertion_sort",)
    """Official CLRS-30 names (chimera clrs list)."""
    processor: Literal["mpnn", "pgn", "triplet_gmpnn"] = "triplet_gmpnn"
    """The processor network shared by every algorithm."""
    hidden: int = 128
    """Width of the node, edge and graph features."""
    steps: int = 10_000
    """Optimizer steps."""
    batch_size: int = 32
    lr: float = 1e-3
    grad_clip: float = 1.0
    """Gradient clipping (the paper's dataset and training section): the global gradient norm is clipped to this."""
    random_pos: bool = True
    """Randomised position scalar (encoders and decoders) on training and validation batches (never on the test)."""
    static_hints_as_inputs: bool = True
    """Static hint elimination (dataset and training): a constant pred_h hint is given as the input pred."""
    encoder_init: str = "xavier_on_scalars"
    """Encoder initialisation (dataset and training): xavier_on_scalars or default."""
    hint_teacher_forcing: float = 0.0
    """Probability of feeding back a true hint instead of the predicted one (the paper removes teacher forcing)."""
    train_sizes: tuple[int, ...] = TRAIN_SIZES
    eval_every: int = 500
    """Steps between validation (n = 16); the best validation score's weights are kept."""
    keep_best: bool = True
    """Score the best-validation weights at the end (early stopping); False: the last step's weights."""
    weight_decay: float = 0.0
    """Adam's L2 term."""
    aggregator: Method = "sum"
    """How the algorithms' gradients on the shared processor combine (chimera.rl.multitask.METHODS; sum = unitary)."""
    test_size: int = 64
    val_samples: int = 32
    test_samples: int = 32
    """Validation / out-of-distribution test problems per algorithm (the benchmark multiplies both by up to 64
    for some algorithms, which costs more evaluation time than these CPUs allow by default)."""
    run: CLRSRunConfig = field(default_factory=CLRSRunConfig)

    def validate(self) -> None:
        unknown = [a for a in self.algorithms if a not in SPECS]
        if unknown:
            raise ValueError(unknown_algorithm(unknown[0]) if len(unknown) == 1 else
                             f"unknown CLRS algorithm(s) {unknown}; `chimera clrs list` prints the 30 names")
        if self.aggregator not in METHODS or self.aggregator == "mgda_ub":
            raise ValueError(f"aggregator {self.aggregator!r}: choose one of "
                             f"{', '.join(m for m in METHODS if m != 'mgda_ub')} (mgda_ub needs one shared "
                             "representation of the same inputs; each algorithm here has its own batch)")
        self.model().validate()

    def model(self) -> ModelConfig:
        return ModelConfig(processor=self.processor, hidden=self.hidden,
                           static_hints_as_inputs=self.static_hints_as_inputs, encoder_init=self.encoder_init,
                           hint_teacher_forcing=self.hint_teacher_forcing)


class Learner(nn.Module):
    """Per-algorithm encoders and decoders around one shared processor."""

    def __init__(self, algorithms: tuple[str, ...], cfg: ModelConfig, cats: dict[str, dict[str, int]]):
        super().__init__()
        self.nets = nn.ModuleDict({a: EncodeProcessDecode(a, cfg, cats[a]) for a in algorithms})
        shared = Processor(cfg.processor, cfg.hidden, cfg.triplet_features, cfg.layer_norm)
        for net in self.nets.values():
            net.processor = shared


def features(batch: Batch) -> tuple[dict[str, Feature], dict[str, Feature], dict[str, torch.Tensor]]:
    """Inputs, the first hint step (ground truth), and every hint step's data as targets."""
    n = batch.num_nodes
    inputs = {k: to_feature(f.location, f.type_, f.data.astype(int) if f.type_ == Type.POINTER else f.data, n)
              for k, f in batch.inputs.items()}
    hint_steps = {k: to_feature(f.location, f.type_, f.data.astype(int) if f.type_ == Type.POINTER else f.data, n)
                  for k, f in batch.hints.items()}  # (T, B, ...)
    first = {k: Feature(f.location, f.type_, f.data[0]) for k, f in hint_steps.items()}
    return inputs, first, {k: f.data for k, f in hint_steps.items()}


def prepared(net: EncodeProcessDecode, batch: Batch) -> Batch:
    """The batch as ``net`` reads it (static hints moved to the inputs when its spec does)."""
    return pred_as_input(batch) if net.cfg.static_hints_as_inputs else batch


def batch_loss(net: EncodeProcessDecode, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    batch = prepared(net, batch)
    inputs, first, hint_truth = features(batch)
    outputs, hint_preds = net(batch, inputs, first, hint_truth)
    tgt = targets(batch)
    out_loss = sum(feature_loss(net.dspec[k][2], outputs[k], f.data) for k, f in tgt.items())
    lengths = torch.as_tensor(batch.lengths)
    hint_loss = torch.zeros(())
    for i, preds in enumerate(hint_preds):  # step i predicts hint i + 1
        valid = (lengths > i + 1).float()
        if valid.sum() == 0:
            continue
        for k, logits in preds.items():
            hint_loss = hint_loss + feature_loss(net.dspec[k][2], logits, hint_truth[k][i + 1], valid)
    hint_loss = hint_loss / max(1, len(hint_preds))
    return out_loss + hint_loss, outputs


@torch.no_grad()
def evaluate(net: EncodeProcessDecode, batches: list[Batch]) -> dict[str, float]:
    net.eval()
    totals: dict[str, list[float]] = {}
    for b in batches:
        b = prepared(net, b)
        inputs, first, _ = features(b)
        outputs, _ = net(b, inputs, first)
        for k, v in score(b, output_predictions(net.dspec, outputs)).items():
            totals.setdefault(k, []).append(v * b.size)
    n = sum(b.size for b in batches)
    net.train()
    return {k: float(np.sum(v) / n) for k, v in totals.items()}


def train_step(model: Learner, opt: torch.optim.Optimizer, batches: dict[str, Batch], aggregator: str = "sum",
               grad_clip: float = 1.0, world: distributed.World | None = None) -> dict[str, float]:
    """One step on a batch per algorithm: the shared processor's gradients combined by ``aggregator``, the
    encoders' and decoders' from the summed loss; returns each algorithm's loss."""
    opt.zero_grad(set_to_none=True)
    if aggregator == "sum":  # one backward per algorithm; under torchrun ``batches`` is this process's share
        losses = {}
        for a, b in batches.items():
            loss, _ = batch_loss(model.nets[a], b)
            loss.backward()
            losses[a] = float(loss.detach())
        if world is not None and world.distributed:
            distributed.sum_gradients(model, world)
            names = list(model.nets)  # every algorithm, in the config's order
            every = torch.tensor([losses.get(a, 0.0) for a in names], dtype=torch.float64)
            losses = dict(zip(names, distributed.all_reduce(every, world).tolist()))
    else:  # the specialised aggregators need every algorithm's gradient on the shared processor, in one process
        task_losses = {a: batch_loss(model.nets[a], b)[0] for a, b in batches.items()}
        aggregate(task_losses, list(next(iter(model.nets.values())).processor.parameters()), aggregator)
        losses = {a: float(v.detach()) for a, v in task_losses.items()}
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return losses


def _train_sampler(algorithm: str, size: int, seed: int) -> Sampler:
    n = size * 5 // 4 if algorithm in MATCHERS else size
    return Sampler(algorithm, n, -1, seed, length_needle=-8 if algorithm in MATCHERS else None)


def train_clrs(cfg: TrainCLRSConfig, resume: str | None = None, log=print) -> tuple[Run | None, dict]:
    """Train (or resume); under torchrun each process trains its share of the algorithms and the gradients
    are summed, so the step is one process's step (rank 0 alone logs, evaluates and writes; others return
    (None, {}))."""
    cfg.validate()
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    with distributed.session("ddp") as world:
        if world.distributed and cfg.aggregator != "sum":
            raise ValueError(f"clrs train under torchrun splits the algorithms among the processes, which sums their "
                             f"gradients; --aggregator {cfg.aggregator} needs every task gradient in one process: "
                             "run it without torchrun")
        if world.size > len(cfg.algorithms):
            raise ValueError(f"clrs train splits the algorithms among the processes: {world.size} processes need "
                             f"at least {world.size} algorithms (got {len(cfg.algorithms)})")
        return _train_clrs(cfg, resume, log if world.main else (lambda *a, **k: None), world)


def _train_clrs(cfg: TrainCLRSConfig, resume: str | None, log, world: distributed.World) -> tuple[Run | None, dict]:
    seed_everything(cfg.run.seed)
    rng = np.random.default_rng(cfg.run.seed)
    train = {a: [_train_sampler(a, s, cfg.run.seed + 17 * i + j)
                 for j, s in enumerate(cfg.train_sizes if a not in MATCHERS else (max(cfg.train_sizes),))]
             for i, a in enumerate(cfg.algorithms)}  # the matchers train at the largest size only, as the benchmark
    val = {a: Sampler(a, 16 * 5 // 4 if a in MATCHERS else 16, cfg.val_samples, 2 + i)
           for i, a in enumerate(cfg.algorithms)}
    val_batches = {a: [randomize_pos(b, np.random.default_rng(k)) if cfg.random_pos else b
                       for k, b in enumerate(val[a].all(32))] for a in cfg.algorithms}  # fixed across evaluations
    # one position stream per algorithm, so that a process drawing only its share sees the same positions
    pos_rng = {a: np.random.default_rng([cfg.run.seed + 1, i]) for i, a in enumerate(cfg.algorithms)}

    def draw(a: str, sampler: Sampler) -> Batch:
        batch = sampler.batch(cfg.batch_size)
        return randomize_pos(batch, pos_rng[a]) if cfg.random_pos else batch
    cats = {a: categories(a, val[a].batch(2)) for a in cfg.algorithms}
    model = Learner(cfg.algorithms, cfg.model(), cats)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    meter = StepMeter()
    run, ckpt = distributed.start_run(world, cfg.run, to_dict(cfg), resume)
    start, best = 0, {"score": -1.0, "step": 0, "state": None}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        start, best = ckpt["step"], ckpt["best"]
        log(f"resumed {resume} at step {start}")
    log(f"run {run.path if run else ''}: {cfg.processor} on {', '.join(cfg.algorithms)}, {cfg.steps} steps"
        + (f", {world.size} processes" if world.distributed else ""))
    mine = cfg.algorithms[world.rank::world.size]
    t0, seen = time.time(), 0
    for step in range(start + 1, cfg.steps + 1):
        # every rank draws every algorithm's batch index, to stay in step
        samplers = {a: train[a][int(rng.integers(len(train[a])))] for a in cfg.algorithms}
        with meter.step():
            losses = train_step(model, opt, {a: draw(a, samplers[a]) for a in mine}, cfg.aggregator, cfg.grad_clip,
                                world)
        seen += 1
        if not world.main:
            continue
        if step % cfg.run.log_every == 0 or step == cfg.steps:
            rate = seen / (time.time() - t0)
            run.log(step, {"train/loss": float(np.mean(list(losses.values()))), "charts/steps_per_s": rate,
                           **{f"train/loss/{a}": v for a, v in losses.items()}})
            log(f"step {step:>6}/{cfg.steps}  loss {np.mean(list(losses.values())):.3f}  {rate:.2f} steps/s  "
                f"eta {(cfg.steps - step) / max(rate, 1e-9) / 60:.1f} min")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            scores = {a: evaluate(model.nets[a], val_batches[a])["score"] for a in cfg.algorithms}
            mean = float(np.mean(list(scores.values())))
            run.log(step, {"val/score": mean, **{f"val/score/{a}": v for a, v in scores.items()}})
            if mean > best["score"]:
                best = {"score": mean, "step": step, "state": {k: v.clone() for k, v in model.state_dict().items()}}
            log(f"step {step:>6}  val score {mean:.3f}  (best {best['score']:.3f} at {best['step']})")
        if step % cfg.run.ckpt_every == 0 or step == cfg.steps:
            run.checkpoints.save(step, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                        "rng": rng_state(), "best": best, "config": to_dict(cfg)})
    if not world.main:
        return None, {}
    if cfg.keep_best and best["state"] is not None:
        model.load_state_dict(best["state"])
    results = {}
    for i, a in enumerate(cfg.algorithms):
        test = Sampler(a, cfg.test_size, cfg.test_samples, 3 + i)
        results[a] = {"val": evaluate(model.nets[a], val_batches[a])["score"],
                      "test": evaluate(model.nets[a], test.all(4))["score"]}
    (run.path / "results.json").write_text(json.dumps({"best_step": best["step"], "scores": results,
                                                           "cost": meter.summary() if meter.count else None}, indent=1))
    log(f"\n{'algorithm':<32}{'val (n=16)':>12}{'test (n=' + str(cfg.test_size) + ')':>14}")
    for a, r in results.items():
        log(f"{a:<32}{r['val']:>12.3f}{r['test']:>14.3f}")
    if cfg.run.plots:
        plots = plot_metrics(run.metrics_path, run.path / "plots")
        log(f"plots: {', '.join(str(p) for p in plots)}")
    run.close()
    return run, results
