"""Self-speculative decoding on static caches: one round (verify, roll back, draft) is one graph.

The plain decoder (``chimera.speculative``) catches each MTP depth up over a varying number of
positions and rolls caches back with Python bookkeeping. Here every round has the same shapes,
so ``torch.compile`` makes it one graph and the host syncs once per round:

1. the main model verifies ``block = [next committed token, d_1 .. d_D]`` at positions L .. L+D;
   ``chimera.models.sampling.verify`` keeps ``a`` drafts (greedy: those that agree with the main
   model's argmax) and picks the token after them; the main cache keeps a + 1 positions (frontier
   F = L + a), and the committed sequence grows by ``d_1 .. d_a, token``.
2. depth k (1 .. D) runs the D + k positions L-k+1 .. L+D: inputs (h_{k-1}[t], embed(seq[t+k])),
   where h_{k-1} is depth k-1's output of this round behind ``carry[k-1]``, depth k-1's output at
   its last committed position from the round before (depth 0 = the verify forward's hidden
   states; depth 1 needs no carry). Its first a + 1 positions are committed (t + k <= F + 1) and
   kept; position F, built on the drafts d_1 .. d_{k-1} of this round, drafts d_k; the rest is
   rolled back. All of it is data-independent in shape: ``a`` is a tensor used as an index.

So before a round, the main cache holds positions < L and depth k's cache positions < L - k + 1.
Prefill (``prefill_round``, one graph per prompt chunk through the main model and every depth)
establishes this for L = P, the prompt's length, and drafts the first round's block.
Tokens are drawn by inverse CDF at uniforms drawn on the host, in the plain decoder's order, so
the two draw the same tokens from the same seed; greedy output equals plain greedy decoding
token for token (tests/test_static_speculate.py, tests/test_speculative_sampling.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from chimera.models.hybrid import HybridLM
from chimera.models.sampling import GREEDY, Sampler, Uniforms, draw, verify
from chimera.models.static_decode import (
    PREFILL_CHUNK,
    STATIC_PREFILL_MAX,
    Compiled,
    StaticCache,
    pad_to_chunk,
    padded_capacity,
    stack_forward,
)


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


def up_to_stop(tokens: list[int], stop_tokens: tuple[int, ...], limit: int) -> list[int]:
    """The generated tokens up to and including the first stop token, at most ``limit`` of them."""
    for i, t in enumerate(tokens):
        if t in stop_tokens:
            return tokens[:min(i + 1, limit)]
    return tokens[:limit]


def draft_depth(cfg, depth: int | None) -> int:
    """The number of tokens to draft: by default the trained MTP depths. One block shared by all depths
    (``mtp_share_block``) can be applied recursively past them, as far as its drafts stay useful."""
    D = cfg.mtp_depths if depth is None else depth
    if not cfg.mtp_depths:
        raise ValueError("the model has no MTP layers to draft with")
    if D < 1 or (D > cfg.mtp_depths and not cfg.mtp_share_block):
        raise ValueError(f"depth={D} must be between 1 and the model's mtp_depths={cfg.mtp_depths} "
                         f"(deeper drafts need one MTP block shared by all depths)")
    return D


def mtp_depth(model: HybridLM, layers: list, h_prev: torch.Tensor, tokens: torch.Tensor, cache: StaticCache,
              pos: torch.Tensor):
    """An MTP depth (its ``layers``) over positions pos .. pos+n-1 on a static cache -> (normed output, Commit)."""
    first = layers[0]
    x = first.eh_proj(torch.cat([first.enorm(model.backbone.embeddings(tokens)), first.hnorm(h_prev)], dim=-1))
    x, commit = stack_forward(layers, x, cache, pos)
    return layers[-1].final_layernorm(x), commit


def prefill_round(model: HybridLM, tokens: torch.Tensor, ahead: torch.Tensor, pos: torch.Tensor, main: StaticCache,
                  depths: list[StaticCache], m: torch.Tensor, last: torch.Tensor, sampler: Sampler,
                  u: torch.Tensor, q: torch.Tensor):
    """A right-padded chunk of the prompt through the main model and every MTP depth at once.

    tokens (1, C) at positions pos .. pos+C-1, the first ``m`` real; ``ahead`` (1, C + D) the tokens
    after each position (seq[pos+1 ..]) as far as the prompt goes. Depth k reads the main model's
    (k = 1) or depth k-1's output at the same positions, so all of them keep the first m positions,
    except in the prompt's last chunk (``last`` = 1): there the main model's next token and each
    depth's draft (read at the last real position) continue ``ahead``, depth k keeps only positions
    up to P - k, and the result is the first round's ``[next token, d_1 .. d_D]`` (drawn at the
    uniforms ``u`` (D+1,)) and carry (depth k's output at P - k, k < D); ``q`` (D, vocab) receives the
    drafts' distributions. Other chunks compute the same things, meaningless, and ignore them.
    """
    C, D = tokens.size(1), len(depths)
    x, commit = stack_forward(model.backbone.layers, model.backbone.embeddings(tokens), main, pos)
    commit(m)
    h = model.backbone.norm_f(x)
    ahead, block, carry, probs = ahead[0], [], [], []
    for k in range(D + 1):
        if k:
            h, commit = mtp_depth(model, model.mtp.block(k), h, ahead[None, k - 1:k - 1 + C], depths[k - 1], pos)
            commit(m - last * (k - 1))
            if k < D:
                carry.append(h[0].index_select(0, (m - k).clamp(min=0)))
        probs.append(sampler.probs(model.lm_head(h[0].index_select(0, m - 1))))
        token = draw(probs[-1], u[k:k + 1])  # in the last chunk: seq[P + k]
        ahead = torch.where(last.bool(), ahead.index_put((m + k - 1,), token), ahead)
        block.append(token)
    q.copy_(torch.cat(probs[1:]))
    return torch.cat(block), carry


def speculative_round(model: HybridLM, block: torch.Tensor, pos: torch.Tensor, main: StaticCache,
                      depths: list[StaticCache], carry: list[torch.Tensor], sampler: Sampler, u: torch.Tensor,
                      q: torch.Tensor) -> torch.Tensor:
    """One round (see the module doc). block (1, D+1), pos (1,) = L, u (2D+1,) uniforms (D+1 to verify,
    D to draft), q (D, vocab) the distributions of block's drafts, replaced by the new drafts'
    -> [a, token, new drafts (D)]."""
    D = block.size(1) - 1
    x, commit = stack_forward(model.backbone.layers, model.backbone.embeddings(block), main, pos)
    hidden = model.backbone.norm_f(x)  # (1, D+1, d)
    a, token = verify(sampler.probs(model.lm_head(hidden[0])), q, block[0, 1:], u[:D + 1])
    a, token = a.reshape(1), token.reshape(1)
    commit(a + 1)
    # ahead[j] = seq[L + 1 + j]: the kept drafts, the token, then the new drafts as they come
    ahead = torch.cat([block[0, 1:], block.new_zeros(D + 1)]).index_put((a,), token)
    h, drafts, probs, new_carry = hidden, [], [], []
    for k in range(1, D + 1):
        if k > 1:
            h = torch.cat([carry[k - 2][:, None], h], 1)  # depth k-1 at position L-k+1, then L-k+2 ..
        h, commit = mtp_depth(model, model.mtp.block(k), h, ahead[None, :D + k], depths[k - 1], pos - (k - 1))
        commit(a + 1)
        probs.append(sampler.probs(model.lm_head(h[0].index_select(0, a + k - 1))))  # (1, vocab)
        draft = draw(probs[-1], u[D + k:D + k + 1])  # (1,)
        ahead = ahead.index_put((a + k,), draft)
        drafts.append(draft)
        new_carry.append(h[0].index_select(0, a))
    for c, new in zip(carry, new_carry):  # depth k's output at its last committed position
        c.copy_(new)
    q.copy_(torch.cat(probs))
    return torch.cat([a, token, *drafts])


class StaticSpeculator:
    """Self-speculative decoding of one sequence on static caches (optionally compiled), greedy or as
    ``sampler`` says.

    Needs a prompt of at least ``depth`` tokens (depth k's cache starts k positions behind).
    """

    def __init__(self, model: HybridLM, depth: int | None = None, compile: bool = False,
                 sampler: Sampler = GREEDY):
        self.model = model
        self.depth = draft_depth(model.config, depth)
        if self.depth > PREFILL_CHUNK:
            raise ValueError(f"depth={self.depth} is more than the static path drafts (at most {PREFILL_CHUNK})")
        self.compile = compile
        self.sampler = sampler

    @torch.no_grad()
    def generate(self, prompt: list[int], max_new_tokens: int, stop_tokens: tuple[int, ...] = (),
                 seed: int | None = None):
        """Up to ``max_new_tokens`` tokens and the round statistics; ``seed`` fixes the draws."""
        model, D = self.model, self.depth
        if len(prompt) < D:
            raise ValueError(f"the static speculative path needs a prompt of at least depth={D} tokens")
        t0 = time.perf_counter()
        stats = SpeculativeStats()
        device = model.lm_head.weight.device
        uniforms = Uniforms(self.sampler, seed, device)
        capacity = padded_capacity(len(prompt) + max_new_tokens + D + 1)
        q = torch.zeros(D, model.config.vocab_size, device=device)
        main, depths, carry, block = self._prefill(prompt, capacity, uniforms(D + 1), q)
        round_fn = Compiled(speculative_round) if self.compile else speculative_round
        seq, L = [*prompt, block[0]], len(prompt)
        stopped = block[0] in stop_tokens
        while len(seq) - len(prompt) < max_new_tokens and not stopped:
            ids, pos = torch.tensor([block], device=device), torch.tensor([L], device=device)
            u = torch.cat([uniforms(D + 1), uniforms(D)])
            out = round_fn(model, ids, pos, main, depths, carry, self.sampler, u, q).tolist()
            a, token, drafts = out[0], out[1], out[2:]
            stats.history.append((L, block[1:]))
            stats.rounds += 1
            stats.drafted += D
            stats.accepted += a
            seq += [*block[1:a + 1], token]
            stopped = any(t in stop_tokens for t in seq[-(a + 1):])
            L += a + 1
            block = [token, *drafts]
        stats.seconds = time.perf_counter() - t0
        return up_to_stop(seq[len(prompt):], stop_tokens, max_new_tokens), stats

    def _prefill(self, prompt: list[int], capacity: int, u: torch.Tensor, q: torch.Tensor):
        """Prefill the main model and every depth up to the round invariant and draft the first round.

        The prompt's last ``PREFILL_CHUNK`` positions (at least D: the drafts come from its last
        position) go through ``prefill_round`` as its last chunk; what comes before them goes through
        it too in chunks (a prompt of up to ``STATIC_PREFILL_MAX`` tokens), or else through the plain
        path's chunked scan, then is copied into the static caches. ``u`` (D+1,): the uniforms of the first
        token and the first drafts, whose distributions go to ``q``."""
        model, D, P = self.model, self.depth, len(prompt)
        w = model.lm_head.weight
        ids = torch.tensor([prompt], device=w.device)
        split = max(0, P - PREFILL_CHUNK)
        step = Compiled(prefill_round) if self.compile else prefill_round

        def chunk(start: int, m: int, last: int):
            ahead = pad_to_chunk(ids[:, start + 1:start + 1 + PREFILL_CHUNK + D], PREFILL_CHUNK + D)
            return step(model, pad_to_chunk(ids[:, start:start + m]), ahead, _at(start, w.device), main, depths,
                        _at(m, w.device), _at(last, w.device), self.sampler, u, q)

        if P <= STATIC_PREFILL_MAX:
            main = StaticCache.empty(model.config, 1, capacity, w.device, w.dtype)
            depths = [StaticCache.empty(model.config, 1, capacity, w.device, w.dtype, model.config.mtp_pattern)
                      for _ in range(D)]
            for start in range(0, split, PREFILL_CHUNK):
                chunk(start, min(PREFILL_CHUNK, split - start), 0)
        else:
            main, depths = self._plain_prefill(ids, split, capacity)
        block, carry = chunk(split, P - split, 1)
        return main, depths, carry, block.tolist()

    def _plain_prefill(self, ids: torch.Tensor, n: int, capacity: int):
        """The first n positions of a long prompt through the plain path (main model, then each depth),
        copied into static caches."""
        model, device = self.model, ids.device
        cache = model.new_cache(1, kv_capacity=capacity)
        h = model(ids[:, :n], cache=cache).hidden
        main, depths = StaticCache(cache, capacity, 1, device), []
        for k in range(1, self.depth + 1):
            cache_k = model.new_mtp_cache(1, kv_capacity=capacity)
            h = model.mtp(k, h, model.backbone.embeddings(ids[:, k:n + k]), cache_k)
            depths.append(StaticCache(cache_k, capacity, 1, device))
        return main, depths


def _at(position: int, device) -> torch.Tensor:
    return torch.tensor([position], device=device)
