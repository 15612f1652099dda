"""Batched generation for rollouts: many prompts, ``n`` samples each, per-token logprobs.

Every sample row draws its tokens by inverse CDF at uniforms from its own generator, seeded by
(seed, prompt index, sample index), so a row's tokens do not depend on which other rows share its
batch or when they finish. Finished rows leave the batch (compaction), so they stop costing compute.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from chimera.generate import left_pad, prefill
from chimera.models.sampling import GREEDY, Sampler, draw


@dataclass
class Completion:
    """One sampled continuation of ``prompts[prompt_index]``."""

    prompt_index: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    """log p(token) under the distribution it was drawn from (the sampler's, after temperature / top-k / top-p)."""
    finish_reason: str = "length"
    """"stop" (ended with a stop token, which is included) or "length" (max_new_tokens reached)."""


def row_uniforms(seed: int, prompt_index: int, sample: int, count: int) -> torch.Tensor:
    """The uniforms one sample row draws its tokens with: (count,) float32 in [0, 1)."""
    key = zlib.crc32(f"{seed}/{prompt_index}/{sample}".encode()) | (seed % 2**31) << 32
    g = torch.Generator().manual_seed(key)
    return torch.rand(count, generator=g)


@torch.no_grad()
def generate_batch(model, prompts: Sequence[Sequence[int]], *, n: int = 1, sampler: Sampler = GREEDY,
                   max_new_tokens: int, stop_tokens: Sequence[int] = (), seed: int | None = None,
                   compile: bool = False) -> list[Completion]:
    """``n`` completions of every prompt, prompt-major (``out[i * n + j]`` is sample j of prompt i)."""
    if compile:
        raise ValueError("generate_batch(compile=True) is not available yet; use compile=False")
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n={n} and max_new_tokens={max_new_tokens} must both be at least 1")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate_batch needs at least one prompt, each of at least one token")
    device = model.lm_head.weight.device
    if seed is None:
        seed = int(torch.randint(2**31, ()))
    ids, mask = left_pad(prompts, 0)
    cache = model.new_cache(len(prompts), kv_capacity=ids.size(1) + max_new_tokens)
    logits = prefill(model, ids.to(device), cache, mask.to(device))
    rows = torch.arange(len(prompts), device=device).repeat_interleave(n)
    cache, logits = cache.select(rows), logits.index_select(0, rows)
    out = [Completion(i) for i in range(len(prompts)) for _ in range(n)]
    u = torch.stack([row_uniforms(seed, c.prompt_index, j % n, max_new_tokens)
                     for j, c in enumerate(out)]).to(device)  # (rows, max_new_tokens)
    active = list(range(len(out)))
    stops = set(stop_tokens)
    for t in range(max_new_tokens):
        logp = sampler.log_probs(logits)  # (active, vocab)
        tok = draw(logp.exp(), u[active, t])
        lp = logp.gather(-1, tok[:, None])[:, 0]
        keep = []
        for k, (r, token, logprob) in enumerate(zip(active, tok.tolist(), lp.tolist())):
            out[r].tokens.append(token)
            out[r].logprobs.append(logprob)
            if token in stops:
                out[r].finish_reason = "stop"
            else:
                keep.append(k)
        if not keep or t == max_new_tokens - 1:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache, tok = cache.select(index), tok.index_select(0, index)
            active = [active[k] for k in keep]
        logits = model(tok[:, None], cache=cache, logits_to_keep=1).logits[:, -1]
    return out
