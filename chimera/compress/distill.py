"""Logit distillation (Minitron): the student learns the teacher's next-token distribution.

``LogitKL`` is an objective for the train-lm loop (``chimera.train.lm.train(..., objective=...)``), so
distillation shares its data, schedule, held-out evaluation, checkpoints and exact resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
import tyro

from chimera.data.batching import IGNORE
from chimera.models import HybridLM
from chimera.models.config import SIZES, HybridConfig
from chimera.models.hybrid import LMOutput
from chimera.train.lm import RunConfig, TrainLMConfig


def kl_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0,
            top_k: int = 0) -> torch.Tensor:
    """T^2 * mean over masked positions of KL(teacher || student) at temperature T; logits (b, l, V), mask (b, l).
    With ``top_k``, the teacher keeps its k most likely tokens (renormalised over them) and the student's
    full-vocabulary log-probabilities are read at those tokens."""
    T = temperature
    log_q = F.log_softmax(student.float() / T, dim=-1)  # (b, l, V)
    t = teacher.float() / T
    if top_k:
        t, idx = t.topk(top_k, dim=-1)  # (b, l, k)
        log_q = log_q.gather(-1, idx)
    log_p = F.log_softmax(t, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (b, l)
    m = mask.to(kl.dtype)
    return T * T * (kl * m).sum() / m.sum().clamp(min=1)


class LogitKL:
    """Distillation objective: KL from a frozen teacher's logits on the same batch, on target positions."""

    name = "kl"

    def __init__(self, teacher: HybridLM, temperature: float = 1.0, top_k: int = 0):
        if temperature <= 0:
            raise ValueError(f"--temperature={temperature} must be positive")
        if top_k < 0 or top_k > teacher.config.vocab_size:
            raise ValueError(f"--top-k={top_k} must be in 0..{teacher.config.vocab_size} (0: every token)")
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.top_k = temperature, top_k

    def __call__(self, x: torch.Tensor, y: torch.Tensor, out: LMOutput) -> torch.Tensor:
        with torch.no_grad():
            teacher = self.teacher(x).logits
        return kl_loss(out.logits, teacher, y != IGNORE, self.temperature, self.top_k)


@dataclass
class DistillConfig(TrainLMConfig):
    """Distil a teacher checkpoint into a student (a pruned checkpoint, or a named size from scratch) by
    logit KL on the train-lm loop: same data, schedule, held-out evaluation, checkpoints and resume."""

    model: Annotated[str, tyro.conf.arg(name="student")] = ""
    """The student: a checkpoint directory (e.g. from chimera prune) or a named size (trained from scratch)."""
    teacher: str = ""
    """The teacher's checkpoint directory (HF NemotronH); frozen."""
    temperature: float = 1.0
    """Softmax temperature of both distributions; the loss is scaled by T^2."""
    top_k: int = 0
    """Distil only the teacher's k most likely tokens per position (renormalised); 0: the full distribution."""
    run: RunConfig = field(default_factory=lambda: RunConfig(name="distill"))

    def validate(self) -> None:
        if not self.model:
            raise ValueError("--student is required (a checkpoint directory or a named size)")
        if not (Path(self.teacher) / "config.json").exists():
            raise ValueError(f"--teacher={self.teacher!r} is not a checkpoint directory with config.json")
        super().validate()


def distill(cfg: DistillConfig, resume: str | None = None, log=print):
    """Run (or resume) distillation; returns the run directory handle."""
    from chimera.train.lm import train

    teacher = HybridLM.from_pretrained(cfg.teacher, dtype=torch.float32)
    student_vocab = (SIZES[cfg.model]() if cfg.model in SIZES else
                     HybridConfig.load(Path(cfg.model) / "config.json")).vocab_size
    if student_vocab != teacher.config.vocab_size:
        raise ValueError(f"student {cfg.model!r} has vocab_size={student_vocab} but teacher {cfg.teacher!r} has "
                         f"{teacher.config.vocab_size}; distillation needs one vocabulary")
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    objective = LogitKL(teacher, cfg.temperature, cfg.top_k)
    log(f"distilling {cfg.teacher} into {cfg.model} (temperature {cfg.temperature}, "
        f"{'top-' + str(cfg.top_k) if cfg.top_k else 'full'} teacher logits)")
    return train(cfg, resume=resume, log=log, objective=objective)
