"""Multi-token prediction (MTP), the Megatron / Nemotron 3 design.

Depth k predicts token t+k+1 from the depth k-1 representation at t (the backbone's final hidden
state for k=1) and the embedding of token t+k:

    x = eh_proj(concat(enorm(embed(token[t+k])), hnorm(h_{k-1}[t])))     # 2d -> d
    x = hybrid layers of the MTP pattern (pre-norm residual blocks)
    h_k[t] = final_layernorm(x)            -> logits through the shared lm_head

Checkpoint names follow NemotronH: ``mtp.layers.{i}`` flat over blocks, ``enorm`` / ``hnorm`` /
``eh_proj`` on a block's first layer and ``final_layernorm`` on its last.
"""

from __future__ import annotations

import torch
from torch import nn

from chimera.models.block import Block
from chimera.models.cache import Cache, StepContext
from chimera.models.config import HybridConfig
from chimera.models.norm import RMSNorm


class MTP(nn.Module):
    def __init__(self, cfg: HybridConfig):
        super().__init__()
        self.cfg = cfg
        P = len(cfg.mtp_pattern)
        self.layers = nn.ModuleList(Block(cfg, c) for _ in range(cfg.mtp_num_blocks) for c in cfg.mtp_pattern)
        for b in range(cfg.mtp_num_blocks):
            first, last = self.layers[b * P], self.layers[b * P + P - 1]
            first.enorm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
            first.hnorm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
            first.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
            last.final_layernorm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)

    def block(self, depth: int) -> list[nn.Module]:
        """The layers applied at ``depth`` (1-based)."""
        P = len(self.cfg.mtp_pattern)
        b = 0 if self.cfg.mtp_share_block else depth - 1
        return list(self.layers[b * P:(b + 1) * P])

    def _input(self, depth: int, h_prev: torch.Tensor, next_embeds: torch.Tensor) -> torch.Tensor:
        first = self.block(depth)[0]
        return first.eh_proj(torch.cat([first.enorm(next_embeds), first.hnorm(h_prev)], dim=-1))

    def forward(self, depth: int, h_prev: torch.Tensor, next_embeds: torch.Tensor,
                cache: Cache | None = None) -> torch.Tensor:
        """h_prev (b, l, d), next_embeds (b, l, d) -> h_depth (b, l, d), normalised (sequence mode)."""
        layers = self.block(depth)
        x = self._input(depth, h_prev, next_embeds)
        if cache is not None:
            cache.begin_sequence(x.size(1))
        for j, layer in enumerate(layers):
            x = layer(x, None if cache is None else cache.layers[j])
        if cache is not None:
            cache.end_sequence(x.size(1))
        return layers[-1].final_layernorm(x)

    def step(self, depth: int, h_prev: torch.Tensor, next_embeds: torch.Tensor, cache: Cache,
             ctx: StepContext) -> torch.Tensor:
        """The same for n tokens per row of ``cache`` at ``ctx.positions``; the caller advances the cache."""
        layers = self.block(depth)
        x = self._input(depth, h_prev, next_embeds)
        for layer, state in zip(layers, cache.layers):
            x = layer.step(x, state, ctx)
        return layers[-1].final_layernorm(x)
