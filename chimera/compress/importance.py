"""Minitron activation importance from forward hooks over a calibration set.

An activation a (b, l, c) scores its channels by magnitude: mean |a| over the sequence, then the L2 norm
over every calibration sequence (``sqrt(sum_b mean_l(|a|)^2)``). Where each axis is read:

- hidden channels: the output of every pre-mixer norm of the main stack and of ``norm_f``, summed;
- FFN neurons (``-`` layers, shared experts): the down projection's input;
- attention heads: the output projection's input, a head's score the L2 over its head_dim channels;
  the ranking is taken within each GQA group so every group keeps the same number of query heads;
- Mamba heads and head channels: the x part of ``in_proj``'s output ([z | x B C | dt], before the conv),
  (h, p) channel scores from which prune.py ranks head dims over all heads and heads within groups;
- experts: the mean norm of an expert's weighted output over the tokens routed to it, and each expert's
  neurons on its down projection's input over those tokens;
- depth: 1 - cos(layer input, layer output) averaged over tokens, and (``depth_loss``) the calibration LM
  loss with the layer replaced by the identity minus the full model's loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from chimera.compress.calib import Batch, lm_loss
from chimera.models import HybridLM
from chimera.models.attention import Attention
from chimera.models.mamba2 import Mamba2Mixer
from chimera.models.mlp import MLP, relu2
from chimera.models.moe import MoE


class Magnitude:
    """Running Minitron statistic of one activation: sum over sequences of (mean over positions of |a|)^2."""

    def __init__(self) -> None:
        self.sq: torch.Tensor | None = None

    def add(self, a: torch.Tensor) -> None:
        """a (b, l, c) sequences, or (n, c) tokens taken as one sequence."""
        a = a.detach().float().abs()
        m = a.mean(1) if a.dim() == 3 else a.mean(0, keepdim=True)  # (b, c)
        s = m.square().sum(0)
        self.sq = s if self.sq is None else self.sq + s

    def score(self) -> torch.Tensor:
        if self.sq is None:
            raise ValueError("no activations were recorded; is the calibration set empty?")
        return self.sq.sqrt()


@dataclass
class LayerImportance:
    """Importance of the prunable units of one layer (only the fields of its kind are set)."""

    kind: str
    ffn: torch.Tensor | None = None
    """``-``: (intermediate_size,) neuron scores."""
    heads: torch.Tensor | None = None
    """``*``: (num_attention_heads,) query head scores."""
    mamba: torch.Tensor | None = None
    """``M``: (mamba_num_heads, mamba_head_dim) scores of the x channels."""
    experts: torch.Tensor | None = None
    """``E``: (n_routed_experts,) mean routed output norm (0 for an expert never chosen)."""
    expert_ffn: torch.Tensor | None = None
    """``E``: (n_routed_experts, moe_intermediate_size) neuron scores per expert."""
    shared_ffn: torch.Tensor | None = None
    """``E``: (moe_shared_expert_intermediate_size,) shared-expert neuron scores."""


@dataclass
class Importance:
    """Everything prune.py ranks by, for one model and calibration set."""

    hidden: torch.Tensor
    """(hidden_size,)"""
    layers: list[LayerImportance]
    """One per layer of the main stack."""
    mtp_layers: list[LayerImportance]
    """One per MTP layer (flat over blocks, as ``model.mtp.layers``)."""
    depth_cosine: torch.Tensor
    """(num_layers,) mean 1 - cos(input, output); small: the layer barely changes its input."""
    depth_loss: torch.Tensor | None = None
    """(num_layers,) calibration loss without the layer minus the full model's loss."""
    base_loss: float = float("nan")


class _ExpertStats:
    """Per-expert routed output norms and neuron magnitudes, from the routed experts' inputs."""

    def __init__(self, num_experts: int) -> None:
        self.norm_sum = torch.zeros(num_experts)
        self.count = torch.zeros(num_experts)
        self.neurons: list[Magnitude] = [Magnitude() for _ in range(num_experts)]

    @torch.no_grad()
    def __call__(self, module, args, output) -> None:
        x, idx, w = args[0], args[1], args[2]  # (N, width), (N, k), (N, k)
        for e in range(module.num_experts):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            hid = relu2(F.linear(x[tok], module.up_proj[e]))  # (n_e, inter): the down projection's input
            y = F.linear(hid, module.down_proj[e]).float() * w[tok, slot, None].float()  # (n_e, width)
            self.norm_sum[e] += y.norm(dim=-1).sum().cpu()
            self.count[e] += tok.numel()
            self.neurons[e].add(hid)

    def experts(self) -> torch.Tensor:
        return self.norm_sum / self.count.clamp(min=1)

    def expert_ffn(self, inter: int) -> torch.Tensor:
        return torch.stack([m.score() if m.sq is not None else torch.zeros(inter) for m in self.neurons])


def _watch_layer(block, handles: list) -> dict:
    """Register the hooks of one layer's mixer; returns the stats they fill."""
    mixer, stats = block.mixer, {}

    def input_of(mod, key: str) -> None:
        stats[key] = Magnitude()
        handles.append(mod.register_forward_pre_hook(lambda m, args: stats[key].add(args[0])))

    if isinstance(mixer, Mamba2Mixer):
        stats["x"] = Magnitude()
        d = mixer.d_inner

        def x_part(m, args, out) -> None:
            stats["x"].add(out[..., d:2 * d])  # [z | x B C | dt]: the x channels, before the conv

        handles.append(mixer.in_proj.register_forward_hook(x_part))
    elif isinstance(mixer, Attention):
        input_of(mixer.o_proj, "o")
    elif isinstance(mixer, MLP):
        input_of(mixer.down_proj, "ffn")
    elif isinstance(mixer, MoE):
        stats["experts"] = _ExpertStats(mixer.cfg.n_routed_experts)
        handles.append(mixer.experts.register_forward_hook(stats["experts"]))
        if mixer.shared_experts is not None:
            input_of(mixer.shared_experts.down_proj, "shared")
    return stats


def _layer_importance(block, stats: dict) -> LayerImportance:
    mixer, kind = block.mixer, block.kind
    if kind == "M":
        return LayerImportance(kind, mamba=stats["x"].score().view(mixer.h, mixer.p))
    if kind == "*":
        return LayerImportance(kind, heads=stats["o"].score().view(mixer.nh, mixer.hd).norm(dim=-1))
    if kind == "-":
        return LayerImportance(kind, ffn=stats["ffn"].score())
    ex: _ExpertStats = stats["experts"]
    return LayerImportance(kind, experts=ex.experts(),
                           expert_ffn=ex.expert_ffn(mixer.cfg.moe_intermediate_size),
                           shared_ffn=stats["shared"].score() if "shared" in stats else None)


@torch.no_grad()
def loss_on(model: HybridLM, batches: list[Batch]) -> float:
    """Mean next-token cross-entropy of ``model`` over the calibration batches."""
    total, count = 0.0, 0
    for x, y in batches:
        s, n = lm_loss(model(x).logits, y)
        total, count = total + s, count + n
    return total / max(count, 1)


@torch.no_grad()
def collect_importance(model: HybridLM, batches: list[Batch], depth_loss: bool = False) -> Importance:
    """Run the calibration ``batches`` through ``model`` with hooks and return every axis's importance.
    ``depth_loss`` adds one pass per layer with that layer removed (the loss depth metric)."""
    if not batches:
        raise ValueError("the calibration set is empty; raise --calib-samples")
    was_training = model.training
    model.eval()
    handles: list = []
    hidden = [Magnitude() for _ in range(len(model.backbone.layers) + 1)]
    norms = [layer.norm for layer in model.backbone.layers] + [model.backbone.norm_f]
    for norm, mag in zip(norms, hidden):
        handles.append(norm.register_forward_hook(lambda m, args, out, mag=mag: mag.add(out)))
    layer_stats = [_watch_layer(block, handles) for block in model.backbone.layers]
    mtp_blocks = list(model.mtp.layers) if model.mtp is not None else []
    mtp_stats = [_watch_layer(block, handles) for block in mtp_blocks]
    cos_sum = torch.zeros(len(model.backbone.layers))
    tokens = 0

    def cosine(i: int):
        def hook(m, args, out) -> None:
            cos_sum[i] += (1 - F.cosine_similarity(args[0].float(), out.float(), dim=-1)).sum().cpu()
        return hook

    handles += [layer.register_forward_hook(cosine(i)) for i, layer in enumerate(model.backbone.layers)]
    try:
        total, count = 0.0, 0
        for x, y in batches:
            out = model(x, return_mtp=model.mtp is not None)
            s, n = lm_loss(out.logits, y)
            total, count = total + s, count + n
            tokens += x.numel()
    finally:
        for h in handles:
            h.remove()
    imp = Importance(
        hidden=torch.stack([m.score() for m in hidden]).sum(0),
        layers=[_layer_importance(b, s) for b, s in zip(model.backbone.layers, layer_stats)],
        mtp_layers=[_layer_importance(b, s) for b, s in zip(mtp_blocks, mtp_stats)],
        depth_cosine=cos_sum / tokens, base_loss=total / max(count, 1))
    if depth_loss:
        scores = []
        for layer in model.backbone.layers:
            h = layer.register_forward_hook(lambda m, args, out: args[0])  # the layer as the identity
            try:
                scores.append(loss_on(model, batches) - imp.base_loss)
            finally:
                h.remove()
        imp.depth_loss = torch.tensor(scores)
    model.train(was_training)
    return imp
