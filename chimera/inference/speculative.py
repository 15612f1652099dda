"""Self-speculative decoding with the model's own MTP layers (one sequence, greedy or sampled), on the
model's ``step`` and ``Cache``: one round (verify, keep a prefix, draft every depth) is one call,
eager or one compiled graph; the eager run is the reference for the compiled one.

1. The main model verifies ``block = [next committed token, d_1 .. d_D]`` at positions L .. L+D;
   ``chimera.inference.sampling.verify`` keeps ``a`` drafts (greedy: those that agree with the main
   model's argmax) and picks the token after them; the main cache keeps a + 1 positions (frontier
   F = L + a), and the committed sequence grows by ``d_1 .. d_a, token``.
2. Depth k (1 .. D) runs the D + k positions L-k+1 .. L+D: inputs (h_{k-1}[t], embed(seq[t+k])),
   where h_{k-1} is depth k-1's output of this round behind ``carry[k-1]``, depth k-1's output at
   its last committed position from the round before (depth 0 = the verify forward's hidden
   states; depth 1 needs no carry). Its first a + 1 positions are committed (t + k <= F + 1) and
   kept; position F, built on the drafts d_1 .. d_{k-1} of this round, drafts d_k; the rest is
   rolled back. All of it is data-independent in shape: ``a`` is a tensor used as an index.

So before a round, the main cache holds positions < L and depth k's cache positions < L - k + 1.
Prefill (``prefill_round``, one call per prompt chunk through the main model and every depth)
establishes this for L = P, the prompt's length, and drafts the first round's block.

A round can be told to emit fewer tokens: at most ``cap + 1``, and none past a draft in ``ends``
(an accepted draft is itself a sample of the main model, so cutting there keeps every token's
distribution). With that the thinking budget holds exactly: rounds are capped so that a forced
``</think>`` is only ever due at a round's first token (``force``), and ``bias`` masks ``<think>`` /
``</think>`` once the segment is closed. Tokens are drawn by inverse CDF at uniforms drawn on the host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from chimera.inference.budget import UNLIMITED, ThinkingBudget
from chimera.inference.compiled import maybe_compiled
from chimera.inference.decoder import PREFILL_CHUNK, STATIC_PREFILL_MAX, pad_to_chunk, padded_capacity
from chimera.inference.generate import generate_batch
from chimera.inference.sampling import GREEDY, Sampler, Uniforms, draw, verify
from chimera.models.cache import Cache


@dataclass
class SpeculativeStats:
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    seconds: float = 0.0
    history: list[tuple[int, list[int]]] = field(default_factory=list)
    """Per round: the frontier index L and the drafted tokens (for inspection and tests)."""

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(1, self.drafted)


def draft_depth(cfg, depth: int | None) -> int:
    """The number of tokens to draft: by default the trained MTP depths. One block shared by all depths
    (``mtp_share_block``) can be applied recursively past them, as far as its drafts stay useful."""
    D = cfg.mtp_depths if depth is None else depth
    if not cfg.mtp_depths:
        raise ValueError("the model has no MTP layers to draft with")
    if D < 1 or (D > cfg.mtp_depths and not cfg.mtp_share_block):
        raise ValueError(f"depth={D} must be between 1 and the model's mtp_depths={cfg.mtp_depths} "
                         f"(deeper drafts need one MTP block shared by all depths)")
    if D > PREFILL_CHUNK:
        raise ValueError(f"depth={D} is more than the speculative decoder drafts (at most {PREFILL_CHUNK})")
    return D


def _depth(model, k: int, h_prev: torch.Tensor, tokens: torch.Tensor, cache: Cache, n_keep: torch.Tensor):
    """MTP depth k over n positions from its cache's next position; keeps the first ``n_keep`` -> output."""
    ctx = cache.context(tokens.size(1), record=True)
    h = model.mtp.step(k, h_prev, model.backbone.embeddings(tokens), cache, ctx)
    cache.advance(ctx, n_keep)
    return h


def prefill_round(model, tokens: torch.Tensor, ahead: torch.Tensor, main: Cache, depths: list[Cache],
                  m: torch.Tensor, last: torch.Tensor, sampler: Sampler, u: torch.Tensor, q: torch.Tensor,
                  bias: torch.Tensor, force: torch.Tensor):
    """A right-padded chunk of the prompt through the main model and every MTP depth at once.

    tokens (1, C), the first ``m`` real; ``ahead`` (1, C + D) the tokens after each position as far as
    the prompt goes. Depth k reads the main model's (k = 1) or depth k-1's output at the same
    positions, so all of them keep the first m positions, except in the prompt's last chunk
    (``last`` = 1): there the main model's next token (``force`` when >= 0) and each depth's draft
    (read at the last real position) continue ``ahead``, depth k keeps only positions up to P - k, and
    the result is the first round's ``[next token, d_1 .. d_D]`` (drawn at the uniforms ``u`` (D+1,))
    and carry (depth k's output at P - k, k < D); ``q`` (D, vocab) receives the drafts' distributions.
    Other chunks compute the same things, meaningless, and ignore them.
    """
    C, D = tokens.size(1), len(depths)
    ctx = main.context(C, record=True)
    h = model.backbone.step(model.backbone.embeddings(tokens), main, ctx)
    main.advance(ctx, m)
    ahead, block, carry, probs = ahead[0], [], [], []
    for k in range(D + 1):
        if k:
            h = _depth(model, k, h, ahead[None, k - 1:k - 1 + C], depths[k - 1], m - last * (k - 1))
            if k < D:
                carry.append(h[0].index_select(0, (m - k).clamp(min=0)))
        probs.append(sampler.probs(model.lm_head(h[0].index_select(0, m - 1)) + bias))
        token = draw(probs[-1], u[k:k + 1])  # in the last chunk: seq[P + k]
        if not k:
            token = torch.where(force >= 0, force, token)
        ahead = torch.where(last.bool(), ahead.index_put((m + k - 1,), token), ahead)
        block.append(token)
    q.copy_(torch.cat(probs[1:]))
    return torch.cat(block), carry


def speculative_round(model, block: torch.Tensor, main: Cache, depths: list[Cache], carry: list[torch.Tensor],
                      sampler: Sampler, u: torch.Tensor, q: torch.Tensor, bias: torch.Tensor, cap: torch.Tensor,
                      ends: torch.Tensor, force: torch.Tensor) -> torch.Tensor:
    """One round (see the module doc). block (1, D+1), u (2D+1,) uniforms (D+1 to verify, D to draft),
    q (D, vocab) the distributions of block's drafts, replaced by the new drafts'; ``cap`` (1,), ``ends``
    (E,) and ``force`` (1,) limit what the round emits -> [a, token, new drafts (D)]."""
    D = block.size(1) - 1
    ctx = main.context(D + 1, record=True)
    hidden = model.backbone.step(model.backbone.embeddings(block), main, ctx)  # (1, D+1, d)
    drafts = block[0, 1:]
    a, token = verify(sampler.probs(model.lm_head(hidden[0]) + bias), q, drafts, u[:D + 1])
    hit = torch.isin(drafts, ends)  # a kept draft that ends the round is its last token
    limit = torch.minimum(cap, torch.where(hit.any(), hit.long().argmax(), D)).reshape(1)
    cut = a.reshape(1) > limit
    a = torch.where(cut, limit, a.reshape(1))
    token = torch.where(cut, drafts.index_select(0, limit.clamp(max=D - 1)), token.reshape(1))
    token = torch.where(force >= 0, force, token)
    main.advance(ctx, a + 1)
    # ahead[j] = seq[L + 1 + j]: the kept drafts, the token, then the new drafts as they come
    ahead = torch.cat([drafts, block.new_zeros(D + 1)]).index_put((a,), token)
    h, new_drafts, probs, new_carry = hidden, [], [], []
    for k in range(1, D + 1):
        if k > 1:
            h = torch.cat([carry[k - 2][:, None], h], 1)  # depth k-1 at position L-k+1, then L-k+2 ..
        h = _depth(model, k, h, ahead[None, :D + k], depths[k - 1], a + 1)
        probs.append(sampler.probs(model.lm_head(h[0].index_select(0, a + k - 1)) + bias))  # (1, vocab)
        draft = draw(probs[-1], u[D + k:D + k + 1])  # (1,)
        ahead = ahead.index_put((a + k,), draft)
        new_drafts.append(draft)
        new_carry.append(h[0].index_select(0, a))
    for c, new in zip(carry, new_carry):  # depth k's output at its last committed position
        c.copy_(new)
    q.copy_(torch.cat(probs))
    return torch.cat([a, token, *new_drafts])


class SpeculativeDecoder:
    """Self-speculative decoding of one sequence at a time, eager or compiled, greedy or as ``sampler``
    says. Needs a prompt of at least ``depth`` tokens (depth k's cache starts k positions behind)."""

    def __init__(self, model, depth: int | None = None, compile: bool = False, sampler: Sampler = GREEDY):
        self.model = model
        self.depth = draft_depth(model.config, depth)
        self.compile = compile
        self.sampler = sampler

    @torch.no_grad()
    def generate(self, prompt: list[int], max_new_tokens: int, stop_tokens: tuple[int, ...] = (),
                 seed: int | None = None, budget: ThinkingBudget | None = None) -> tuple[list[int], SpeculativeStats]:
        """Up to ``max_new_tokens`` tokens and the round statistics; ``seed`` fixes the draws."""
        model, D = self.model, self.depth
        if len(prompt) < D:
            raise ValueError(f"the speculative decoder needs a prompt of at least depth={D} tokens")
        t0 = time.perf_counter()
        stats = SpeculativeStats()
        device = model.lm_head.weight.device
        uniforms = Uniforms(self.sampler, seed, device)
        tracker = None if budget is None else budget.track(prompt)
        bias = torch.zeros(model.config.vocab_size, device=device)
        ends = torch.tensor([-1 if tracker is None else budget.think_end_id], device=device)

        def limits() -> tuple[torch.Tensor, torch.Tensor]:
            """The next round's cap and forced token, from the budget."""
            if tracker is not None and tracker.closed:
                bias[list(budget.segment_ids)] = float("-inf")
            room = UNLIMITED if tracker is None else tracker.room()
            forced = None if tracker is None else tracker.forced()
            cap = D if room > D else max(0, room - 1)
            return (torch.tensor([cap], device=device),
                    torch.tensor([-1 if forced is None else forced], device=device))

        capacity = padded_capacity(len(prompt) + max_new_tokens + D + 1)
        q = torch.zeros(D, model.config.vocab_size, device=device)
        _, force = limits()
        main, depths, carry, block = self._prefill(prompt, capacity, uniforms(D + 1), q, bias, force)
        round_fn = maybe_compiled(speculative_round, self.compile)
        out: list[int] = []

        def emit(tokens: list[int]) -> bool:
            """Append tokens; whether generation is over."""
            for t in tokens:
                out.append(t)
                if tracker is not None:
                    tracker.observe(t)
                if t in stop_tokens or len(out) >= max_new_tokens or (tracker is not None and tracker.done()):
                    return True
            return False

        L = len(prompt)
        finished = emit([block[0]])
        while not finished:
            ids = torch.tensor([block], device=device)
            u = torch.cat([uniforms(D + 1), uniforms(D)])
            cap, force = limits()
            res = round_fn(model, ids, main, depths, carry, self.sampler, u, q, bias, cap, ends, force).tolist()
            a, token, drafts = res[0], res[1], res[2:]
            stats.history.append((L, block[1:]))
            stats.rounds += 1
            stats.drafted += D
            stats.accepted += a
            finished = emit([*block[1:a + 1], token])
            L += a + 1
            block = [token, *drafts]
        stats.seconds = time.perf_counter() - t0
        return out, stats

    def _prefill(self, prompt: list[int], capacity: int, u: torch.Tensor, q: torch.Tensor, bias: torch.Tensor,
                 force: torch.Tensor):
        """Prefill the main model and every depth up to the round invariant and draft the first round.

        The prompt's last ``PREFILL_CHUNK`` positions (at least D: the drafts come from its last
        position) go through ``prefill_round`` as its last chunk; what comes before them goes through it
        too in chunks (a prompt of up to ``STATIC_PREFILL_MAX`` tokens), or else through the model's
        sequence forward (the chunked scan), then is copied into the caches. ``u`` (D+1,): the uniforms
        of the first token and the first drafts, whose distributions go to ``q``."""
        model, D, P = self.model, self.depth, len(prompt)
        device = model.lm_head.weight.device
        ids = torch.tensor([prompt], device=device)
        split = max(0, P - PREFILL_CHUNK)
        step = maybe_compiled(prefill_round, self.compile)
        main = model.new_cache(1, capacity)
        depths = [model.new_mtp_cache(1, capacity) for _ in range(D)]

        def chunk(start: int, m: int, last: int):
            ahead = pad_to_chunk(ids[:, start + 1:start + 1 + PREFILL_CHUNK + D], PREFILL_CHUNK + D)
            return step(model, pad_to_chunk(ids[:, start:start + m]), ahead, main, depths, _at(m, device),
                        _at(last, device), self.sampler, u, q, bias, force)

        if P <= STATIC_PREFILL_MAX:
            for start in range(0, split, PREFILL_CHUNK):
                chunk(start, min(PREFILL_CHUNK, split - start), 0)
        elif split:
            self._sequence_prefill(ids[:, :split + D], split, main, depths)
        block, carry = chunk(split, P - split, 1)
        return main, depths, carry, block.tolist()

    def _sequence_prefill(self, ids: torch.Tensor, n: int, main: Cache, depths: list[Cache]) -> None:
        """The first n positions of a long prompt (ids holds n + D tokens) through the model's sequence
        forward (main model, then each depth), copied into the caches."""
        model, one = self.model, torch.tensor([0], device=ids.device)
        src = model.new_cache(1, n)
        h = model(ids[:, :n], cache=src).hidden
        main.insert(one, src)
        for k, cache in enumerate(depths, start=1):
            src = model.new_mtp_cache(1, n)
            h = model.mtp(k, h, model.backbone.embeddings(ids[:, k:n + k]), src)
            cache.insert(one, src)


def _at(value: int, device) -> torch.Tensor:
    return torch.tensor([value], device=device)


@torch.no_grad()
def speculative_generate(model, prompt: list[int], max_new_tokens: int, stop_tokens: tuple[int, ...] = (),
                         depth: int | None = None, compile: bool = False, sampler: Sampler = GREEDY,
                         seed: int | None = None,
                         budget: ThinkingBudget | None = None) -> tuple[list[int], SpeculativeStats]:
    """Generate up to ``max_new_tokens`` with MTP drafts of ``depth`` tokens (default: all depths; more
    when the model shares one MTP block across depths), greedy or as ``sampler`` says; ``seed`` fixes
    the draws; ``budget`` caps the thinking segment exactly as plain decoding does. A prompt shorter
    than the depth is decoded plainly (no rounds)."""
    D = draft_depth(model.config, depth)
    if not prompt:
        raise ValueError("the prompt needs at least one token")
    if len(prompt) < D:
        c = generate_batch(model, [prompt], sampler=sampler, max_new_tokens=max_new_tokens, stop_tokens=stop_tokens,
                           seed=seed, compile=compile, budget=budget)[0]
        return c.tokens, SpeculativeStats()
    return SpeculativeDecoder(model, D, compile, sampler).generate(prompt, max_new_tokens, stop_tokens, seed, budget)
