"""The fast decode path: caches preallocated at fixed addresses and one (optionally compiled) step.

A ``HybridCache`` grows its KV buffers and replaces its Mamba tensors, which suits prefill,
speculation and rollback; a decode step on it is a chain of small kernels with Python between
them. ``StaticDecoder`` copies a prefilled cache into fixed buffers (Mamba conv / SSM state per
``M`` layer, KV of ``capacity`` positions and a key-validity mask per ``*`` layer), then decodes
one token per call, writing states in place: every step has the same shapes and addresses, so
``torch.compile`` turns the whole step into one graph of fused C++ kernels with no recompiles.
Attention reads the whole buffer under the validity mask, as static caches do.

The plain path (``HybridLM.forward`` with a ``HybridCache``) stays the reference: the tests hold
both the eager and the compiled static step to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from chimera.models.cache import HybridCache, KVState, MambaState
from chimera.models.hybrid import HybridLM


def mamba_step(mixer, h: torch.Tensor, conv: torch.Tensor, ssm: torch.Tensor) -> torch.Tensor:
    """One token through a ``Mamba2Mixer``; h (b, d) -> (b, d). Updates ``conv`` / ``ssm`` in place."""
    b = h.size(0)
    z, xbc, dt = mixer.in_proj(h).split([mixer.d_inner, mixer.conv_dim, mixer.h], dim=-1)
    window = torch.cat([conv, xbc[..., None].to(conv.dtype)], dim=-1)  # (b, c, k)
    conv.copy_(window[..., 1:])
    xbc = (window * mixer.conv1d.weight[:, 0]).sum(-1)
    if mixer.conv1d.bias is not None:
        xbc = xbc + mixer.conv1d.bias
    x, B, C = F.silu(xbc).split([mixer.d_inner, mixer.g * mixer.n, mixer.g * mixer.n], dim=-1)
    dt = F.softplus(dt.float() + mixer.dt_bias.float()).clamp(min=mixer.cfg.time_step_min)  # (b, h)
    dA = torch.exp(dt * -torch.exp(mixer.A_log.float()))
    x = x.reshape(b, mixer.h, mixer.p).float()
    rep = mixer.h // mixer.g
    B = B.view(b, mixer.g, 1, mixer.n).float().expand(b, mixer.g, rep, mixer.n).reshape(b, mixer.h, mixer.n)
    C = C.view(b, mixer.g, 1, mixer.n).float().expand(b, mixer.g, rep, mixer.n).reshape(b, mixer.h, mixer.n)
    new = ssm * dA[..., None, None] + (x * dt[..., None])[..., None] * B[:, :, None, :]
    ssm.copy_(new)
    y = (new @ C[..., None]).squeeze(-1) + x * mixer.D.float()[:, None]  # (b, h, p)
    y = mixer.norm(y.reshape(b, 1, mixer.d_inner), z[:, None])
    return mixer.out_proj(y[:, 0].to(h.dtype))


def attention_step(attn, h: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, pos: torch.Tensor,
                   valid: torch.Tensor) -> torch.Tensor:
    """One token through an ``Attention`` layer; h (b, d) -> (b, d). Writes its key / value at ``pos``."""
    b = h.size(0)
    g = attn.nh // attn.nkv
    q = attn.q_proj(h).view(b, attn.nkv, g, attn.hd)  # the query heads of each KV group share its keys
    k_buf.index_copy_(2, pos, attn.k_proj(h).view(b, attn.nkv, 1, attn.hd).to(k_buf.dtype))
    v_buf.index_copy_(2, pos, attn.v_proj(h).view(b, attn.nkv, 1, attn.hd).to(v_buf.dtype))
    y = F.scaled_dot_product_attention(q, k_buf, v_buf, attn_mask=valid[:, None, None, :])  # (b, nkv, g, hd)
    return attn.o_proj(y.reshape(b, attn.nh * attn.hd))


class StaticDecoder:
    """Decode a fixed batch one token at a time from a prefilled cache, at fixed shapes and addresses.

    ``capacity`` bounds prompt + generated tokens. ``compile=True`` compiles the step with
    ``torch.compile`` (the first step pays for compilation; shapes are dynamic, so later decoders
    of the same model reuse it at any capacity; batch 1 and larger batches compile separately).
    """

    def __init__(self, model: HybridLM, cache: HybridCache, capacity: int, compile: bool = False):
        if capacity < cache.seen + 1:
            raise ValueError(f"capacity={capacity} leaves no room to decode past the {cache.seen} cached positions")
        self.model = model
        self.capacity = capacity
        batch = _batch_size(cache)
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=model.lm_head.weight.device)
        self.valid[:, :cache.seen] = True if cache.key_mask is None else cache.key_mask
        self.states: list[tuple[torch.Tensor, ...] | None] = []
        for s in cache.layers:
            if isinstance(s, MambaState):
                self.states.append((s.conv.clone(), s.ssm.clone()))
            elif isinstance(s, KVState):
                k = s.k.new_zeros(batch, s.k.size(1), capacity, s.k.size(3))
                v = torch.zeros_like(k)
                k[:, :, :s.length], v[:, :, :s.length] = s.k[:, :, :s.length], s.v[:, :, :s.length]
                self.states.append((k, v))
            else:
                self.states.append(None)
        self.position = cache.seen
        self._step = _compiled_step() if compile else decode_step

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (b,) -> next-token logits (b, vocab) in fp32."""
        if self.position >= self.capacity:
            raise ValueError(f"the static cache is full ({self.capacity} positions); make it larger")
        pos = torch.tensor([self.position], device=self.valid.device)
        logits = self._step(self.model, tokens, pos, self.valid, self.states)
        self.position += 1
        return logits


def decode_step(model: HybridLM, tokens: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor,
                states: list) -> torch.Tensor:
    """The step itself (compiled or not): tokens (b,) -> logits (b, vocab)."""
    valid.index_fill_(1, pos, True)
    x = model.backbone.embeddings(tokens)
    for layer, state in zip(model.backbone.layers, states):
        h = layer.norm(x)
        if layer.kind == "M":
            h = mamba_step(layer.mixer, h, *state)
        elif layer.kind == "*":
            h = attention_step(layer.mixer, h, *state, pos, valid)
        else:
            h = layer.mixer(h[:, None])[:, 0]
        x = x + h
    return model.lm_head(model.backbone.norm_f(x)).float()


_COMPILED = None


def _compiled_step():
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(decode_step, fullgraph=True, dynamic=True)
    return _COMPILED


def _batch_size(cache: HybridCache) -> int:
    for s in cache.layers:
        if isinstance(s, MambaState):
            return s.conv.size(0)
        if isinstance(s, KVState):
            return s.k.size(0)
    if cache.key_mask is not None:
        return cache.key_mask.size(0)
    raise ValueError("the cache has no Mamba or attention layer to take the batch size from")
