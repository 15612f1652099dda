"""The fast decode path: caches preallocated at fixed addresses and one (optionally compiled) step.

A ``HybridCache`` grows its KV buffers and replaces its Mamba tensors, which suits prefill and
training; a decode step on it is a chain of small kernels with Python between them. A
``StaticCache`` holds the same state in fixed buffers (Mamba conv / SSM state per ``M`` layer,
KV of ``capacity`` positions per ``*`` layer, one key-validity mask), and ``stack_forward`` runs
a few tokens through a stack of layers on it: every call has the same shapes and addresses, so
``torch.compile`` turns a whole step into one graph of fused C++ kernels with no recompiles.
Attention reads the whole buffer under the validity mask, as static caches do.

A forward leaves the Mamba states untouched and returns a ``Commit``; ``commit(m)`` then keeps
the first ``m`` of its positions (the rest are speculative drafts that were rejected). ``m`` may
be a tensor computed in the same graph, which is what lets a whole speculative round
(``chimera.models.static_speculate``) compile as one graph.

The plain path (``HybridLM.forward`` with a ``HybridCache``) stays the reference: the tests hold
the eager and the compiled static paths to it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, fields, is_dataclass

import torch
import torch.nn.functional as F
from torch import nn

from chimera.models import decode_attention
from chimera.models.cache import HybridCache, KVState, MambaState
from chimera.models.hybrid import HybridLM
from chimera.models.ssd import ssd_recurrent


class StaticCache:
    """A prefilled ``HybridCache`` copied into buffers of ``capacity`` positions.

    ``states[i]`` is ``(conv, ssm)`` for an ``M`` layer, ``(k, v)`` for a ``*`` layer, else None;
    ``valid`` (b, capacity) marks the positions whose keys count (written and not left padding).
    """

    def __init__(self, cache: HybridCache, capacity: int, batch: int | None = None, device=None):
        if capacity < cache.seen + 1:
            raise ValueError(f"capacity={capacity} leaves no room past the {cache.seen} cached positions")
        self.capacity = capacity
        if batch is None or device is None:  # a stack of MLP / MoE layers only has no state to tell
            batch, device = _batch_and_device(cache)
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.valid[:, :cache.seen] = True if cache.key_mask is None else cache.key_mask
        self.states: list[tuple[torch.Tensor, torch.Tensor] | None] = []
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

    @classmethod
    def empty(cls, config, batch: int, capacity: int, device, dtype, pattern: str | None = None) -> StaticCache:
        """Zero states for the layers of ``pattern`` (default the config's)."""
        return cls(HybridCache.empty(config, batch, device, dtype, 1, pattern), capacity, batch, device)


@dataclass
class Commit:
    """What a forward of n positions left pending: the Mamba windows / state histories and the
    positions whose keys it wrote. ``commit(m)`` keeps the first m positions (m: int or tensor)."""

    valid: torch.Tensor
    positions: torch.Tensor  # (n,)
    mamba: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def __call__(self, m: torch.Tensor | int) -> None:
        n = self.positions.numel()
        m = torch.as_tensor(m, device=self.positions.device).reshape(1)
        kept = torch.arange(n, device=m.device) < m  # (n,)
        self.valid.index_copy_(1, self.positions, kept.expand(self.valid.size(0), n))
        for conv, ssm, window, history in self.mamba:  # window (b, c, k-1+n), history (n+1, b, h, p, s)
            taps = m + torch.arange(conv.size(-1), device=m.device)
            conv.copy_(window.index_select(-1, taps))
            ssm.copy_(history.index_select(0, m)[0])


def mamba_tokens(mixer, h: torch.Tensor, conv: torch.Tensor, ssm: torch.Tensor, pending: Commit) -> torch.Tensor:
    """n tokens through a ``Mamba2Mixer`` from (conv, ssm); h (b, n, d) -> (b, n, d). The states
    are not written here: the window and every position's SSM state go to ``pending``."""
    b, n, _ = h.shape
    z, xbc, dt = mixer.in_proj(h).split([mixer.d_inner, mixer.conv_dim, mixer.h], dim=-1)
    window = torch.cat([conv, xbc.transpose(1, 2).to(conv.dtype)], dim=-1)  # (b, c, k-1+n)
    xbc = (window.unfold(-1, conv.size(-1) + 1, 1) * mixer.conv1d.weight[:, 0][:, None, :]).sum(-1)  # (b, c, n)
    if mixer.conv1d.bias is not None:
        xbc = xbc + mixer.conv1d.bias[:, None]
    x, B, C = F.silu(xbc.transpose(1, 2)).split([mixer.d_inner, mixer.g * mixer.n, mixer.g * mixer.n], dim=-1)
    dt = F.softplus(dt.float() + mixer.dt_bias.float()).clamp(min=mixer.cfg.time_step_min)  # (b, n, h)
    x = x.reshape(b, n, mixer.h, mixer.p)
    y, _, history = ssd_recurrent(ssm, x, dt, -torch.exp(mixer.A_log.float()), B.view(b, n, mixer.g, mixer.n),
                                  C.view(b, n, mixer.g, mixer.n), history=True)
    pending.mamba.append((conv, ssm, window, history))
    y = (y + x.float() * mixer.D.float()[:, None]).reshape(b, n, mixer.d_inner)
    return mixer.out_proj(mixer.norm(y, z).to(h.dtype))




def attention_tokens(attn, h: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                     pending: Commit) -> torch.Tensor:
    """n tokens through an ``Attention`` layer; h (b, n, d) -> (b, n, d). Writes their keys / values
    at ``pending.positions``; query i sees the valid keys and the block's keys up to its own."""
    b, n, _ = h.shape
    g = attn.nh // attn.nkv
    pos = pending.positions
    k_buf.index_copy_(2, pos, attn.k_proj(h).view(b, n, attn.nkv, attn.hd).transpose(1, 2).to(k_buf.dtype))
    v_buf.index_copy_(2, pos, attn.v_proj(h).view(b, n, attn.nkv, attn.hd).transpose(1, 2).to(v_buf.dtype))
    # the query heads of each KV group share its keys: fold them into the query axis (g * n rows)
    q = attn.q_proj(h).view(b, n, attn.nkv, g, attn.hd).permute(0, 2, 3, 1, 4).reshape(b, attn.nkv, g * n, attn.hd)
    key = torch.arange(k_buf.size(2), device=h.device)
    block = (key[None, :] >= pos[0]) & (key[None, :] <= pos[:, None])  # (n, capacity)
    mask = (pending.valid[:, None, :] | block).repeat(1, g, 1)  # (b, g * n, capacity)
    y = decode_attention.attend(q, k_buf, v_buf, mask[:, None])  # (b, nkv, g * n, hd)
    y = y.view(b, attn.nkv, g, n, attn.hd).permute(0, 3, 1, 2, 4).reshape(b, n, attn.nh * attn.hd)
    return attn.o_proj(y)


def stack_forward(layers: nn.ModuleList | list[nn.Module], x: torch.Tensor, cache: StaticCache,
                  pos: torch.Tensor) -> tuple[torch.Tensor, Commit]:
    """Residual blocks over x (b, n, d) whose first position sits at ``pos`` (a (1,) tensor); returns
    the output and the ``Commit`` that keeps any prefix of the n positions."""
    pending = Commit(cache.valid, pos + torch.arange(x.size(1), device=pos.device))
    for layer, state in zip(layers, cache.states):
        h = layer.norm(x)
        if layer.kind == "M":
            h = mamba_tokens(layer.mixer, h, *state, pending)
        elif layer.kind == "*":
            h = attention_tokens(layer.mixer, h, *state, pending)
        elif layer.kind == "E":
            h = layer.mixer(h, gathered=True)
        else:
            h = layer.mixer(h)
        x = x + h
    return x, pending


def prefill_chunk(model: HybridLM, tokens: torch.Tensor, pos: torch.Tensor, cache: StaticCache,
                  m: torch.Tensor) -> torch.Tensor:
    """A chunk of a prompt, right-padded to a fixed length: tokens (b, C) at ``pos``, the first ``m``
    real -> final hidden states (b, C, d); the cache keeps the first m positions."""
    x, commit = stack_forward(model.backbone.layers, model.backbone.embeddings(tokens), cache, pos)
    commit(m)
    return model.backbone.norm_f(x)


PREFILL_CHUNK = 16
STATIC_PREFILL_MAX = 256
"""Prompts up to this long (batch 1) are prefilled on the static path in compiled chunks of
``PREFILL_CHUNK`` tokens; longer ones go through the plain path's chunked scan, then are copied."""


def static_prefill(model: HybridLM, prompt: list[int], cache: StaticCache, step=prefill_chunk) -> torch.Tensor:
    """Prefill one sequence into an empty static cache, ``PREFILL_CHUNK`` tokens per call of ``step``
    (the capacity must cover the padded last chunk) -> final hidden states (1, len(prompt), d)."""
    ids = torch.tensor([prompt], device=cache.valid.device)
    return in_chunks(len(prompt), lambda start, m, at: step(model, pad_to_chunk(ids[:, start:start + m]), at(start),
                                                            cache, at(m)), ids.device)


def in_chunks(n: int, call, device) -> torch.Tensor:
    """``call(start, m, at)`` over consecutive chunks of up to ``PREFILL_CHUNK`` of n positions (``at``
    makes the (1,) position tensors); concatenates the first m positions of each output."""
    def at(i: int) -> torch.Tensor:
        return torch.tensor([i], device=device)

    outs = []
    for start in range(0, n, PREFILL_CHUNK):
        m = min(PREFILL_CHUNK, n - start)
        outs.append(call(start, m, at)[:, :m])
    return torch.cat(outs, 1)


def pad_to_chunk(x: torch.Tensor, length: int = PREFILL_CHUNK) -> torch.Tensor:
    """Right-pad dim 1 with zeros to ``length``."""
    pad = x.new_zeros(x.size(0), length - x.size(1), *x.shape[2:])
    return torch.cat([x, pad], 1)


CAPACITY_STEP = 64


def padded_capacity(n: int) -> int:
    """Room for ``n`` positions and the padding of a last prefill chunk, rounded up to a multiple of
    ``CAPACITY_STEP`` so that generations of similar lengths share cache shapes (see ``Compiled``)."""
    return -(-(n + PREFILL_CHUNK) // CAPACITY_STEP) * CAPACITY_STEP


def decode_step(model: HybridLM, tokens: torch.Tensor, pos: torch.Tensor, cache: StaticCache) -> torch.Tensor:
    """One token per row (compiled or not): tokens (b,) -> logits (b, vocab) in fp32."""
    x, commit = stack_forward(model.backbone.layers, model.backbone.embeddings(tokens)[:, None], cache, pos)
    commit(1)
    return model.lm_head(model.backbone.norm_f(x[:, 0])).float()


class StaticDecoder:
    """Decode a fixed batch one token at a time from a prefilled cache, at fixed shapes and addresses.

    ``capacity`` bounds prompt + generated tokens. ``compile=True`` compiles the step with
    ``torch.compile`` (the first step pays for compilation; shapes are dynamic, so later decoders
    of the same model reuse it at any capacity; batch 1 and larger batches compile separately).
    """

    def __init__(self, model: HybridLM, cache: HybridCache | StaticCache, capacity: int, compile: bool = False,
                 position: int | None = None):
        self.model = model
        self.cache = cache if isinstance(cache, StaticCache) else StaticCache(cache, capacity)
        self.capacity = capacity
        self.position = cache.seen if position is None else position
        self._step = Compiled(decode_step) if compile else decode_step

    @classmethod
    @torch.no_grad()
    def from_prompt(cls, model: HybridLM, prompt: list[int], capacity: int,
                    compile: bool = False) -> tuple[StaticDecoder, torch.Tensor]:
        """Prefill one prompt on the static path -> (decoder, next-token logits (1, vocab))."""
        w = model.lm_head.weight
        cache = StaticCache.empty(model.config, 1, padded_capacity(max(capacity, len(prompt))), w.device, w.dtype)
        hidden = static_prefill(model, prompt, cache, Compiled(prefill_chunk) if compile else prefill_chunk)
        return cls(model, cache, capacity, compile, len(prompt)), model.lm_head(hidden[:, -1]).float()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (b,) -> next-token logits (b, vocab) in fp32."""
        if self.position >= self.capacity:
            raise ValueError(f"the static cache is full ({self.capacity} positions); make it larger")
        pos = torch.tensor([self.position], device=self.cache.valid.device)
        logits = self._step(self.model, tokens, pos, self.cache)
        self.position += 1
        return logits


_COMPILED: dict = {}
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per model: the call signatures (``signature``) whose graph was chosen with every guard checked."""


class Compiled:
    """``fn`` under ``torch.compile`` as one graph with dynamic shapes and a C++ wrapper (no Python
    between its kernels), compiled once per process and shared by every caller. ``fn``'s first
    argument is the model.

    A decode step on a small model is as short as the checks around it, and Dynamo's guards cost
    most (up to a millisecond) on objects they have not seen, such as each generation's new
    caches. So a call runs with every guard only when its ``signature`` (the model, the grad and
    autocast modes, every tensor's shape, stride, dtype and device, every module's identity, every
    frozen dataclass's values, such as a ``Sampler``) is new for this ``fn``; otherwise, and on an
    instance's later calls, under ``skip_guard_eval_unsafe``.
    The guards passed or recompiled for that signature, and the graph they chose depends on
    nothing the signature leaves out, so it is the graph they would choose again.
    """

    def __init__(self, fn):
        decode_attention.build()  # before tracing: the graph calls the kernel if it builds
        if fn not in _COMPILED:
            _COMPILED[fn] = torch.compile(fn, fullgraph=True, dynamic=True, options={"cpp_wrapper": True})
        self.raw = fn
        self.fn = _COMPILED[fn]
        self.warm = False
        self.guarded_calls = 0

    def __call__(self, *args):
        if not self.warm:
            key = (self.raw, _modes(), signature(args[1:]))
            checked = _CHECKED.setdefault(args[0], set())
            if key not in checked:
                self.guarded_calls += 1
                out = self.fn(*args)
                checked.add(key)
                self.warm = True
                return out
            self.warm = True
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            return self.fn(*args)


def signature(obj) -> tuple | object:
    """What a graph's guards can tell apart in ``obj``, as a hashable key (see ``Compiled``)."""
    if isinstance(obj, torch.Tensor):
        return ("T", tuple(obj.shape), obj.stride(), obj.dtype, obj.device, obj.requires_grad)
    if isinstance(obj, StaticCache):
        return ("S", obj.capacity, signature(obj.valid), signature(obj.states))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, *map(signature, obj))
    if isinstance(obj, nn.Module):
        return ("M", id(obj))
    if obj is None or isinstance(obj, (int, float, bool, str)):
        return obj
    if is_dataclass(obj) and obj.__dataclass_params__.frozen:  # e.g. a Sampler: its values
        return (type(obj), *(signature(getattr(obj, f.name)) for f in fields(obj)))
    raise TypeError(f"no compile signature for {type(obj).__name__}")


def _modes() -> tuple:
    return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
            *(torch.is_autocast_enabled(d) and torch.get_autocast_dtype(d) for d in ("cpu", "cuda")))


def _batch_and_device(cache: HybridCache) -> tuple[int, torch.device]:
    for s in cache.layers:
        if isinstance(s, MambaState):
            return s.conv.size(0), s.conv.device
        if isinstance(s, KVState):
            return s.k.size(0), s.k.device
    raise ValueError("the cache has no Mamba or attention layer to take the batch size from")
