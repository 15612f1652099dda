"""Running observation normalisation and return-based reward scaling; both live in checkpoints."""

from __future__ import annotations

import torch
from torch import nn


class RunningNorm(nn.Module):
    """Running mean / variance over the last dimension's features (Chan et al. parallel update)."""

    def __init__(self, dim: int, clip: float = 10.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))
        self.clip = clip

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        n = x.shape[0]
        mean, var = x.mean(0), x.var(0, unbiased=False)
        delta, total = mean - self.mean, self.count + n
        m2 = self.var * self.count + var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var.copy_(m2 / total)
        self.count.fill_(float(total))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x.double() - self.mean) / (self.var + 1e-8).sqrt()
        return y.clamp(-self.clip, self.clip).to(torch.float32)


class RewardScaler(nn.Module):
    """Divides rewards by the running standard deviation of the discounted return (as gymnasium's
    NormalizeReward and SB3's VecNormalize do); one per task, n envs each."""

    def __init__(self, n: int, gamma: float):
        super().__init__()
        self.gamma = gamma
        self.stats = RunningNorm(1)
        self.register_buffer("ret", torch.zeros(n, dtype=torch.float64))

    @torch.no_grad()
    def forward(self, reward: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        self.ret = self.ret * self.gamma + reward.double()
        self.stats.update(self.ret[:, None])
        self.ret[done] = 0.0
        return (reward.double() / (self.stats.var[0] + 1e-8).sqrt()).float()
