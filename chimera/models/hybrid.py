"""HybridBackbone (embeddings -> pre-norm residual layers -> norm_f), HybridLM (+ lm_head) and
parameter counting.

Module names follow the HF NemotronH checkpoint (``backbone.layers.{i}.mixer...``), so the only
state-dict translation needed is for the MoE expert tensors (see ``models/hf.py``).

Two ways through the stack: ``forward`` over a sequence (training; prefill and RL rollouts with a
``Cache``) and ``step`` over a few tokens per row of a ``Cache`` (decoding and verification;
``chimera.inference`` compiles it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from chimera.models import hf
from chimera.models.block import Block
from chimera.models.cache import Cache, StepContext
from chimera.models.config import HybridConfig
from chimera.models.mamba2 import Mamba2Mixer
from chimera.models.moe import MoE
from chimera.models.mtp import MTP
from chimera.models.norm import RMSNorm


@torch.no_grad()
def init_weights(roots: list[nn.Module], cfg: HybridConfig) -> None:
    """Normal(0, initializer_range) for matrices, embeddings, routers and experts, zeros for biases,
    the SSM init for Mamba mixers, and Mamba out_proj scaled by 1/sqrt(n_layers) as in the reference."""
    std = cfg.initializer_range
    for root in roots:
        for m in root.modules():
            if isinstance(m, nn.Linear) and not m.weight.is_meta:
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding) and not m.weight.is_meta:
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, MoE) and not m.gate.weight.is_meta:
                nn.init.normal_(m.gate.weight, std=std)
                nn.init.normal_(m.experts.up_proj, std=std)
                nn.init.normal_(m.experts.down_proj, std=std)
        for m in root.modules():
            if isinstance(m, Mamba2Mixer) and not m.A_log.is_meta:
                m.reset_ssm_parameters()
                if cfg.rescale_prenorm_residual:
                    w = m.out_proj.weight
                    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                    w.div_(math.sqrt(cfg.num_layers))


class HybridBackbone(nn.Module):
    """The sequence model shared by the language model and the RL agents."""

    def __init__(self, cfg: HybridConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, kind) for kind in cfg.pattern)
        self.norm_f = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        init_weights([self], cfg)

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                cache: Cache | None = None, reset: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(b, l) token ids or (b, l, d) embeddings -> (b, l, d) final hidden states.

        With a ``cache``, every row continues from it (all rows at ``cache.length``) and it is updated.
        ``reset`` (b, l) starts a new sequence (an RL episode) at the marked positions. ``lengths`` (b,)
        (with a cache): rows are right-padded past their length; the cache keeps each row's real
        positions only (a prefill of prompts of different lengths in one call).
        """
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if cache is None:
            for layer in self.layers:
                x = layer(x, None, reset)
            return self.norm_f(x)
        cache.begin_sequence(x.size(1))
        for layer, state in zip(self.layers, cache.layers):
            x = layer(x, state, reset, lengths)
        cache.end_sequence(x.size(1), lengths)
        return self.norm_f(x)

    def step(self, x: torch.Tensor, cache: Cache, ctx: StepContext) -> torch.Tensor:
        """(b, n, d) embeddings of n tokens per row at ``ctx.positions`` -> (b, n, d) final hidden states.
        The caller advances the cache (``cache.advance(ctx, m)``)."""
        for layer, state in zip(self.layers, cache.layers):
            x = layer.step(x, state, ctx)
        return self.norm_f(x)

    def new_cache(self, batch: int, capacity: int = 0) -> Cache:
        """An empty cache on the backbone's device and dtype."""
        w = self.embeddings.weight
        return Cache.empty(self.layers, batch, capacity, w.device, w.dtype)


@dataclass
class LMOutput:
    logits: torch.Tensor  # (b, l, vocab) fp32
    hidden: torch.Tensor  # (b, l, d)
    aux_loss: torch.Tensor | None = None
    mtp_logits: list[torch.Tensor] | None = None  # depth k: (b, l - k, vocab), predicting token t + k + 1


class HybridLM(nn.Module):
    """Hybrid Mamba-2 / attention / MoE causal language model (HF NemotronHForCausalLM layout)."""

    def __init__(self, cfg: HybridConfig):
        super().__init__()
        self.config = cfg
        self.backbone = HybridBackbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.mtp = MTP(cfg) if cfg.mtp_depths else None
        init_weights([self.lm_head, *([self.mtp] if self.mtp is not None else [])], cfg)  # the backbone did its own
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None,
                        device: torch.device | str = "cpu") -> HybridLM:
        """Load an HF NemotronH checkpoint directory (config.json + safetensors, sharded or not)."""
        return hf.load_pretrained(cls, path, dtype=dtype, device=device)

    def save_pretrained(self, path: str | Path, max_shard_bytes: int = 2 * 1024**3) -> None:
        """Write an HF NemotronH checkpoint directory that `transformers` loads."""
        hf.save_pretrained(self, path, max_shard_bytes=max_shard_bytes)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, logits_to_keep: int = 0,
                return_mtp: bool = False) -> LMOutput:
        """input_ids (b, l) -> LMOutput with logits (b, l, vocab); ``logits_to_keep=n`` keeps the last n.
        ``return_mtp`` adds the MTP logits of every depth (training)."""
        hidden = self.backbone(input_ids, inputs_embeds, cache)
        h = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        logits = self.lm_head(h).float()
        mtp_logits = None
        if return_mtp and self.mtp is not None:
            if input_ids is None:
                raise ValueError("MTP needs input_ids (it embeds the tokens ahead)")
            mtp_logits = []
            h_prev = hidden
            T = input_ids.size(1)
            for k in range(1, self.config.mtp_depths + 1):
                if T - k <= 0:
                    break
                h_prev = self.mtp(k, h_prev[:, :T - k], self.backbone.embeddings(input_ids[:, k:]))
                mtp_logits.append(self.lm_head(h_prev).float())
        return LMOutput(logits=logits, hidden=hidden, aux_loss=self.moe_aux_loss(), mtp_logits=mtp_logits)

    def new_cache(self, batch: int, capacity: int = 256) -> Cache:
        """An empty inference cache of the main stack on the model's device and dtype."""
        return self.backbone.new_cache(batch, capacity)

    def new_mtp_cache(self, batch: int, capacity: int = 256) -> Cache:
        """An empty cache for one MTP depth."""
        w = self.backbone.embeddings.weight
        return Cache.empty(self.mtp.block(1), batch, capacity, w.device, w.dtype)

    # ---- training helpers ----------------------------------------------------------------------
    def moe_layers(self) -> list[MoE]:
        layers = [*self.backbone.layers, *(self.mtp.layers if self.mtp is not None else [])]
        return [layer.mixer for layer in layers if isinstance(layer.mixer, MoE)]

    def moe_aux_loss(self) -> torch.Tensor | None:
        losses = [m.aux_loss for m in self.moe_layers() if self.training and m.aux_loss is not None]
        return torch.stack(losses).sum() if losses else None

    def update_moe_bias(self, rate: float | None = None) -> None:
        """Apply the aux-loss-free bias update from the load seen since the last call."""
        rate = self.config.moe_bias_update_rate if rate is None else rate
        for m in self.moe_layers():
            m.update_bias(rate)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on matrices, none on biases, norms, embeddings' peers, A_log, D, dt_bias."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if p.dim() < 2 or getattr(p, "_no_weight_decay", False) or name.endswith("norm.weight"):
                no_decay.append(p)
            else:
                decay.append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def count_parameters(cfg: HybridConfig) -> dict[str, int]:
    """Total and per-token active parameter counts, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = HybridLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    inactive = 0  # the routed experts a token of the main stack does not use (MTP layers count in full)
    for m in (layer.mixer for layer in model.backbone.layers if isinstance(layer.mixer, MoE)):
        per_expert = (m.experts.up_proj.numel() + m.experts.down_proj.numel()) // cfg.n_routed_experts
        inactive += per_expert * (cfg.n_routed_experts - cfg.num_experts_per_tok)
    return {"total": total, "active": total - inactive,
            "attention_fraction": math.floor(1000 * cfg.pattern.count("*") / cfg.num_layers) / 1000}
