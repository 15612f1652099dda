"""Grouped-query causal self-attention without positional encoding (Nemotron-H), with a KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chimera.models.cache import KVState
from chimera.models.config import HybridConfig


class Attention(nn.Module):
    def __init__(self, cfg: HybridConfig):
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.nh * self.hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.nh * self.hd, cfg.hidden_size, bias=cfg.attention_bias)

    def forward(self, hidden: torch.Tensor, kv: KVState | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (b, l, d) -> (b, l, d). ``key_mask`` (b, past + l) marks real (non-padding) keys."""
        b, l, _ = hidden.shape
        q = self.q_proj(hidden).view(b, l, self.nh, self.hd).transpose(1, 2)  # (b, nh, l, hd)
        k = self.k_proj(hidden).view(b, l, self.nkv, self.hd).transpose(1, 2)  # (b, nkv, l, hd)
        v = self.v_proj(hidden).view(b, l, self.nkv, self.hd).transpose(1, 2)
        past = 0
        if kv is not None:
            past = kv.length
            k, v = kv.append(k, v)  # (b, nkv, past + l, hd)
        mask = None
        causal = False
        if key_mask is not None or (past > 0 and l > 1):
            T = past + l
            qpos = torch.arange(past, T, device=hidden.device)[:, None]
            kpos = torch.arange(T, device=hidden.device)[None, :]
            mask = (kpos <= qpos)[None, None]  # (1, 1, l, T)
            if key_mask is not None:
                # A padding query sees only itself, so that no row of the softmax is empty.
                mask = mask & (key_mask[:, None, None, :].bool() | (kpos == qpos))
        elif past == 0 and l > 1:
            causal = True
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.nkv != self.nh)  # (b, nh, l, hd)
        return self.o_proj(y.transpose(1, 2).reshape(b, l, self.nh * self.hd))
