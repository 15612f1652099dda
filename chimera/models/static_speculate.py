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

import torch

from chimera.models.hybrid import HybridLM
from chimera.models.static_decode import (
    STATIC_PREFILL_MAX,
    Compiled,
    StaticCache,
    padded_capacity,
    prefill_chunk,
    stack_forward,
    static_prefill,
)


def mtp_depth(model: HybridLM, depth: int, h_prev: torch.Tensor, tokens: torch.Tensor, cache: StaticCache,
              pos: torch.Tensor):
    """MTP depth ``depth`` over positions pos .. pos+n-1 on a static cache -> (normed output, Commit)."""
    layers = model.mtp.block(depth)
    first = layers[0]
    x = first.eh_proj(torch.cat([first.enorm(model.backbone.embeddings(tokens)), first.hnorm(h_prev)], dim=-1))
    x, commit = stack_forward(layers, x, cache, pos)
    return layers[-1].final_layernorm(x), commit


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
        h, commit = mtp_depth(model, k, h, ahead[None, :D + k], depths[k - 1], pos - (k - 1))
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
        cfg = model.config
        self.model = model
        self.depth = cfg.mtp_depths if depth is None else depth
        if not 1 <= self.depth <= cfg.mtp_depths:
            raise ValueError(f"depth={self.depth} must be between 1 and the model's mtp_depths={cfg.mtp_depths}")
        self.compile = compile

    @torch.no_grad()
    def generate(self, prompt: list[int], max_new_tokens: int, stop_tokens: tuple[int, ...] = ()):
        from chimera.speculative import SpeculativeStats

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
        while len(seq) - len(prompt) < max_new_tokens and not any(t in stop_tokens for t in seq[len(prompt):]):
            out = round_fn(model, torch.tensor([block], device=device), torch.tensor([L], device=device),
                              main, depths, carry).tolist()
            a, preds, drafts = out[0], out[1:D + 2], out[D + 2:]
            stats.history.append((L, block[1:]))
            stats.rounds += 1
            stats.drafted += D
            stats.accepted += a
            seq += preds[:a + 1]
            L += a + 1
            block = [preds[a], *drafts]
        gen = seq[len(prompt):]
        for i, t in enumerate(gen):
            if t in stop_tokens:
                gen = gen[:i + 1]
                break
        stats.seconds = time.perf_counter() - t0
        return gen[:max_new_tokens], stats

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
        h, outs, depths = hidden, [], []
        for k in range(1, D + 1):  # depth k consumes positions 0 .. P-k in one (eager) pass
            cache_k = StaticCache.empty(model.config, 1, capacity, w.device, w.dtype, model.config.mtp_pattern)
            h, commit = mtp_depth(model, k, h[:, :P - k + 1], seq[:, k:P + 1], cache_k, _at(0, w.device))
            commit(P - k + 1)
            outs.append(h)
            depths.append(cache_k)
        drafts, spec = [int(model.lm_head(outs[0][0, -1]).argmax())], outs[0][:, :0]
        for k in range(2, D + 1):  # depth k at positions P-k+1 .. P-1, on the drafts so far; rolled back
            spec, commit = mtp_depth(model, k, torch.cat([outs[k - 2][:, -1:], spec], 1),
                                     torch.tensor([drafts], device=w.device), depths[k - 1], _at(P - k + 1, w.device))
            commit(0)
            drafts.append(int(model.lm_head(spec[0, -1]).argmax()))
        carry = [o[:, -1].clone() for o in outs[:-1]]  # depth k's output at position P - k
        return main, depths, carry, [int(seq[0, -1]), *drafts]


def _at(position: int, device) -> torch.Tensor:
    return torch.tensor([position], device=device)
