"""Mamba-2 mixer: in_proj -> causal depthwise conv + SiLU -> SSD -> gated grouped RMSNorm -> out_proj."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from chimera.models.cache import MambaState
from chimera.models.config import HybridConfig
from chimera.models.norm import GatedRMSNorm
from chimera.models.ssd import ssd_chunked, ssd_recurrent


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

    def _conv(self, xbc: torch.Tensor, state: MambaState | None, reset: torch.Tensor | None = None) -> torch.Tensor:
        """Causal depthwise conv over time. xbc (b, l, c) -> (b, l, c); updates state.conv.
        With ``reset`` (b, l), a window never reaches back across the start of a sequence."""
        k = self.cfg.conv_kernel
        xt = xbc.transpose(1, 2)  # (b, c, l)
        if state is None:
            window = F.pad(xt, (k - 1, 0))
        else:
            window = torch.cat([state.conv.to(xt.dtype), xt], dim=-1)  # (b, c, k-1+l)
            state.conv = window[..., window.size(-1) - (k - 1):]
            if state.record:
                state.window = window
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
            return F.silu(out).transpose(1, 2)
        if xt.size(-1) <= self.SHORT:
            # decoding / speculative verification: a k-tap dot product per channel and position is
            # far cheaper than a conv call on a few positions
            out = (window.unfold(-1, k, 1) * self.conv1d.weight[:, 0][:, None, :]).sum(-1)  # (b, c, l)
            if self.conv1d.bias is not None:
                out = out + self.conv1d.bias[:, None]
        else:
            out = F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)  # (b, c, l)
        return F.silu(out).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, state: MambaState | None = None,
                mask: torch.Tensor | None = None, reset: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (b, l, d) -> (b, l, d). With ``state``, continue from it and update it in place.

        ``mask`` (b, l) marks real tokens; masked (left-padding) positions feed nothing into the
        conv window or the SSM state. ``reset`` (b, l) marks positions that start a new sequence
        (an episode): conv windows and SSM state do not carry across them.
        """
        b, l, _ = hidden.shape
        zxbcdt = self.in_proj(hidden)
        z, xbc, dt = zxbcdt.split([self.d_inner, self.conv_dim, self.h], dim=-1)
        if mask is not None:
            keep = mask[..., None].bool()
            xbc = torch.where(keep, xbc, torch.zeros_like(xbc))
        xbc = self._conv(xbc, state, reset)
        if mask is not None:
            xbc = torch.where(keep, xbc, torch.zeros_like(xbc))
        x, B, C = xbc.split([self.d_inner, self.g * self.n, self.g * self.n], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(min=self.cfg.time_step_min)  # (b, l, h)
        A = -torch.exp(self.A_log.float())
        x = x.reshape(b, l, self.h, self.p)
        if state is not None and (l == 1 or state.record):
            # step by step: decoding, or a speculative verify that must keep every position's state
            y, state.ssm, history = ssd_recurrent(state.ssm, x, dt, A, B.view(b, l, self.g, self.n),
                                                  C.view(b, l, self.g, self.n), reset, history=state.record)
            if state.record:
                state.ssm_history = history  # (l + 1, b, h, p, n)
        else:
            init = None if state is None else state.ssm
            y, final = ssd_chunked(x, dt, A, B.view(b, l, self.g, self.n), C.view(b, l, self.g, self.n),
                                   self.cfg.chunk_size, init, reset)
            if state is not None:
                state.ssm = final
        y = y + x.float() * self.D.float()[:, None]  # D skip
        y = y.reshape(b, l, self.d_inner)
        y = self.norm(y, z)
        return self.out_proj(y.to(hidden.dtype))
