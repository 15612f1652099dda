"""The inference state of a stack of layers: one state per layer, made and updated by its mixer.

A ``Cache`` holds, for ``b`` rows, each layer's state (``MambaState``, ``KVCache`` or None), which
key positions of each row are valid, and where each row writes next. Two kinds of call fill it:

- ``forward`` over a sequence (prefill, RL rollouts): every row takes the same positions, so the
  cache's ``length`` is one number and KV buffers grow as needed;
- ``step`` over a few tokens per row (decoding, verification): each row writes at its own
  position, in buffers of a fixed ``capacity`` (fixed shapes and addresses: the call compiles).
  ``context(n, record=True)`` asks the Mamba layers to record every position's state, so that
  ``advance(ctx, m)`` can keep any prefix of the n tokens: a speculative rollback, exactly.

Rows move between caches with ``select`` (keep or reorder rows) and ``insert`` (copy a prefilled
cache into some rows of another: a prompt prefilled once serves many sample rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class StepContext:
    """What a ``step`` of n tokens per row needs beyond the tokens."""

    positions: torch.Tensor
    """(b, n) where each row's tokens go."""
    valid: torch.Tensor
    """(b, capacity) the keys each row may attend to (this step's own keys aside)."""
    records: list | None
    """None: layers update their state in place; a list: Mamba layers append what ``advance`` needs."""


class Cache:
    """Per-layer inference state of ``b`` rows (see the module doc)."""

    def __init__(self, layers: list, valid: torch.Tensor, pos: torch.Tensor, length: int = 0):
        self.layers = layers
        self.valid = valid  # (b, capacity) bool
        self.pos = pos  # (b,) long: the next position each row writes
        self.length = length  # positions every row holds, for sequence calls

    @classmethod
    def empty(cls, blocks: nn.ModuleList | list[nn.Module], batch: int, capacity: int,
              device: torch.device | str, dtype: torch.dtype) -> Cache:
        """Zero states for ``blocks`` (each has ``new_state``) with room for ``capacity`` positions."""
        device = torch.device(device)
        layers = [block.new_state(batch, capacity, device, dtype) for block in blocks]
        return cls(layers, torch.zeros(batch, capacity, dtype=torch.bool, device=device),
                   torch.zeros(batch, dtype=torch.long, device=device))

    @property
    def batch(self) -> int:
        return self.valid.size(0)

    @property
    def capacity(self) -> int:
        return self.valid.size(1)

    # ---- sequence calls -------------------------------------------------------------------------
    def begin_sequence(self, n: int) -> None:
        """Before a sequence call of n positions: grow the buffers to hold them."""
        need = self.length + n
        if need > self.capacity:
            grown = max(need, 2 * self.capacity)
            for s in self.layers:
                if s is not None:
                    s.reserve(grown)
            self.valid = torch.cat([self.valid, self.valid.new_zeros(self.batch, grown - self.capacity)], 1)

    def end_sequence(self, n: int, lengths: torch.Tensor | None = None) -> None:
        """After a sequence call of n positions (of which each row's first ``lengths`` are real)."""
        if lengths is None:
            self.valid[:, self.length:self.length + n] = True
            self.pos.fill_(self.length + n)
        else:
            self.valid[:, self.length:self.length + n] = torch.arange(n, device=lengths.device) < lengths[:, None]
            self.pos.copy_(self.length + lengths)
        self.length += n

    # ---- step calls -----------------------------------------------------------------------------
    def context(self, n: int, record: bool = False) -> StepContext:
        """The context of a step of n tokens per row at each row's next positions."""
        positions = self.pos[:, None] + torch.arange(n, device=self.pos.device)
        # the caller keeps the rows it uses within capacity; a row left idle only rewrites its last slot
        return StepContext(positions.clamp(max=self.capacity - 1), self.valid, [] if record else None)

    def advance(self, ctx: StepContext, m: torch.Tensor | None = None) -> None:
        """After a step: keep the first ``m`` (b,) tokens of each row (None: all; only recorded steps can
        keep fewer). A row given m = 0 stays as it was."""
        n = ctx.positions.size(1)
        if m is None:
            self.valid.scatter_(1, ctx.positions, True)
            self.pos += n
            return
        m = m.expand(self.batch)
        for state, *record in ctx.records:
            state.keep(*record, m)
        self.valid.scatter_(1, ctx.positions, torch.arange(n, device=m.device) < m[:, None])
        self.pos += m

    # ---- rows -------------------------------------------------------------------------------------
    def select(self, index: torch.Tensor) -> Cache:
        """A cache of the rows ``index`` (keep, drop or repeat rows)."""
        layers = [None if s is None else s.select(index) for s in self.layers]
        return Cache(layers, self.valid.index_select(0, index), self.pos.index_select(0, index), self.length)

    def insert(self, rows: torch.Tensor, src: Cache, length: int | None = None) -> None:
        """Put ``src``'s first ``length`` positions (default ``src.length``; rows aligned there; one row
        broadcast, or one per row) into ``rows``."""
        n = src.length if length is None else length
        if n > self.capacity:
            raise ValueError(f"a prompt of {n} positions does not fit a cache of capacity {self.capacity}")
        for dst, s in zip(self.layers, src.layers):
            if dst is not None:
                dst.insert(rows, s, n)
        self.valid.index_fill_(0, rows, False)
        self.valid[:, :n].index_fill_(0, rows, True)
        self.pos.index_fill_(0, rows, n)

    def clone(self) -> Cache:
        layers = [None if s is None else s.clone() for s in self.layers]
        return Cache(layers, self.valid.clone(), self.pos.clone(), self.length)

    def detach(self) -> Cache:
        """The same state cut from any autograd graph (RL carries states across rollouts)."""
        layers = [None if s is None else s.detach() for s in self.layers]
        return Cache(layers, self.valid, self.pos, self.length)

    def nbytes(self) -> dict[str, int]:
        """Bytes held by Mamba states and by the attention keys and values written."""
        out = {"mamba": 0, "kv": 0}
        for s in self.layers:
            if s is not None:
                for k, v in s.nbytes().items():
                    out[k] += v
        out["total"] = out["mamba"] + out["kv"]
        return out
