"""Generation entry points on the engine: ``generate_batch`` (rollouts: n samples per prompt with
per-token logprobs) and ``generate`` (continuations of a few prompts, with a thinking budget)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from chimera.inference.budget import ThinkingBudget
from chimera.inference.engine import Engine, Request
from chimera.inference.sampling import GREEDY, Sampler

MAX_ROWS = 256
"""Rows decoded together by default; more requests wait and take rows as others finish."""


@dataclass
class Completion:
    """One sampled continuation of ``prompts[prompt_index]``."""

    prompt_index: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    """log p(token) under the distribution it was drawn from (the sampler's, after temperature / top-k /
    top-p; 0.0 for greedy tokens)."""
    finish_reason: str = "length"
    """"stop" (ended with a stop token, which is included) or "length" (max_new_tokens or the answer budget)."""


@torch.no_grad()
def generate_batch(model, prompts: Sequence[Sequence[int]], *, n: int = 1, sampler: Sampler = GREEDY,
                   max_new_tokens: int, stop_tokens: Sequence[int] = (), seed: int | None = None,
                   compile: bool = False, budget: ThinkingBudget | None = None,
                   max_rows: int = MAX_ROWS) -> list[Completion]:
    """``n`` completions of every prompt, prompt-major (``out[i * n + j]`` is sample j of prompt i).

    Each sample draws at its own uniforms, from (seed, prompt index, sample index): the same seed gives
    the same completions whatever the batch. ``seed=None`` draws one from torch's global generator.
    ``budget`` applies a thinking budget to every sample; ``max_rows`` bounds the rows decoded at once."""
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    if not prompts:
        raise ValueError("generate_batch needs at least one prompt")
    if seed is None:
        seed = int(torch.randint(2**31, ()))
    stops = frozenset(stop_tokens)
    requests = [Request(list(p), max_new_tokens, sampler, stops, seed, f"{i}/{j}", budget)
                for i, p in enumerate(prompts) for j in range(n)]
    run(model, requests, compile, max_rows)
    return [Completion(i // n, r.tokens, r.logprobs, r.finish_reason) for i, r in enumerate(requests)]


def run(model, requests: list[Request], compile: bool = False, max_rows: int = MAX_ROWS) -> list[Request]:
    """Run ``requests`` to completion on one engine sized for them."""
    capacity = max(len(r.prompt) + r.max_new_tokens for r in requests)
    engine = Engine(model, min(max_rows, len(requests)), capacity, compile)
    for r in requests:
        engine.submit(r)
    for _ in engine.run():
        pass
    return requests


@dataclass
class SamplingConfig:
    """How ``generate`` samples (a ``Sampler`` plus limits and a seed)."""

    max_new_tokens: int = 64
    """Tokens to generate at most per sequence."""
    temperature: float = 0.0
    """0 means greedy."""
    top_k: int = 0
    """Keep the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability reaches p."""
    stop_tokens: tuple[int, ...] = ()
    """A sequence ends after emitting one of these."""
    seed: int | None = None

    def sampler(self) -> Sampler:
        """How each token is chosen (validates temperature, top_k and top_p)."""
        return Sampler(self.temperature, self.top_k, self.top_p)


@torch.no_grad()
def generate(model, prompts: Sequence[Sequence[int]], cfg: SamplingConfig | None = None,
             budget: ThinkingBudget | None = None, compile: bool = False) -> list[list[int]]:
    """Continuations of a batch of token-id prompts: the new tokens of each, up to and including its stop
    token. ``budget`` limits the thinking segment; ``compile`` runs each decode step as one compiled graph."""
    cfg = cfg or SamplingConfig()
    out = generate_batch(model, prompts, sampler=cfg.sampler(), max_new_tokens=cfg.max_new_tokens,
                         stop_tokens=cfg.stop_tokens, seed=cfg.seed, compile=compile, budget=budget)
    return [c.tokens for c in out]
