"""The GRPO family and ESPO for the LM, in one loss with options.

Shapes: B sequences (G groups of n samples of one prompt, group-major), T token positions.
``logp`` (B, T) is the trainer's log-probability of each sampled token (with grad), ``old_logp``
(B, T) the same under the parameters the rollout was scored with (no grad), ``rollout_logp``
(B, T) what the inference engine reported when it sampled; ``mask`` (B, T) is 1 on the tokens the
model sampled and 0 on prompt, environment turns and padding; ``adv`` (B,) one advantage per
sequence.

- ``grpo``: group-normalised advantages, token ratio clipped to [1 - eps_low, 1 + eps_high], each
  sequence's token mean, then the mean over sequences.
- ``dr_grpo``: advantages without std normalisation, token sum divided by a constant
  (B x ``max_tokens``) so neither a sequence's length nor its group's spread rescales it.
- ``dapo``: clip-higher (eps_high > eps_low), token-level mean over the batch; dynamic sampling
  (``keep_groups``) and overlong shaping (``overlong_penalty``) act on the rewards.
- ``gspo``: one ratio per sequence, exp(mean over its tokens of logp - old_logp), clipped (and one
  importance weight per sequence, the geometric mean of its tokens').
- ``espo``: the unclipped surrogate ratio * A, token mean; the loop stops an iteration's epochs once
  mean |ratio - 1| exceeds ``espo_delta`` (``stop_epochs``, checked after every gradient step).

The rollout-vs-trainer mismatch (``old_logp`` vs ``rollout_logp``) is corrected per token by an
importance weight exp(old_logp - rollout_logp): truncated at ``is_cap`` (``tis``), or tokens
outside [1 / is_cap, is_cap] masked out (``mis``, masked importance sampling). The optional KL
to a reference model is k1 (logp - ref) or k3 (exp(ref - logp) - (ref - logp) - 1), off by default.

Data-parallel, each rank holds some rows of the batch and passes ``total`` (the sum, or max, of a tensor
over the ranks): every normaliser (tokens, sequences, rows) and every diagnostic is then the whole batch's,
and each rank's loss is its rows' share of the one-process loss, so the ranks' gradients sum to its gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

ALGOS = ("grpo", "dr_grpo", "dapo", "gspo", "espo")

Total = Callable[..., torch.Tensor]
"""(t, op="sum" | "max") -> t summed (or maxed) over the ranks that share a batch (t itself in one process)."""


def _here(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """One process: the batch is all here."""
    return t


@dataclass
class LossConfig:
    """The policy loss: which objective, its clip range, normalisation, KL and mismatch correction."""

    algo: Literal["grpo", "dr_grpo", "dapo", "gspo", "espo"] = "grpo"
    eps_low: float = 0.2
    """Ratio clip below 1 - eps_low (GSPO's paper: 3e-4 with its sequence-level ratio)."""
    eps_high: float = 0.2
    """Ratio clip above 1 + eps_high (DAPO's clip-higher: 0.28; GSPO's paper: 4e-4)."""
    scale_rewards: bool = True
    """Divide group-centred rewards by the group's std (never for dr_grpo)."""
    max_tokens: int = 0
    """dr_grpo's constant per-sequence normaliser (0: the batch's padded length)."""
    espo_delta: float = 0.25
    """ESPO: stop the step's epochs once mean |ratio - 1| passes this."""
    kl_beta: float = 0.0
    """KL to the starting model (0: off; otherwise a frozen copy scores every batch)."""
    kl_estimator: Literal["k1", "k3"] = "k3"
    is_correction: Literal["none", "tis", "mis"] = "tis"
    """Rollout-vs-trainer importance weights: truncated at is_cap (tis), or tokens outside [1/cap, cap] out (mis)."""
    is_cap: float = 2.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"loss.algo={self.algo!r}; expected one of {', '.join(ALGOS)}")
        if not (0 <= self.eps_low < 1 and self.eps_high >= 0):
            raise ValueError(f"clip range eps_low={self.eps_low}, eps_high={self.eps_high}: need 0 <= eps_low < 1 "
                             f"and eps_high >= 0")
        if self.is_cap <= 1:
            raise ValueError(f"loss.is_cap={self.is_cap} must exceed 1")

    @property
    def scales_rewards(self) -> bool:
        """Whether group-centred rewards are divided by the group's std (never for dr_grpo)."""
        return self.scale_rewards and self.algo != "dr_grpo"


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """(G, n) rewards -> (G, n) advantages: centred on the group mean, divided by the group std if ``scale``."""
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps)
    return adv


def keep_groups(rewards: torch.Tensor) -> torch.Tensor:
    """DAPO's dynamic sampling: (G,) True for the groups whose rewards are not all equal."""
    return (rewards.max(dim=1).values - rewards.min(dim=1).values) > 0


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache: int) -> torch.Tensor:
    """DAPO's soft overlong punishment: 0 up to max_len - cache tokens, then linearly down to -1 at max_len."""
    if not 0 < cache <= max_len:
        raise ValueError(f"overlong cache={cache} must be in (0, max_len={max_len}]")
    over = (lengths.float() - (max_len - cache)) / cache
    return -over.clamp(0.0, 1.0)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, total: Total = _here) -> torch.Tensor:
    """The mean of x over the batch's masked tokens (a statistic: no grad through ``total``)."""
    return total((x * mask).sum()) / total(mask.sum()).clamp(min=1)


def _token_mean(x: torch.Tensor, mask: torch.Tensor, total: Total = _here) -> torch.Tensor:
    """These rows' share of the mean of x over the batch's masked tokens (the whole mean in one process)."""
    return (x * mask).sum() / total(mask.sum()).clamp(min=1)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor,
                cfg: LossConfig, rollout_logp: torch.Tensor | None = None,
                ref_logp: torch.Tensor | None = None, total: Total = _here) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective (see the module doc) and its diagnostics: clip fraction, mean |ratio - 1|,
    approximate KL to the old policy, the rollout mismatch, the importance weights and the KL (the whole
    batch's, with ``total`` over the ranks that hold its rows)."""
    mask = mask.to(logp.dtype)
    A = adv.to(logp.dtype)[:, None]  # (B, 1)
    delta = logp - old_logp  # (B, T)
    if rollout_logp is not None and cfg.is_correction != "none":
        w = (old_logp - rollout_logp).exp().detach()  # (B, T)
        if cfg.is_correction == "tis":
            w = w.clamp(max=cfg.is_cap)
        else:
            keep = ((w <= cfg.is_cap) & (w >= 1 / cfg.is_cap)).to(mask.dtype)
            mask, w = mask * keep, torch.ones_like(w)
    else:
        w = torch.ones_like(logp)
    if cfg.algo == "gspo":
        seq_delta = (delta * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B,)
        ratio_seq = seq_delta.exp()[:, None]  # (B, 1)
        clipped = ratio_seq.clamp(1 - cfg.eps_low, 1 + cfg.eps_high)
        w_seq = ((w.log() * mask).sum(1) / mask.sum(1).clamp(min=1)).exp()  # (B,) the IS weights' geometric mean
        per_seq = -torch.min(ratio_seq * A, clipped * A)[:, 0] * w_seq  # (B,)
        has = (mask.sum(1) > 0).to(per_seq.dtype)
        loss = (per_seq * has).sum() / total(has.sum()).clamp(min=1)
        ratio = ratio_seq.expand_as(logp)
        clip_frac = _masked_mean(((ratio_seq - clipped).abs() > 0).to(logp.dtype).expand_as(logp), mask, total)
    else:
        ratio = delta.exp()  # (B, T)
        if cfg.algo == "espo":
            per_tok = -ratio * A * w
            clip_frac = torch.zeros(())
        else:
            clipped = ratio.clamp(1 - cfg.eps_low, 1 + cfg.eps_high)
            per_tok = -torch.min(ratio * A, clipped * A) * w
            clip_frac = _masked_mean(((ratio - clipped).abs() > 0).to(logp.dtype), mask, total)
        loss = aggregate(per_tok, mask, cfg, total)
    metrics = {}
    kl = torch.zeros(())
    if cfg.kl_beta > 0:
        if ref_logp is None:
            raise ValueError("loss.kl_beta > 0 needs ref_logp (the reference model's log-probabilities)")
        d = ref_logp - logp
        kl_tok = -d if cfg.kl_estimator == "k1" else d.exp() - d - 1
        kl = aggregate(kl_tok, mask, cfg, total)
        loss = loss + cfg.kl_beta * kl
    with torch.no_grad():
        metrics["losses/clipfrac"] = float(clip_frac)
        metrics["losses/ratio_dev"] = float(_masked_mean((ratio - 1).abs(), mask, total))
        metrics["losses/approx_kl"] = float(_masked_mean((ratio - 1) - delta, mask, total))
        metrics["losses/kl_ref"] = float(total(kl.detach()))
        metrics.update(mismatch_metrics(old_logp, rollout_logp, mask, total) if rollout_logp is not None else {})
        metrics["losses/is_weight_mean"] = float(_masked_mean(w, mask, total))
    return loss, metrics


def aggregate(per_tok: torch.Tensor, mask: torch.Tensor, cfg: LossConfig, total: Total = _here) -> torch.Tensor:
    """Reduce (B, T) per-token losses to a scalar as ``cfg.algo`` prescribes (these rows' share of the
    batch's, with ``total``: the normaliser counts the whole batch's sequences or tokens)."""
    if cfg.algo == "grpo":
        has = (mask.sum(1) > 0).to(per_tok.dtype)
        per_seq = (per_tok * mask).sum(1) / mask.sum(1).clamp(min=1)
        return (per_seq * has).sum() / total(has.sum()).clamp(min=1)
    if cfg.algo == "dr_grpo":
        rows = total(torch.tensor(float(per_tok.size(0))))
        return (per_tok * mask).sum() / (rows * (cfg.max_tokens or per_tok.size(1)))
    return _token_mean(per_tok, mask, total)  # dapo, espo (and gspo's KL): token-level mean


def mismatch_metrics(trainer_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor,
                     total: Total = _here) -> dict[str, float]:
    """How far the engine's sampling distribution is from the trainer's on the sampled tokens:
    mean exp(|diff|) (NeMo-RL's token_mult_prob_error, 1 when they agree), its max, and the k3 KL."""
    d = (trainer_logp - rollout_logp).detach()
    m = mask.to(d.dtype)
    k3 = d.exp() - 1 - d  # KL(engine || trainer) from the engine's samples: r = p / q, k3 = r - 1 - log r
    worst = torch.cat([(d.abs() * m).flatten(), d.new_zeros(1)]).max()  # 0 where nothing is masked in
    return {"mismatch/token_mult_prob_error": float(_masked_mean(d.abs().exp(), m, total)),
            "mismatch/max_abs_logp_diff": float(total(worst, "max")),
            "mismatch/kl_k3": float(_masked_mean(k3, m, total))}


def stop_epochs(cfg: LossConfig, ratio_dev: float) -> bool:
    """ESPO's rule: whether the policy has drifted past ``espo_delta`` (never for the clipped objectives)."""
    return cfg.algo == "espo" and ratio_dev > cfg.espo_delta
