"""One supervised multi-task loop: per-task cross-entropy on a shared trunk, combined by any aggregator.

The setting follows the unitary-scalarization study's Multi-MNIST runs (Kurin et al. 2022, after
Sener & Koltun 2018): Adam at lr 0.01, the learning rate times 0.95 after every epoch, batches of
256. Its regularisers are options: ``weight_decay`` (Adam's L2 term), ``dropout`` (in the trunk and
the heads) and ``early_stopping`` (the reported test metrics are those at the epoch of best average
validation accuracy, ties going to the later epoch, as the reference code selects its model;
without it, those after the last epoch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from chimera.mtl.cost import StepMeter
from chimera.mtl.digits import MultiDigit
from chimera.mtl.lenet import MultiLeNet
from chimera.rl.multitask import METHODS, aggregate


@dataclass(frozen=True)
class MTLConfig:
    """A Multi-digit run."""

    method: str = "sum"
    """multi-task aggregator (chimera.rl.multitask.METHODS); ``sum`` is unitary scalarization"""
    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.01
    lr_decay: float = 0.95
    """learning rate multiplied by this after every epoch"""
    weight_decay: float = 0.0
    dropout: float = 0.0
    early_stopping: bool = False
    """report test metrics at the best-validation epoch instead of the last"""
    seed: int = 0
    cagrad_c: float = 0.5

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"MTLConfig.method={self.method!r}: choose one of {', '.join(METHODS)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"MTLConfig.{name}={getattr(self, name)}: must be at least 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"MTLConfig.dropout={self.dropout}: must be in [0, 1)")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"MTLConfig lr={self.lr}, weight_decay={self.weight_decay}: "
                             "need lr > 0 and weight_decay >= 0")


@torch.no_grad()
def accuracy(model: MultiLeNet, split: MultiDigit, batch: int = 1024) -> dict[str, float]:
    """Per-task accuracy on a split (eval mode)."""
    model.eval()
    correct = {t: 0 for t in split.labels}
    for i in range(0, len(split), batch):
        _, logits = model(split.images[i:i + batch])
        for t, y in split.labels.items():
            correct[t] += int((logits[t].argmax(1) == y[i:i + batch]).sum())
    return {t: c / len(split) for t, c in correct.items()}


def train_step(model: MultiLeNet, opt: torch.optim.Optimizer, split: MultiDigit, idx: torch.Tensor, method: str, *,
               cagrad_c: float = 0.5, generator: torch.Generator | None = None) -> dict[str, float]:
    """One optimizer step on the examples ``idx``: per-task cross-entropy, the trunk's gradients combined by
    ``method`` (MGDA-UB reads the trunk's output), the heads' from the summed loss."""
    z, logits = model(split.images[idx])
    losses = {t: F.cross_entropy(logits[t], y[idx]) for t, y in split.labels.items()}
    opt.zero_grad(set_to_none=True)
    info = aggregate(losses, list(model.trunk.parameters()), method, shared_repr=[z], cagrad_c=cagrad_c,
                     generator=generator)
    opt.step()
    return info


def train_multidigit(cfg: MTLConfig, data: dict[str, MultiDigit],
                     log: Callable[[str], None] = lambda _: None) -> dict:
    """Train one run; returns the config, per-task test accuracy (and its mean), the chosen epoch,
    the validation curve and the step cost (seconds per step, peak bytes per step)."""
    cfg.validate()
    for name in ("train", "val", "test"):
        if name not in data:
            raise ValueError(f"train_multidigit: data has no {name!r} split (has {sorted(data)}); build it with "
                             "chimera.mtl.build_multidigit")
    torch.manual_seed(cfg.seed)
    train, tasks = data["train"], tuple(data["train"].labels)
    model = MultiLeNet(train.images.size(-1), tasks, dropout=cfg.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, cfg.lr_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    meter = StepMeter()
    curve, best, chosen = [], -1.0, None
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        for idx in perm.split(cfg.batch_size):
            with meter.step():
                train_step(model, opt, train, idx, cfg.method, cagrad_c=cfg.cagrad_c, generator=gen)
        sched.step()
        val = accuracy(model, data["val"])
        val_mean = float(np.mean(list(val.values())))
        curve.append(val_mean)
        if (val_mean >= best) if cfg.early_stopping else (epoch == cfg.epochs - 1):
            best, chosen = max(best, val_mean), (epoch, accuracy(model, data["test"]))
        log(f"  epoch {epoch + 1}/{cfg.epochs} val {val_mean:.4f}")
    epoch, test = chosen
    return {"config": asdict(cfg), "test": test, "test_mean": float(np.mean(list(test.values()))),
            "epoch": epoch, "val_curve": curve, **meter.summary()}
