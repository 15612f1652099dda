"""RMSNorm and the gated, grouped RMSNorm of the Mamba-2 mixer (computed in fp32)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / rms(x) * weight, in fp32, cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.size(-1),), self.weight.float(), self.eps).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """norm(x * silu(z)) with one RMS per group of ``group_size`` channels (Mamba-2, norm after gate)."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size = group_size
        self.eps = eps

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float() * F.silu(z.float())
        *lead, d = xf.shape
        xg = F.rms_norm(xf.view(*lead, d // self.group_size, self.group_size), (self.group_size,), eps=self.eps)
        return self.weight * xg.view(*lead, d).to(dtype)
