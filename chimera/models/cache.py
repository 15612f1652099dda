"""Per-layer inference state: Mamba conv and SSM states (constant size), attention KV (grows).

A ``HybridCache`` holds one entry per layer: ``MambaState`` for ``M`` layers, ``KVState`` for
``*`` layers and ``None`` for MLP / MoE layers, plus the mask of valid key positions for
left-padded batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chimera.models.config import HybridConfig


@dataclass
class MambaState:
    """Conv window (b, conv_dim, kernel-1) and SSM state (b, h, p, n), the latter in fp32.

    With ``record`` set, a multi-token forward keeps the state before and after every position
    (``ssm_history`` (l+1, b, h, p, n) and the full conv ``window``), so that speculative
    decoding can roll back to any accepted prefix exactly.
    """

    conv: torch.Tensor
    ssm: torch.Tensor
    record: bool = False
    window: torch.Tensor | None = None
    ssm_history: torch.Tensor | None = None

    def rollback(self, keep: int) -> None:
        """After a recorded forward, keep the state as it was after the first ``keep`` positions
        (``ssm_history[0]`` is the state before the forward)."""
        k1 = self.conv.size(-1)
        self.conv = self.window[..., keep:keep + k1]
        self.ssm = self.ssm_history[keep]
        self.window = self.ssm_history = None

    def nbytes(self) -> int:
        return self.conv.numel() * self.conv.element_size() + self.ssm.numel() * self.ssm.element_size()

    def select(self, index: torch.Tensor) -> MambaState:
        return MambaState(self.conv.index_select(0, index), self.ssm.index_select(0, index))

    def clone(self) -> MambaState:
        return MambaState(self.conv.clone(), self.ssm.clone())


class KVState:
    """Keys and values (b, kv_heads, capacity, d) in a buffer that doubles when full."""

    def __init__(self, batch: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 capacity: int = 256):
        self.k = torch.zeros(batch, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add (b, kvh, t, d) keys/values; return views of all keys/values so far."""
        t = k.size(2)
        need = self.length + t
        if need > self.k.size(2):
            cap = max(need, 2 * self.k.size(2))
            grow = cap - self.k.size(2)
            pad = self.k.new_zeros(self.k.size(0), self.k.size(1), grow, self.k.size(3))
            self.k = torch.cat([self.k, pad], dim=2)
            self.v = torch.cat([self.v, pad.clone()], dim=2)
        self.k[:, :, self.length:need] = k
        self.v[:, :, self.length:need] = v
        self.length = need
        return self.k[:, :, :need], self.v[:, :, :need]

    def trim(self, n: int) -> None:
        """Forget the last n positions."""
        self.length -= n

    def nbytes(self) -> int:
        """Bytes of the keys and values held (not of the spare capacity)."""
        per_pos = self.k.size(0) * self.k.size(1) * self.k.size(3) * self.k.element_size()
        return 2 * per_pos * self.length

    def select(self, index: torch.Tensor) -> KVState:
        out = KVState.__new__(KVState)
        out.k, out.v, out.length = self.k.index_select(0, index), self.v.index_select(0, index), self.length
        return out

    def clone(self) -> KVState:
        out = KVState.__new__(KVState)
        out.k, out.v, out.length = self.k.clone(), self.v.clone(), self.length
        return out


class HybridCache:
    """Inference state of every layer of a HybridLM."""

    def __init__(self, layers: list[MambaState | KVState | None], key_mask: torch.Tensor | None = None):
        self.layers = layers
        self.key_mask = key_mask  # (b, seen) bool: False marks left padding
        self.seen = 0

    @classmethod
    def empty(cls, config: HybridConfig, batch: int, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, kv_capacity: int = 256, pattern: str | None = None) -> HybridCache:
        """Zero conv / SSM states and empty KV buffers for a batch (layers of ``pattern``, default the config's)."""
        device = torch.device(device)
        layers: list[MambaState | KVState | None] = []
        for kind in config.pattern if pattern is None else pattern:
            if kind == "M":
                conv = torch.zeros(batch, config.mamba_conv_dim, config.conv_kernel - 1, dtype=dtype, device=device)
                ssm = torch.zeros(batch, config.mamba_num_heads, config.mamba_head_dim, config.ssm_state_size,
                                  dtype=torch.float32, device=device)
                layers.append(MambaState(conv, ssm))
            elif kind == "*":
                layers.append(KVState(batch, config.num_key_value_heads, config.head_dim, dtype, device, kv_capacity))
            else:
                layers.append(None)
        return cls(layers)

    def extend_mask(self, mask: torch.Tensor | None, batch: int, t: int, device: torch.device) -> None:
        """Record validity of t new positions (None: all valid)."""
        if mask is None and self.key_mask is None:
            self.seen += t
            return
        if mask is None:
            mask = torch.ones(batch, t, dtype=torch.bool, device=device)
        if self.key_mask is None:
            self.key_mask = torch.ones(batch, self.seen, dtype=torch.bool, device=device)
        self.key_mask = torch.cat([self.key_mask, mask.bool()], dim=1)
        self.seen += t

    # ---- speculation ---------------------------------------------------------------------------
    def snapshot(self) -> tuple:
        """A cheap handle to the current state: layers replace (never mutate) their Mamba tensors,
        and KV buffers only grow past their recorded length."""
        return ([(s.conv, s.ssm) if isinstance(s, MambaState) else (s.length if isinstance(s, KVState) else None)
                 for s in self.layers], self.key_mask, self.seen)

    def restore(self, snap: tuple) -> None:
        """Return to a ``snapshot``."""
        layers, self.key_mask, self.seen = snap
        for s, saved in zip(self.layers, layers):
            if isinstance(s, MambaState):
                s.conv, s.ssm = saved
                s.window = s.ssm_history = None
            elif isinstance(s, KVState):
                s.length = saved

    def record(self, on: bool = True) -> None:
        """Keep per-position Mamba states during the next multi-token forward (see ``rollback``)."""
        for s in self.layers:
            if isinstance(s, MambaState):
                s.record = on

    def rollback(self, keep: int, total: int) -> None:
        """After a recorded forward of ``total`` positions, keep only the first ``keep`` of them."""
        drop = total - keep
        for s in self.layers:
            if isinstance(s, MambaState):
                s.rollback(keep)
                s.record = False
            elif isinstance(s, KVState):
                s.trim(drop)
        self.seen -= drop
        if self.key_mask is not None:
            self.key_mask = self.key_mask[:, :self.seen]

    def nbytes(self) -> dict[str, int]:
        """Bytes held by Mamba states and by attention KV."""
        mamba = sum(s.nbytes() for s in self.layers if isinstance(s, MambaState))
        kv = sum(s.nbytes() for s in self.layers if isinstance(s, KVState))
        return {"mamba": mamba, "kv": kv, "total": mamba + kv}

    def select(self, index: torch.Tensor) -> HybridCache:
        """Keep (or reorder) batch rows, e.g. for beams or finished sequences."""
        out = HybridCache([None if s is None else s.select(index) for s in self.layers],
                          None if self.key_mask is None else self.key_mask.index_select(0, index))
        out.seen = self.seen
        return out

    def clone(self) -> HybridCache:
        out = HybridCache([None if s is None else s.clone() for s in self.layers],
                          None if self.key_mask is None else self.key_mask.clone())
        out.seen = self.seen
        return out
