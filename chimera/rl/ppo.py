"""Advantage estimation and the PPO-clip / ESPO objectives.

ESPO (early-stopping policy optimisation) optimises the unclipped surrogate ratio * advantage and
instead stops an iteration's epochs once the policy has drifted: mean |ratio - 1| over the batch
above ``delta`` (0.25 in public implementations).
"""

from __future__ import annotations

import numpy as np
import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over (T, n) rollouts.

    ``dones[t]`` marks that the episode ended at step t (terminated or truncated); a truncated
    step's reward must already include gamma * V(final observation), so no value leaks across
    the reset. Returns (advantages, returns)."""
    # a sequential scan over T of tiny (n,) rows: numpy's per-op cost is a fraction of torch's
    r, v, last_v = rewards.numpy(), values.numpy(), last_value.numpy()
    nonterminal = 1.0 - dones.numpy().astype(r.dtype)
    adv = np.zeros_like(r)
    last = np.zeros_like(last_v)
    for t in reversed(range(r.shape[0])):
        next_value = last_v if t == r.shape[0] - 1 else v[t + 1]
        delta = r[t] + gamma * next_value * nonterminal[t] - v[t]
        last = delta + gamma * lam * nonterminal[t] * last
        adv[t] = last
    adv_t = torch.from_numpy(adv)
    return adv_t, adv_t + values


def policy_loss(ratio: torch.Tensor, adv: torch.Tensor, algo: str, clip: float) -> torch.Tensor:
    """PPO: -E[min(r A, clip(r, 1 - eps, 1 + eps) A)]; ESPO: -E[r A] (no clipping)."""
    if algo == "espo":
        return -(ratio * adv).mean()
    if algo == "ppo":
        return -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
    raise ValueError(f"unknown algorithm {algo!r} (expected 'ppo' or 'espo')")


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip: float | None) -> torch.Tensor:
    """0.5 E[(V - R)^2], optionally the max with the clipped-value error (CleanRL's clip_vloss)."""
    err = (values - returns) ** 2
    if clip:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        err = torch.max(err, (clipped - returns) ** 2)
    return 0.5 * err.mean()


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - pred).var() / var)
