"""Mixture of Experts: fp32 sigmoid top-k router with aux-loss-free balancing, squared-ReLU experts
dispatched grouped by expert, a shared expert, and the optional LatentMoE projections."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chimera.models.config import HybridConfig
from chimera.models.mlp import MLP, relu2


class TopkRouter(nn.Module):
    """Sigmoid scores; top-k chosen on scores + correction bias; weights from the unbiased scores."""

    def __init__(self, cfg: HybridConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.zeros(cfg.n_routed_experts, cfg.hidden_size, dtype=torch.float32))
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, d) -> scores (N, E), top-k weights (N, k), top-k expert ids (N, k)."""
        cfg = self.cfg
        scores = F.linear(x.float(), self.weight.float()).sigmoid()  # (N, E)
        choice = scores + self.e_score_correction_bias
        if cfg.n_group > 1:
            # Keep only the topk_group groups whose two best experts score highest.
            grouped = choice.view(-1, cfg.n_group, cfg.n_routed_experts // cfg.n_group)
            group_scores = grouped.topk(2, dim=-1).values.sum(-1)  # (N, n_group)
            keep = torch.zeros_like(group_scores, dtype=torch.bool)
            keep.scatter_(1, group_scores.topk(cfg.topk_group, dim=-1).indices, True)
            choice = grouped.masked_fill(~keep[..., None], float("-inf")).view_as(choice)
        idx = choice.topk(cfg.num_experts_per_tok, dim=-1, sorted=False).indices  # (N, k)
        w = scores.gather(1, idx)
        if cfg.norm_topk_prob:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return scores, w * cfg.routed_scaling_factor, idx


class Experts(nn.Module):
    """E squared-ReLU MLPs stored as (E, out, in) tensors; tokens are sorted by expert and each
    expert runs once on its contiguous slice, so compute scales with top-k, not with E."""

    def __init__(self, num_experts: int, dim: int, intermediate: int):
        super().__init__()
        self.num_experts = num_experts
        self.up_proj = nn.Parameter(torch.empty(num_experts, intermediate, dim))
        self.down_proj = nn.Parameter(torch.empty(num_experts, dim, intermediate))
        self.linear = F.linear  # replaced by low-precision recipes (chimera.precision.convert)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, loop_free: bool = False) -> torch.Tensor:
        """x (N, dim), idx / w (N, k) -> sum_k w * expert_idx(x), (N, dim) in fp32. ``loop_free`` forces a
        path with no data-dependent Python loop (static-shape graphs: decode steps)."""
        N, k = idx.shape
        if self.linear is F.linear and (loop_free or N * k <= self.num_experts):
            if N * k <= self.num_experts or self.num_experts > 4 * k:
                return self._gathered(x, idx, w)
            return self._dense(x, idx, w)
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)  # assignments grouped by expert
        token = order // k
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        xs = x[token]  # (N*k, dim)
        outs = []
        start = 0
        for e, c in enumerate(counts):
            if c:
                seg = xs[start:start + c]
                outs.append(self.linear(relu2(self.linear(seg, self.up_proj[e])), self.down_proj[e]))
                start += c
        ys = torch.cat(outs).float() * w.reshape(-1)[order, None].float()
        return torch.zeros(N, x.size(1), dtype=torch.float32, device=x.device).index_add_(0, token, ys)

    def _dense(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Many tokens and few experts (a batch of decode rows): every expert on every token, weighted by
        the routing (zero where not chosen); at most 4x the routed compute, each expert read once."""
        gate = torch.zeros(x.size(0), self.num_experts, dtype=torch.float32, device=x.device)
        gate = gate.scatter(1, idx, w.float())  # (N, E)
        hid = relu2(torch.einsum("eid,nd->nei", self.up_proj, x))
        ys = torch.einsum("edi,nei->ned", self.down_proj, hid).float()
        return (ys * gate[..., None]).sum(1)

    def _gathered(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Few tokens (decoding): gather each assignment's expert weights and run them as one batched
        matmul, with no data-dependent Python loop (so a compiled decode step stays one graph)."""
        up, down = self.up_proj[idx], self.down_proj[idx]  # (N, k, inter, dim), (N, k, dim, inter)
        hid = relu2(torch.einsum("nkid,nd->nki", up, x))
        ys = torch.einsum("nkdi,nki->nkd", down, hid).float()
        return (ys * w[..., None].float()).sum(1)


class MoE(nn.Module):
    """Routed experts (optionally in a latent width) plus a full-width shared expert."""

    def __init__(self, cfg: HybridConfig):
        super().__init__()
        self.cfg = cfg
        width = cfg.moe_latent_size or cfg.hidden_size
        self.gate = TopkRouter(cfg)
        self.experts = Experts(cfg.n_routed_experts, width, cfg.moe_intermediate_size)
        self.shared_experts = (MLP(cfg.hidden_size, cfg.moe_shared_expert_intermediate_size, cfg.mlp_bias)
                               if cfg.moe_shared_expert_intermediate_size > 0 else None)
        if cfg.moe_latent_size is not None:
            self.fc1_latent_proj = nn.Linear(cfg.hidden_size, cfg.moe_latent_size, bias=cfg.mlp_bias)
            self.fc2_latent_proj = nn.Linear(cfg.moe_latent_size, cfg.hidden_size, bias=cfg.mlp_bias)
        else:
            self.fc1_latent_proj = self.fc2_latent_proj = None
        # Tokens routed to each expert since the last bias update (training only).
        self.register_buffer("expert_load", torch.zeros(cfg.n_routed_experts), persistent=False)
        self.aux_loss: torch.Tensor | None = None

    def new_state(self, batch: int, capacity: int, device: torch.device, dtype: torch.dtype) -> None:
        """No inference state."""
        return None

    def step(self, hidden: torch.Tensor, state: None, ctx) -> torch.Tensor:
        """A few tokens per row: a loop-free dispatch, so a compiled step stays one graph."""
        return self.forward(hidden, loop_free=True)

    def forward(self, hidden: torch.Tensor, state: None = None, reset: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None, loop_free: bool = False) -> torch.Tensor:
        b, l, d = hidden.shape
        x = hidden.reshape(-1, d)
        scores, w, idx = self.gate(x)
        if self.training:
            with torch.no_grad():
                self.expert_load += torch.bincount(idx.reshape(-1), minlength=self.cfg.n_routed_experts).float()
            self.aux_loss = self._sequence_aux_loss(scores.view(b, l, -1), idx.view(b, l, -1))
        routed_in = x if self.fc1_latent_proj is None else self.fc1_latent_proj(x)
        routed = self.experts(routed_in, idx, w, loop_free).to(hidden.dtype)
        if self.fc2_latent_proj is not None:
            routed = self.fc2_latent_proj(routed)
        out = routed.view(b, l, d)
        if self.shared_experts is not None:
            out = out + self.shared_experts(hidden)
        return out

    def _sequence_aux_loss(self, scores: torch.Tensor, idx: torch.Tensor) -> torch.Tensor | None:
        """DeepSeek-V3 sequence-wise balance loss: alpha * sum_i f_i P_i, averaged over sequences."""
        alpha = self.cfg.moe_aux_loss_coeff
        if alpha <= 0:
            return None
        E, k = self.cfg.n_routed_experts, self.cfg.num_experts_per_tok
        b, l, _ = scores.shape
        chosen = torch.zeros(b, l, E, device=scores.device).scatter_(2, idx, 1.0)
        f = chosen.sum(1) * E / (k * l)  # (b, E)
        P = (scores / scores.sum(-1, keepdim=True)).mean(1)  # (b, E)
        return alpha * (f * P).sum(-1).mean()

    @torch.no_grad()
    def update_bias(self, rate: float) -> None:
        """Aux-loss-free balancing: raise the bias of under-loaded experts, lower over-loaded ones."""
        load = self.expert_load
        if load.sum() > 0 and rate > 0:
            self.gate.e_score_correction_bias += rate * torch.sign(load.mean() - load)
        load.zero_()
