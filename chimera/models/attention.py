"""Grouped-query causal self-attention without positional encoding (Nemotron-H), with a KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chimera.models.cache import KVState
from chimera.models.config import HybridConfig
from chimera.models.decode_attention import attend


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
        if l == 1 and self.nh != self.nkv:
            return self.o_proj(self._decode_gqa(q, k, v, key_mask).reshape(b, 1, self.nh * self.hd))
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

    def _decode_gqa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    key_mask: torch.Tensor | None) -> torch.Tensor:
        """One query position: fold the query heads of each KV group into the query axis, so keys and
        values are read once per group instead of being repeated per head. q (b, nh, 1, hd) -> (b, nh, hd)."""
        b = q.size(0)
        g = self.nh // self.nkv
        qg = q.reshape(b, self.nkv, g, self.hd)  # heads h = kv * g + j share kv group `kv`
        mask = None if key_mask is None else key_mask[:, None, None, :].bool()
        y = attend(qg, k, v, mask)  # (b, nkv, g, hd)
        return y.reshape(b, self.nh, self.hd)
