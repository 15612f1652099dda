"""Grouped-query causal self-attention without positional encoding (Nemotron-H), with its KV cache.

The layer owns its inference state (``KVCache``: keys and values in a buffer of ``capacity``
positions) and both ways of filling it: ``forward`` over a sequence appends the same positions
to every row (training, prefill), ``step`` writes a few tokens per row at each row's own positions
and attends over the keys a validity mask allows (decoding, speculative verification).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chimera.models.config import HybridConfig
from chimera.models.decode_attention import attend


class KVCache:
    """Keys and values (b, kv_heads, capacity, head_dim); ``length`` positions written by ``forward``."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, length: int = 0):
        self.k, self.v, self.length = k, v, length

    def reserve(self, capacity: int) -> None:
        """Grow the buffers (at least doubling) to hold ``capacity`` positions."""
        have = self.k.size(2)
        if capacity <= have:
            return
        pad = self.k.new_zeros(*self.k.shape[:2], max(capacity, 2 * have) - have, self.k.size(3))
        self.k, self.v = torch.cat([self.k, pad], 2), torch.cat([self.v, pad.clone()], 2)

    def select(self, index: torch.Tensor) -> KVCache:
        return KVCache(self.k.index_select(0, index), self.v.index_select(0, index), self.length)

    def insert(self, rows: torch.Tensor, src: KVCache, n: int) -> None:
        """Copy the first ``n`` positions of ``src``'s rows (one, broadcast, or one per row) into ``rows``."""
        shape = (len(rows), *src.k.shape[1:2], n, src.k.size(3))
        self.k[:, :, :n].index_copy_(0, rows, src.k[:, :, :n].expand(shape).to(self.k.dtype))
        self.v[:, :, :n].index_copy_(0, rows, src.v[:, :, :n].expand(shape).to(self.v.dtype))

    def nbytes(self) -> dict[str, int]:
        """Bytes of the keys and values written (not of the spare capacity)."""
        return {"kv": 2 * self.k[:, :, :self.length].numel() * self.k.element_size()}

    def clone(self) -> KVCache:
        return KVCache(self.k.clone(), self.v.clone(), self.length)

    def detach(self) -> KVCache:
        return KVCache(self.k.detach(), self.v.detach(), self.length)


class Attention(nn.Module):
    def __init__(self, cfg: HybridConfig):
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.nh * self.hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.nh * self.hd, cfg.hidden_size, bias=cfg.attention_bias)

    def new_state(self, batch: int, capacity: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        k = torch.zeros(batch, self.nkv, capacity, self.hd, dtype=dtype, device=device)
        return KVCache(k, torch.zeros_like(k))

    def _qkv(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden (b, l, d) -> q (b, nh, l, hd), k and v (b, nkv, l, hd)."""
        b, l, _ = hidden.shape
        q = self.q_proj(hidden).view(b, l, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(hidden).view(b, l, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(hidden).view(b, l, self.nkv, self.hd).transpose(1, 2)
        return q, k, v

    def forward(self, hidden: torch.Tensor, state: KVCache | None = None,
                reset: torch.Tensor | None = None, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (b, l, d) -> (b, l, d), causal; with ``state``, after its ``length`` cached positions.
        With right-padded rows (``lengths``) the padding's keys are written too: they come after every
        real query, and the ``Cache`` marks them invalid for later steps."""
        if reset is not None:
            raise ValueError("attention layers do not support episode resets; use M, - and E layers for "
                             "recurrent policies (Mamba layers carry the memory)")
        b, l, _ = hidden.shape
        q, k, v = self._qkv(hidden)
        past = 0
        if state is not None:
            past, T = state.length, state.length + l
            state.reserve(T)
            state.k[:, :, past:T], state.v[:, :, past:T] = k, v
            state.length = T
            k, v = state.k[:, :, :T], state.v[:, :, :T]  # (b, nkv, past + l, hd)
        if l == 1 and past > 0:  # one new position sees every key: the decode kernel
            g = self.nh // self.nkv
            y = attend(q.reshape(b, self.nkv, g, self.hd), k, v).reshape(b, self.nh, 1, self.hd)
        else:
            mask = None
            if past:  # query i (at past + i) sees keys up to past + i
                mask = torch.ones(l, past + l, dtype=torch.bool, device=hidden.device).tril(past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not past,
                                               enable_gqa=self.nkv != self.nh)  # (b, nh, l, hd)
        return self.o_proj(y.transpose(1, 2).reshape(b, l, self.nh * self.hd))

    def step(self, hidden: torch.Tensor, state: KVCache, ctx) -> torch.Tensor:
        """n tokens per row at ``ctx.positions`` (b, n); hidden (b, n, d) -> (b, n, d). Their keys and values
        are written there; token i sees the keys ``ctx.valid`` marks and this step's keys up to its own."""
        b, n, _ = hidden.shape
        g = self.nh // self.nkv
        q, k, v = self._qkv(hidden)
        # index_put_ (not scatter_): a compiled graph writes it into the cache in place, where a scatter_
        # on a graph input costs a copy of the whole cache per step
        at = (torch.arange(b, device=hidden.device)[:, None, None],
              torch.arange(self.nkv, device=hidden.device)[None, :, None], ctx.positions[:, None, :])
        state.k.index_put_(at, k.to(state.k.dtype))
        state.v.index_put_(at, v.to(state.v.dtype))
        # the query heads of each KV group share its keys: fold them into the query axis (g * n rows)
        q = q.view(b, self.nkv, g, n, self.hd).reshape(b, self.nkv, g * n, self.hd)
        key = torch.arange(state.k.size(2), device=hidden.device)
        start = ctx.positions[:, :1, None]  # (b, 1, 1)
        own = (key >= start) & (key <= ctx.positions[:, :, None])  # (b, n, capacity): this step's keys
        mask = (ctx.valid[:, None, :] | own).repeat(1, g, 1)  # (b, g * n, capacity)
        y = attend(q, state.k, state.v, mask[:, None])  # (b, nkv, g * n, hd)
        return self.o_proj(y.view(b, self.nh, n, self.hd).transpose(1, 2).reshape(b, n, self.nh * self.hd))
