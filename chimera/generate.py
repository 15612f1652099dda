"""Cached generation: chunked prefill, then one token per step; greedy or sampled (temperature,
top-k, top-p), stop tokens, batches of prompts of different lengths (left-padded and masked)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from chimera.models.cache import HybridCache
from chimera.models.sampling import Sampler


@dataclass
class SamplingConfig:
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


@dataclass
class ThinkingBudget:
    """Reasoning-budget control: at most ``max_thinking_tokens`` (N) inside ``<think>``, plus a grace.

    Once N thinking tokens are out without ``</think>``, the segment is closed right after the next
    newline within the grace window (default ceil(10% of N)), or ``</think>`` is forced when the
    grace runs out. The answer then runs under its own limit ``max_answer_tokens``.
    """

    max_thinking_tokens: int
    think_start_id: int
    think_end_id: int
    newline_ids: tuple[int, ...]
    grace: int | None = None
    max_answer_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_thinking_tokens < 0:
            raise ValueError(f"max_thinking_tokens={self.max_thinking_tokens} must be >= 0")
        if self.grace is None:
            self.grace = -(-self.max_thinking_tokens // 10)

    def start(self, prompts: Sequence[Sequence[int]]) -> BudgetState:
        return BudgetState(self, prompts)


class BudgetState:
    """Per-sequence thinking / answer counters for one ``generate`` call."""

    def __init__(self, budget: ThinkingBudget, prompts: Sequence[Sequence[int]]):
        self.b = budget
        self.thinking = [_open_think(p, budget.think_start_id, budget.think_end_id) for p in prompts]
        self.n_think = [0] * len(prompts)
        self.n_answer = [0] * len(prompts)
        self.close_next = [False] * len(prompts)

    def force(self, i: int) -> int | None:
        """The token row i must emit now, if any."""
        if self.thinking[i] and (self.close_next[i] or self.n_think[i] >= self.b.max_thinking_tokens + self.b.grace):
            return self.b.think_end_id
        return None

    def observe(self, i: int, token: int) -> None:
        if self.thinking[i]:
            if token == self.b.think_end_id:
                self.thinking[i] = False
            else:
                self.n_think[i] += 1
                if self.n_think[i] >= self.b.max_thinking_tokens and token in self.b.newline_ids:
                    self.close_next[i] = True
        else:  # once closed, thinking does not restart: a stray <think> counts against the answer
            self.n_answer[i] += 1

    def done(self, i: int) -> bool:
        limit = self.b.max_answer_tokens
        return limit is not None and not self.thinking[i] and self.n_answer[i] >= limit


def _open_think(prompt: Sequence[int], start_id: int, end_id: int) -> bool:
    """Whether the prompt ends inside an unclosed <think> segment."""
    last_start = max((i for i, t in enumerate(prompt) if t == start_id), default=-1)
    last_end = max((i for i, t in enumerate(prompt) if t == end_id), default=-1)
    return last_start > last_end


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (b, vocab) -> next token ids (b,)."""
    sampler = cfg.sampler()
    if sampler.greedy:
        return logits.argmax(-1)
    return torch.multinomial(sampler.probs(logits), 1, generator=generator).squeeze(-1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths -> ids (b, L) and mask (b, L), padding on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), L, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, L - len(p):] = True
    return ids, mask


@torch.no_grad()
def prefill(model, ids: torch.Tensor, cache: HybridCache, mask: torch.Tensor | None = None,
            chunk_size: int = 0) -> torch.Tensor:
    """Run the prompt through the model into ``cache``, ``chunk_size`` tokens at a time (0: at once).
    Returns the logits of the last position (b, vocab)."""
    step = chunk_size if chunk_size > 0 else ids.size(1)
    out = None
    for start in range(0, ids.size(1), step):
        sl = slice(start, start + step)
        m = None if mask is None or bool(mask.all()) else mask[:, sl]
        out = model(ids[:, sl], cache=cache, attention_mask=m, logits_to_keep=1).logits
    return out[:, -1]


@torch.no_grad()
def generate(model, prompts: Sequence[Sequence[int]], cfg: SamplingConfig | None = None,
             pad_id: int = 0, prefill_chunk: int = 0, budget: ThinkingBudget | None = None,
             compile: bool = False) -> list[list[int]]:
    """Generate continuations for a batch of token-id prompts; returns the new tokens of each
    (up to and including its stop token). ``budget`` limits the thinking segment. ``compile``
    decodes on the fast path (``chimera.models.static_decode``: static caches, compiled step)."""
    cfg = cfg or SamplingConfig()
    cfg.sampler()  # a bad temperature / top_k / top_p fails here, before any work
    device = model.lm_head.weight.device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    b = ids.size(0)
    gen = None
    if cfg.seed is not None:
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
    capacity = ids.size(1) + cfg.max_new_tokens
    if compile:
        from chimera.models.static_decode import STATIC_PREFILL_MAX, StaticDecoder
    if compile and b == 1 and ids.size(1) <= STATIC_PREFILL_MAX:  # a short prompt: prefill in compiled chunks too
        fast, logits = StaticDecoder.from_prompt(model, list(prompts[0]), capacity, compile=True)
    else:
        cache = model.new_cache(b, kv_capacity=capacity)
        logits = prefill(model, ids, cache, mask, prefill_chunk)
        if compile:
            fast = StaticDecoder(model, cache, capacity, compile=True)
            cache = None  # copied into the static buffers: free it
    outputs: list[list[int]] = [[] for _ in range(b)]
    done = [False] * b
    stops = set(cfg.stop_tokens)
    state = budget.start(prompts) if budget is not None else None
    for n in range(1, cfg.max_new_tokens + 1):
        nxt = sample_next(logits, cfg, gen)
        if state is not None:
            forced = [state.force(i) for i in range(b)]
            if any(f is not None for f in forced):
                nxt = torch.tensor([t if f is None else f for t, f in zip(nxt.tolist(), forced)], device=device)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                outputs[i].append(t)
                done[i] = t in stops
                if state is not None:
                    state.observe(i, t)
                    done[i] = done[i] or state.done(i)
        if all(done) or n == cfg.max_new_tokens:  # no forward for a token that will not be sampled
            break
        logits = fast.step(nxt) if compile else model(nxt[:, None], cache=cache, logits_to_keep=1).logits[:, -1]
    return outputs
