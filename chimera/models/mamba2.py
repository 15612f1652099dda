"""Mamba-2 mixer: in_proj -> causal depthwise conv + SiLU -> SSD -> gated grouped RMSNorm -> out_proj.

The mixer owns its inference state (``MambaState``: the conv window and the SSM state, both of
constant size) and both ways of running it: ``forward`` over a sequence (training, prefill, RL
rollouts; the chunked scan) and ``step`` over a few tokens per row (decoding, speculative
verification; the recurrence), whose state update can wait until the caller keeps a prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from chimera.models.config import HybridConfig
from chimera.models.norm import GatedRMSNorm
from chimera.models.ssd import ssd_chunked, ssd_recurrent, ssd_update_


@dataclass
class MambaState:
    """Conv window (b, conv_dim, kernel-1) and SSM state (b, h, p, n), the latter in fp32."""

    conv: torch.Tensor
    ssm: torch.Tensor

    def select(self, index: torch.Tensor) -> MambaState:
        return MambaState(self.conv.index_select(0, index), self.ssm.index_select(0, index))

    def insert(self, rows: torch.Tensor, src: MambaState, n: int) -> None:
        """Copy ``src``'s rows (one, broadcast, or one per row), the state after n positions, into ``rows``."""
        self.conv.index_copy_(0, rows, src.conv.expand(len(rows), *src.conv.shape[1:]).to(self.conv.dtype))
        self.ssm.index_copy_(0, rows, src.ssm.expand(len(rows), *src.ssm.shape[1:]))

    def keep(self, window: torch.Tensor, history: torch.Tensor, m: torch.Tensor) -> None:
        """After a recorded ``step`` of n tokens, keep each row's state after its first ``m`` (b,) tokens.
        window (b, c, k-1+n) holds the conv inputs, history (n+1, b, h, p, s) every SSM state."""
        b, c, k1 = self.conv.shape
        taps = (m[:, None] + torch.arange(k1, device=m.device))[:, None, :].expand(b, c, k1)
        self.conv.copy_(window.gather(-1, taps))
        self.ssm.copy_(history.transpose(0, 1)[torch.arange(b, device=m.device), m])

    def reserve(self, capacity: int) -> None:
        """Constant size: nothing grows with context."""

    def nbytes(self) -> dict[str, int]:
        return {"mamba": self.conv.numel() * self.conv.element_size() + self.ssm.numel() * self.ssm.element_size()}

    def clone(self) -> MambaState:
        return MambaState(self.conv.clone(), self.ssm.clone())

    def detach(self) -> MambaState:
        return MambaState(self.conv.detach(), self.ssm.detach())


class Mamba2Mixer(nn.Module):
    """Selective state-space mixer with a constant-size recurrent state.

    in_proj output layout: ``[z (d_inner) | x (d_inner) B (g*n) C (g*n) | dt (h)]``; the conv
    runs over ``x B C``. A = -exp(A_log) per head; dt = softplus(dt + dt_bias) >= time_step_min.
    """

    SHORT = 16
    """Inputs of at most this many positions use the direct conv taps instead of ``F.conv1d``."""

    def __init__(self, cfg: HybridConfig):
        super().__init__()
        self.cfg = cfg
        self.h, self.p, self.g, self.n = cfg.mamba_num_heads, cfg.mamba_head_dim, cfg.n_groups, cfg.ssm_state_size
        self.d_inner = cfg.mamba_d_inner
        self.conv_dim = cfg.mamba_conv_dim
        self.in_proj = nn.Linear(cfg.hidden_size, self.d_inner + self.conv_dim + self.h, bias=cfg.use_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.conv_kernel, groups=self.conv_dim,
                                bias=cfg.use_conv_bias, padding=cfg.conv_kernel - 1)
        self.dt_bias = nn.Parameter(torch.empty(self.h))
        self.A_log = nn.Parameter(torch.empty(self.h))
        self.D = nn.Parameter(torch.empty(self.h))
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // self.g, eps=cfg.layer_norm_epsilon)
        self.out_proj = nn.Linear(self.d_inner, cfg.hidden_size, bias=cfg.use_bias)
        for name in ("dt_bias", "A_log", "D"):
            getattr(self, name)._no_weight_decay = True
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """A in [1, h], D = 1, dt_bias = softplus^-1 of dt log-uniform in [dt_min, dt_max]."""
        if self.A_log.is_meta:
            return
        cfg = self.cfg
        self.A_log.copy_(torch.log(torch.arange(1, self.h + 1, dtype=torch.float32)))
        self.D.fill_(1.0)
        dt = torch.exp(torch.rand(self.h) * (math.log(cfg.time_step_max) - math.log(cfg.time_step_min))
                       + math.log(cfg.time_step_min)).clamp(min=cfg.time_step_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def new_state(self, batch: int, capacity: int, device: torch.device, dtype: torch.dtype) -> MambaState:
        """Zero conv window and SSM state for ``batch`` rows (``capacity`` does not matter: constant size)."""
        conv = torch.zeros(batch, self.conv_dim, self.cfg.conv_kernel - 1, dtype=dtype, device=device)
        return MambaState(conv, torch.zeros(batch, self.h, self.p, self.n, dtype=torch.float32, device=device))

    # ---- the maths shared by both modes --------------------------------------------------------
    def _taps(self, window: torch.Tensor) -> torch.Tensor:
        """The causal conv as k-tap dot products over a window (b, c, k-1+l) -> (b, c, l), before SiLU;
        for a few positions far cheaper than a conv call."""
        out = (window.unfold(-1, self.cfg.conv_kernel, 1) * self.conv1d.weight[:, 0][:, None, :]).sum(-1)
        return out if self.conv1d.bias is None else out + self.conv1d.bias[:, None]

    def _ssm_inputs(self, xbc: torch.Tensor, dt: torch.Tensor):
        """Post-conv x B C (b, l, c) and raw dt (b, l, h) -> x (b, l, h, p), dt, A, B, C (b, l, g, n)."""
        b, l, _ = xbc.shape
        x, B, C = xbc.split([self.d_inner, self.g * self.n, self.g * self.n], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(min=self.cfg.time_step_min)  # (b, l, h)
        A = -torch.exp(self.A_log.float())
        return x.reshape(b, l, self.h, self.p), dt, A, B.view(b, l, self.g, self.n), C.view(b, l, self.g, self.n)

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """SSM output y (b, l, h, p) + the D skip, gated norm with z, out_proj -> (b, l, d)."""
        b, l = y.shape[:2]
        y = (y + x.float() * self.D.float()[:, None]).reshape(b, l, self.d_inner)
        return self.out_proj(self.norm(y, z).to(dtype))

    # ---- sequence mode ------------------------------------------------------------------------
    def _conv(self, xbc: torch.Tensor, state: MambaState | None, reset: torch.Tensor | None = None,
              lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Causal depthwise conv + SiLU over time. xbc (b, l, c) -> (b, l, c); updates state.conv (to the
        window before position ``lengths`` of each row, when given). With ``reset`` (b, l), a window never
        reaches back across the start of a sequence."""
        k = self.cfg.conv_kernel
        xt = xbc.transpose(1, 2)  # (b, c, l)
        if state is None:
            window = F.pad(xt, (k - 1, 0))
        else:
            window = torch.cat([state.conv.to(xt.dtype), xt], dim=-1)  # (b, c, k-1+l)
            if lengths is None:
                state.conv = window[..., window.size(-1) - (k - 1):]
            else:  # window index j + k - 1 holds position j: the last k - 1 inputs before each row's length
                at = lengths[:, None, None] + torch.arange(k - 1, device=xt.device)
                state.conv = window.gather(-1, at.expand(xt.size(0), xt.size(1), k - 1))
        if reset is not None:
            R = torch.cumsum(reset.long(), dim=1)  # (b, l) sequence index of each position
            Rw = F.pad(R, (k - 1, 0))  # positions before this call belong to sequence 0
            keep = (Rw.unfold(1, k, 1) == R[..., None]).to(xt.dtype)  # (b, l, k)
            taps = window.unfold(-1, k, 1) * keep[:, None]  # (b, c, l, k)
            out = (taps * self.conv1d.weight[:, 0][:, None, :]).sum(-1)
            if self.conv1d.bias is not None:
                out = out + self.conv1d.bias[:, None]
            if state is not None:  # the carried window must not hold inputs of a finished sequence
                state.conv = state.conv * (Rw[:, Rw.size(1) - (k - 1):] == R[:, -1:]).to(xt.dtype)[:, None]
        elif xt.size(-1) <= self.SHORT:
            out = self._taps(window)
        else:
            out = F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)  # (b, c, l)
        return F.silu(out).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, state: MambaState | None = None,
                reset: torch.Tensor | None = None, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (b, l, d) -> (b, l, d). With ``state``, continue from it and update it.
        ``reset`` (b, l) marks positions that start a new sequence (an episode): conv windows and SSM
        state do not carry across them. ``lengths`` (b,): each row's positions from there on are padding,
        given dt = 0 (a decay of exactly 1 and no input), so the state ends as the last real token left it."""
        z, xbc, dt = self.in_proj(hidden).split([self.d_inner, self.conv_dim, self.h], dim=-1)
        x, dt, A, B, C = self._ssm_inputs(self._conv(xbc, state, reset, lengths), dt)
        if lengths is not None:
            dt = dt * (torch.arange(dt.size(1), device=dt.device) < lengths[:, None])[..., None]
        if state is not None and hidden.size(1) == 1:
            y, state.ssm, _ = ssd_recurrent(state.ssm, x, dt, A, B, C, reset)
        else:
            y, final = ssd_chunked(x, dt, A, B, C, self.cfg.chunk_size, None if state is None else state.ssm, reset)
            if state is not None:
                state.ssm = final
        return self._output(y, x, z, hidden.dtype)

    # ---- step mode ----------------------------------------------------------------------------
    def step(self, hidden: torch.Tensor, state: MambaState, ctx) -> torch.Tensor:
        """n tokens per row from ``state`` by the recurrence; hidden (b, n, d) -> (b, n, d). With
        ``ctx.records`` the state waits (window and every SSM state go there, for ``MambaState.keep``);
        without, it is updated in place."""
        n = hidden.size(1)
        z, xbc, dt = self.in_proj(hidden).split([self.d_inner, self.conv_dim, self.h], dim=-1)
        window = torch.cat([state.conv, xbc.transpose(1, 2).to(state.conv.dtype)], dim=-1)  # (b, c, k-1+n)
        x, dt, A, B, C = self._ssm_inputs(F.silu(self._taps(window)).transpose(1, 2), dt)
        if ctx.records is not None:
            y, _, history = ssd_recurrent(state.ssm, x, dt, A, B, C, history=True)
            ctx.records.append((state, window, history))
        else:
            if n == 1 and state.ssm.is_contiguous():  # in place (the cache's own buffers are)
                y = ssd_update_(state.ssm, x, dt, A, B, C)
            else:
                y, final, _ = ssd_recurrent(state.ssm, x, dt, A, B, C)
                state.ssm.copy_(final)
            state.conv.copy_(window[..., n:])
        return self._output(y, x, z, hidden.dtype)
