"""The non-gated squared-ReLU MLP of Nemotron-H: down(relu(up(x))^2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chimera.models.config import HybridConfig


def relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__()
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    @classmethod
    def from_config(cls, cfg: HybridConfig) -> MLP:
        """The ``-`` layer of a pattern."""
        return cls(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)

    def new_state(self, batch: int, capacity: int, device: torch.device, dtype: torch.dtype) -> None:
        """No inference state."""
        return None

    def forward(self, x: torch.Tensor, state: None = None, reset: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.down_proj(relu2(self.up_proj(x)))

    def step(self, x: torch.Tensor, state: None, ctx) -> torch.Tensor:
        return self.forward(x)
