"""One layer of the hybrid stack: x + mixer(norm(x)), for each layer kind of the pattern.

Every mixer has the same methods (``new_state``, ``forward`` over a sequence, ``step`` over a
few tokens per row), so nothing above this file branches on the kind of a layer.
"""

from __future__ import annotations

import torch
from torch import nn

from chimera.models.attention import Attention
from chimera.models.config import HybridConfig
from chimera.models.mamba2 import Mamba2Mixer
from chimera.models.mlp import MLP
from chimera.models.moe import MoE
from chimera.models.norm import RMSNorm

MIXERS = {"M": Mamba2Mixer, "*": Attention, "-": MLP.from_config, "E": MoE}
"""Pattern character -> the mixer it builds from a config."""


class Block(nn.Module):
    """x + mixer(norm(x)) for one layer of kind M, *, - or E."""

    def __init__(self, cfg: HybridConfig, kind: str):
        super().__init__()
        self.kind = kind
        self.norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.mixer = MIXERS[kind](cfg)

    def new_state(self, batch: int, capacity: int, device: torch.device, dtype: torch.dtype):
        """The mixer's inference state for ``batch`` rows (None for MLP and MoE layers)."""
        return self.mixer.new_state(batch, capacity, device, dtype)

    def forward(self, x: torch.Tensor, state=None, reset: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x (b, l, d) -> (b, l, d) over a sequence (see each mixer's ``forward``); ``lengths`` (b,): rows
        right-padded past them, the padding leaving every state as the row's last real token left it."""
        return x + self.mixer(self.norm(x), state, reset, lengths)

    def step(self, x: torch.Tensor, state, ctx) -> torch.Tensor:
        """x (b, n, d) -> (b, n, d) for a few tokens per row (see each mixer's ``step``)."""
        return x + self.mixer.step(self.norm(x), state, ctx)
