"""The Decoder: rows of one fixed-capacity ``Cache`` that decode together, eager or compiled.

``prefill`` puts a prompt into some rows (prefilled once, copied into each: the n samples of a
prompt share its prefill); ``step`` feeds one token per row and chooses the next one inside the
same call (sampling by inverse CDF at given uniforms, so a compiled step needs no random number
generator); ``select`` keeps some rows (finished rows stop costing compute). The same functions
run eagerly or as ``torch.compile``d graphs (``compile=True``); the eager run is the reference the
compiled one is tested against. The speculative decoder (``chimera.inference.speculative``) runs
its rounds on the same ``Cache`` and ``step`` methods of the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chimera.inference.compiled import maybe_compiled
from chimera.inference.sampling import draw, log_probs
from chimera.models.cache import Cache

PREFILL_CHUNK = 16
STATIC_PREFILL_MAX = 256
"""With ``compile=True``, prompts up to this long are prefilled in compiled chunks of ``PREFILL_CHUNK``
tokens (each chunk one graph); longer ones, and every prompt when eager, by the chunked scan."""
CAPACITY_STEP = 64


def padded_capacity(n: int) -> int:
    """Room for ``n`` positions and the padding of a last prefill chunk, rounded up to a multiple of
    ``CAPACITY_STEP`` so that generations of similar lengths share cache shapes (and compiled graphs)."""
    return -(-(n + PREFILL_CHUNK) // CAPACITY_STEP) * CAPACITY_STEP


@dataclass(frozen=True)
class RowSampling:
    """One sampler per row as tensors (b,), the next token's forced value (-1: none), an additive logit
    bias (b, vocab) (masked tokens get -inf), and whether any row restricts to top-k / top-p."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    force: torch.Tensor
    bias: torch.Tensor
    filtered: bool


def choose(logits: torch.Tensor, u: torch.Tensor, s: RowSampling) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (b, vocab), uniforms u (b,) -> each row's next token and its log-probability under the
    distribution it was drawn from (a forced token's too), both (b,)."""
    logp = log_probs(logits + s.bias, s.temperature, s.top_k, s.top_p, s.filtered)
    token = torch.where(s.force >= 0, s.force, draw(logp.exp(), u))
    return token, logp.gather(-1, token[:, None])[:, 0]


def decode_step(model, tokens: torch.Tensor, cache: Cache, u: torch.Tensor,
                s: RowSampling) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row in, the next one out: tokens (b,) -> (next tokens (b,), log-probabilities (b,))."""
    ctx = cache.context(1)
    h = model.backbone.step(model.backbone.embeddings(tokens)[:, None], cache, ctx)
    cache.advance(ctx)
    return choose(model.lm_head(h[:, 0]), u, s)


def prefill_chunk(model, tokens: torch.Tensor, cache: Cache, m: torch.Tensor) -> torch.Tensor:
    """A right-padded chunk of a prompt, tokens (b, C) with the first ``m`` real, at the rows' positions
    -> final hidden states (b, C, d); the cache keeps the first m positions."""
    ctx = cache.context(tokens.size(1), record=True)
    h = model.backbone.step(model.backbone.embeddings(tokens), cache, ctx)
    cache.advance(ctx, m)
    return h


def in_chunks(n: int, call) -> list[torch.Tensor]:
    """``call(start, m)`` over consecutive chunks of up to ``PREFILL_CHUNK`` of n positions."""
    return [call(start, min(PREFILL_CHUNK, n - start)) for start in range(0, n, PREFILL_CHUNK)]


def pad_to_chunk(x: torch.Tensor, length: int = PREFILL_CHUNK) -> torch.Tensor:
    """Right-pad dim 1 with zeros to ``length``."""
    return torch.cat([x, x.new_zeros(x.size(0), length - x.size(1), *x.shape[2:])], 1)


class Decoder:
    """``rows`` rows of ``capacity`` positions on ``model``'s device and dtype (see the module doc)."""

    def __init__(self, model, rows: int, capacity: int, compile: bool = False):
        self.model = model
        self.compile = compile
        self.cache = model.new_cache(rows, capacity)
        self._step = maybe_compiled(decode_step, compile)

    @property
    def rows(self) -> int:
        return self.cache.batch

    @property
    def device(self) -> torch.device:
        return self.cache.valid.device

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]], rows: list[list[int]]) -> torch.Tensor:
        """Prefill ``prompts`` and copy prompt i into each of ``rows[i]`` -> the logits after each prompt's
        last token, (len(prompts), vocab) in fp32. Prompts of one length P <= ``STATIC_PREFILL_MAX`` run in
        compiled chunks when compiled; otherwise all of them go through one right-padded sequence call
        (the padding changes no state: see ``HybridBackbone.forward``'s ``lengths``)."""
        lengths = [len(p) for p in prompts]
        P = max(lengths)
        if P + 1 > self.cache.capacity:
            raise ValueError(f"a prompt of {P} tokens leaves no room in a cache of {self.cache.capacity} positions")
        model, device = self.model, self.device
        if self.compile and P <= STATIC_PREFILL_MAX and min(lengths) == P:
            ids = torch.tensor(prompts, device=device)
            src = model.new_cache(len(prompts), padded_capacity(P))
            chunk = maybe_compiled(prefill_chunk, True)  # one per cache: its first call checks the guards
            outs = in_chunks(P, lambda start, m: chunk(model, pad_to_chunk(ids[:, start:start + m]), src,
                                                       torch.tensor(m, device=device))[:, :m])
            hidden = outs[-1][:, -1]
        else:
            ids = torch.tensor([p + [0] * (P - len(p)) for p in prompts], device=device)
            n = torch.tensor(lengths, device=device)
            src = model.new_cache(len(prompts), P)
            out = model.backbone(ids, cache=src, lengths=None if min(lengths) == P else n)
            hidden = out[torch.arange(len(prompts), device=device), n - 1]
        for i, r in enumerate(rows):
            self.cache.insert(torch.tensor(r, device=device), src.select(torch.tensor([i], device=device)),
                              lengths[i])
        return model.lm_head(hidden).float()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, u: torch.Tensor, sampling: RowSampling) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row consumes its token (b,) and chooses the next one at uniform ``u`` (b,)
        -> (tokens (b,), log-probabilities (b,)). Rows not in use compute along, harmlessly."""
        return self._step(self.model, tokens, self.cache, u, sampling)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (in that order)."""
        self.cache = self.cache.select(rows)
        if self.compile:  # a new cache: its first compiled call checks the guards again
            self._step = maybe_compiled(decode_step, True)
