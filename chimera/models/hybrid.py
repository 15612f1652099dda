"""HybridBackbone (embeddings -> pre-norm residual layers -> norm_f) and HybridLM (+ lm_head).

Module names follow the HF NemotronH checkpoint (``backbone.layers.{i}.mixer...``), so the only
state-dict translation needed is for the MoE expert tensors (see ``models/hf.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from chimera.models.attention import Attention
from chimera.models.cache import HybridCache
from chimera.models.config import HybridConfig
from chimera.models.mamba2 import Mamba2Mixer
from chimera.models.mlp import MLP
from chimera.models.moe import MoE
from chimera.models.mtp import MTP
from chimera.models.norm import RMSNorm


class Block(nn.Module):
    """x + mixer(norm(x)) for one layer of kind M, *, - or E."""

    def __init__(self, cfg: HybridConfig, kind: str):
        super().__init__()
        self.kind = kind
        self.norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        if kind == "M":
            self.mixer: nn.Module = Mamba2Mixer(cfg)
        elif kind == "*":
            self.mixer = Attention(cfg)
        elif kind == "-":
            self.mixer = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)
        else:
            self.mixer = MoE(cfg)

    def forward(self, x: torch.Tensor, state=None, mask: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None, reset: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(x)
        if self.kind == "M":
            h = self.mixer(h, state, mask, reset)
        elif self.kind == "*":
            if reset is not None:
                raise ValueError("attention layers do not support episode resets; use M, - and E layers for "
                                 "recurrent policies (Mamba layers carry the memory)")
            h = self.mixer(h, state, key_mask)
        else:
            h = self.mixer(h)
        return x + h


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
                cache: HybridCache | None = None, attention_mask: torch.Tensor | None = None,
                reset: torch.Tensor | None = None) -> torch.Tensor:
        """(b, l) token ids or (b, l, d) embeddings -> (b, l, d) final hidden states.

        ``attention_mask`` (b, l): 1 for real tokens, 0 for left padding. With a ``cache``, the
        states continue from it and are updated in place. ``reset`` (b, l) starts a new sequence
        (an RL episode) at the marked positions.
        """
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        b, l, _ = x.shape
        key_mask = attention_mask
        if cache is not None:
            cache.extend_mask(attention_mask, b, l, x.device)
            key_mask = cache.key_mask
        for i, layer in enumerate(self.layers):
            state = None if cache is None else cache.layers[i]
            x = layer(x, state, attention_mask, key_mask, reset)
        return self.norm_f(x)


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
        from chimera.models.hf import load_pretrained

        return load_pretrained(path, dtype=dtype, device=device)

    def save_pretrained(self, path: str | Path, max_shard_bytes: int = 2 * 1024**3) -> None:
        """Write an HF NemotronH checkpoint directory that `transformers` loads."""
        from chimera.models.hf import save_pretrained

        save_pretrained(self, path, max_shard_bytes=max_shard_bytes)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, cache: HybridCache | None = None,
                attention_mask: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                logits_to_keep: int = 0, return_mtp: bool = False) -> LMOutput:
        """input_ids (b, l) -> LMOutput with logits (b, l, vocab); ``logits_to_keep=n`` keeps the last n.
        ``return_mtp`` adds the MTP logits of every depth (training)."""
        hidden = self.backbone(input_ids, inputs_embeds, cache, attention_mask)
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

    def new_cache(self, batch: int, kv_capacity: int = 256) -> HybridCache:
        """An empty inference cache on the model's device and dtype."""
        w = self.backbone.embeddings.weight
        return HybridCache.empty(self.config, batch, w.device, w.dtype, kv_capacity)

    # ---- training helpers ----------------------------------------------------------------------
    def new_mtp_cache(self, batch: int, kv_capacity: int = 256) -> HybridCache:
        """An empty cache for one MTP depth."""
        w = self.backbone.embeddings.weight
        return self.mtp.new_cache(batch, w.device, w.dtype, kv_capacity)

    def moe_layers(self) -> list[MoE]:
        layers = [*self.backbone.layers, *(self.mtp.layers if self.mtp is not None else [])]
        return [layer.mixer for layer in layers if layer.kind == "E"]

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
