"""Self-speculative decoding on static caches: one round (verify, roll back, draft) is one graph.

The plain decoder (``chimera.speculative``) catches each MTP depth up over a varying number of
positions and rolls caches back with Python bookkeeping. Here every round has the same shapes,
so ``torch.compile`` makes it one graph and the host syncs once per round:

1. the main model verifies ``block = [next committed token, d_1 .. d_D]`` at positions L .. L+D;
   ``a`` = how many drafts agree with its greedy predictions ``preds``; the main cache keeps
   a + 1 positions (frontier F = L + a), and the committed sequence grows by ``preds[:a + 1]``.
2. depth k (1 .. D) runs the D + k positions L-k+1 .. L+D: inputs (h_{k-1}[t], embed(seq[t+k])),
   where h_{k-1} is depth k-1's output of this round behind ``carry[k-1]``, depth k-1's output at
   its last committed position from the round before (depth 0 = the verify forward's hidden
   states; depth 1 needs no carry). Its first a + 1 positions are committed (t + k <= F + 1) and
   kept; position F, built on the drafts d_1 .. d_{k-1} of this round, drafts d_k; the rest is
   rolled back. All of it is data-independent in shape: ``a`` is a tensor used as an index.

So before a round, the main cache holds positions < L and depth k's cache positions < L - k + 1.
Greedy output equals plain greedy decoding token for token (tests/test_static_speculate.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from chimera.models.hybrid import HybridLM
from chimera.models.static_decode import (
    STATIC_PREFILL_MAX,
    Compiled,
    StaticCache,
    in_chunks,
    pad_to_chunk,
    padded_capacity,
    prefill_chunk,
    stack_forward,
    static_prefill,
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


def mtp_chunk(model: HybridLM, layers: list, h_prev: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor,
              cache: StaticCache, m: torch.Tensor) -> torch.Tensor:
    """A right-padded chunk through an MTP depth, keeping its first ``m`` positions (0: none, for drafts)."""
    out, commit = mtp_depth(model, layers, h_prev, tokens, cache, pos)
    commit(m)
    return out


def speculative_round(model: HybridLM, block: torch.Tensor, pos: torch.Tensor, main: StaticCache,
                      depths: list[StaticCache], carry: list[torch.Tensor]) -> torch.Tensor:
    """One round (see the module doc). block (1, D+1), pos (1,) = L -> [a, preds (D+1), drafts (D)]."""
    D = block.size(1) - 1
    x, commit = stack_forward(model.backbone.layers, model.backbone.embeddings(block), main, pos)
    hidden = model.backbone.norm_f(x)  # (1, D+1, d)
    preds = model.lm_head(hidden[0]).argmax(-1)  # (D+1,)
    a = torch.cumprod((block[0, 1:] == preds[:D]).long(), 0).sum().reshape(1)
    commit(a + 1)
    ahead = torch.cat([preds, preds.new_zeros(D)])  # ahead[j] = seq[L + 1 + j], drafts written as they come
    h, drafts, new_carry = hidden, [], []
    for k in range(1, D + 1):
        if k > 1:
            h = torch.cat([carry[k - 2][:, None], h], 1)  # depth k-1 at position L-k+1, then L-k+2 ..
        h, commit = mtp_depth(model, model.mtp.block(k), h, ahead[None, :D + k], depths[k - 1], pos - (k - 1))
        commit(a + 1)
        draft = model.lm_head(h[0].index_select(0, a + k - 1)).argmax(-1)  # (1,)
        ahead = ahead.index_put((a + k,), draft)
        drafts.append(draft)
        new_carry.append(h[0].index_select(0, a))
    for c, new in zip(carry, new_carry):  # depth k's output at its last committed position
        c.copy_(new)
    return torch.cat([a, preds, *drafts])


class StaticSpeculator:
    """Greedy self-speculative decoding of one sequence on static caches (optionally compiled).

    Needs a prompt of at least ``depth`` tokens (depth k's cache starts k positions behind).
    """

    def __init__(self, model: HybridLM, depth: int | None = None, compile: bool = False):
        self.model = model
        self.depth = draft_depth(model.config, depth)
        self.compile = compile

    @torch.no_grad()
    def generate(self, prompt: list[int], max_new_tokens: int, stop_tokens: tuple[int, ...] = ()):
        model, D = self.model, self.depth
        if len(prompt) < D:
            raise ValueError(f"the static speculative path needs a prompt of at least depth={D} tokens")
        t0 = time.perf_counter()
        stats = SpeculativeStats()
        device = model.lm_head.weight.device
        capacity = padded_capacity(len(prompt) + max_new_tokens + D + 1)
        main, depths, carry, block = self._prefill(prompt, capacity)
        round_fn = Compiled(speculative_round) if self.compile else speculative_round
        seq, L = [*prompt, block[0]], len(prompt)
        stopped = block[0] in stop_tokens
        while len(seq) - len(prompt) < max_new_tokens and not stopped:
            ids, pos = torch.tensor([block], device=device), torch.tensor([L], device=device)
            out = round_fn(model, ids, pos, main, depths, carry).tolist()
            a, preds, drafts = out[0], out[1:D + 2], out[D + 2:]
            stats.history.append((L, block[1:]))
            stats.rounds += 1
            stats.drafted += D
            stats.accepted += a
            seq += preds[:a + 1]
            stopped = any(t in stop_tokens for t in preds[:a + 1])
            L += a + 1
            block = [preds[a], *drafts]
        stats.seconds = time.perf_counter() - t0
        return up_to_stop(seq[len(prompt):], stop_tokens, max_new_tokens), stats

    def _prefill(self, prompt: list[int], capacity: int):
        """Prefill the main model (compiled chunks, or the plain scan for a long prompt) and every depth
        up to the round invariant, then draft at frontier P - 1 for the first round."""
        model, D, P = self.model, self.depth, len(prompt)
        w = model.lm_head.weight
        if P <= STATIC_PREFILL_MAX:
            main = StaticCache.empty(model.config, 1, capacity, w.device, w.dtype)
            hidden = static_prefill(model, prompt, main, Compiled(prefill_chunk) if self.compile else prefill_chunk)
        else:
            cache = model.new_cache(1, kv_capacity=capacity)
            hidden = model(torch.tensor([prompt], device=w.device), cache=cache).hidden
            main = StaticCache(cache, capacity, 1, w.device)
        seq = torch.tensor([[*prompt, int(model.lm_head(hidden[0, -1]).argmax())]], device=w.device)
        h, outs, depths, steps = hidden, [], [], []
        for k in range(1, D + 1):  # depth k consumes positions 0 .. P-k, in chunks
            cache_k = StaticCache.empty(model.config, 1, capacity, w.device, w.dtype, model.config.mtp_pattern)
            step = self._mtp_chunk()
            h = _mtp_prefill(step, model, model.mtp.block(k), h[:, :P - k + 1], seq[:, k:], cache_k)
            outs.append(h)
            depths.append(cache_k)
            steps.append(step)
        drafts, spec = [int(model.lm_head(outs[0][0, -1]).argmax())], outs[0][:, :0]
        for k in range(2, D + 1):  # depth k at positions P-k+1 .. P-1 on the drafts so far, then dropped
            h_prev = pad_to_chunk(torch.cat([outs[k - 2][:, -1:], spec], 1))
            ahead = pad_to_chunk(torch.tensor([drafts], device=w.device))
            spec = steps[k - 1](model, model.mtp.block(k), h_prev, ahead, _at(P - k + 1, w.device), depths[k - 1],
                                _at(0, w.device))[:, :k - 1]
            drafts.append(int(model.lm_head(spec[0, -1]).argmax()))
        carry = [o[:, -1].clone() for o in outs[:-1]]  # depth k's output at position P - k
        return main, depths, carry, [int(seq[0, -1]), *drafts]

    def _mtp_chunk(self):
        """A fresh wrapper per depth: each makes its first call with every guard (see ``Compiled``)."""
        return Compiled(mtp_chunk) if self.compile else mtp_chunk


def _mtp_prefill(step, model: HybridLM, layers: list, h_prev: torch.Tensor, ahead: torch.Tensor,
                 cache: StaticCache) -> torch.Tensor:
    """Positions 0 .. n-1 of an MTP depth (n = h_prev's length) in chunks of ``step``."""
    def call(start: int, m: int, at) -> torch.Tensor:
        return step(model, layers, pad_to_chunk(h_prev[:, start:start + m]), pad_to_chunk(ahead[:, start:start + m]),
                    at(start), cache, at(m))

    return in_chunks(h_prev.size(1), call, h_prev.device)


def _at(position: int, device) -> torch.Tensor:
    return torch.tensor([position], device=device)
