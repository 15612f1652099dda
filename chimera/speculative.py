"""Self-speculative decoding with the model's own MTP layers (one sequence, greedy or sampled).

Each round the MTP depths draft k tokens past the next committed one, the main model verifies
all of them in one forward, an accepted prefix is kept plus one token of the main model's, and
every cache (attention KV, Mamba conv and SSM states, MTP caches) is rolled back exactly to it.
Greedy, the drafts agreeing with the argmax are kept and the output equals plain greedy decoding
token for token; sampled, ``chimera.models.sampling.verify`` keeps or corrects each draft so that
every token follows the main model's distribution exactly (speculative sampling).

Bookkeeping: ``seq`` is the committed sequence; its last token has not been consumed by the main
model yet. Depth k's cache has consumed positions t < done[k], each with input
(h_{k-1}[t], embed(seq[t+k])); depth 0 is the main model (h_0 = its final hidden state).
"""

from __future__ import annotations

import time

import torch

from chimera.models.hybrid import HybridLM
from chimera.models.sampling import GREEDY, Sampler, Uniforms, draw, verify
from chimera.models.static_speculate import SpeculativeStats, StaticSpeculator, draft_depth, up_to_stop

__all__ = ["Sampler", "SpeculativeStats", "speculative_generate"]


@torch.no_grad()
def speculative_generate(model: HybridLM, prompt: list[int], max_new_tokens: int, stop_tokens: tuple[int, ...] = (),
                         depth: int | None = None, compile: bool = False, sampler: Sampler = GREEDY,
                         seed: int | None = None) -> tuple[list[int], SpeculativeStats]:
    """Generate up to ``max_new_tokens`` with MTP drafts of ``depth`` tokens (default: all depths; more
    when the model shares one MTP block across depths), greedy or as ``sampler`` says; ``seed`` fixes
    the draws (default: from torch's global generator).

    ``compile=True`` runs each round as one compiled graph on static caches
    (``chimera.models.static_speculate``; prompts shorter than ``depth`` stay on the plain path).
    Both paths draw the same tokens from the same seed."""
    D = draft_depth(model.config, depth)
    if not prompt:
        raise ValueError("the prompt needs at least one token")
    if compile and len(prompt) >= D:
        return StaticSpeculator(model, D, compile=True, sampler=sampler).generate(prompt, max_new_tokens,
                                                                                  stop_tokens, seed)
    t0 = time.perf_counter()
    stats = SpeculativeStats()
    capacity = len(prompt) + max_new_tokens + D + 2
    embed = model.backbone.embeddings
    device = model.lm_head.weight.device
    uniforms = Uniforms(sampler, seed, device)
    main = model.new_cache(1, kv_capacity=capacity)
    out = model(torch.tensor([prompt], device=device), cache=main, logits_to_keep=1)
    u = uniforms(D + 1)  # the same draws, in the same order, as the static path's
    seq, u_draft = [*prompt, _pick(sampler, out.logits[0, -1], u[0])[0]], u[1:]
    # h[k]: outputs of depth k for positions [start[k], done[k]) not yet consumed by depth k + 1
    h = {0: out.hidden}
    start = {0: 0}
    done = {0: len(prompt)}
    caches = {k: model.new_mtp_cache(1, kv_capacity=capacity) for k in range(1, D + 1)}
    for k in range(1, D + 1):
        h[k], start[k], done[k] = out.hidden[:, :0], 0, 0

    def new_tokens() -> list[int]:
        return seq[len(prompt):]

    def finished() -> bool:
        gen = new_tokens()
        return len(gen) >= max_new_tokens or any(t in stop_tokens for t in gen)

    while not finished():
        L = len(seq) - 1  # index of the committed token the main model has not consumed
        # 1. draft at the frontier position L - 1. Depth k runs positions [done[k], L - 1] in one
        #    forward: those whose inputs are all committed (t + k <= L) stay in its cache, the rest
        #    (built on drafts) are rolled back after their output is read.
        drafts: list[int] = []
        q = []  # the distribution each draft was drawn from
        spec_prev = h[0][:, :0]  # depth k - 1 outputs for positions [done[k - 1], L - 1], built on drafts
        for k in range(1, D + 1):
            lo, commit_hi = done[k], min(done[k - 1], L - k + 1)
            prev = torch.cat([h[k - 1][:, lo - start[k - 1]:done[k - 1] - start[k - 1]], spec_prev], 1)
            toks = embed(torch.tensor([(seq + drafts)[lo + k:L + k]], device=device))
            n_commit, total = commit_hi - lo, L - lo
            if n_commit > 8:  # a long committed stretch (the prompt) goes through the chunked scan first
                h[k] = torch.cat([h[k], model.mtp(k, prev[:, :n_commit], toks[:, :n_commit], caches[k])], 1)
                prev, toks, lo, total, n_commit = prev[:, n_commit:], toks[:, n_commit:], commit_hi, L - commit_hi, 0
            if total > 0:
                caches[k].record(True)
                out_k = model.mtp(k, prev, toks, caches[k])
                caches[k].rollback(keep=n_commit, total=total)
                h[k] = torch.cat([h[k], out_k[:, :n_commit]], 1)
                spec_prev = out_k[:, n_commit:]
            else:  # everything up to L - 1 was committed just above
                spec_prev = prev
            done[k] = commit_hi
            last = spec_prev[:, -1] if spec_prev.size(1) else h[k][:, L - 1 - start[k]]
            draft, q_k = _pick(sampler, model.lm_head(last[0]), u_draft[k - 1])
            drafts.append(draft)
            q.append(q_k)
        for k in range(D + 1):  # drop what no depth will read again
            cut = max(0, (done[k + 1] if k < D else done[k]) - start[k])
            h[k], start[k] = h[k][:, cut:], start[k] + cut
        stats.history.append((L, drafts))
        # 2. verify [seq[L], drafts...] in one forward, keeping every position's Mamba state
        block = torch.tensor([[seq[L], *drafts]], device=device)
        main.record(True)
        ver = model(block, cache=main)
        a, token = _verify(sampler, ver.logits[0], q, drafts, uniforms(D + 1))
        main.rollback(keep=a + 1, total=len(drafts) + 1)
        seq += [*drafts[:a], token]
        u_draft = uniforms(D)
        h[0] = torch.cat([h[0], ver.hidden[:, :a + 1]], 1)
        done[0] += a + 1
        stats.rounds += 1
        stats.drafted += len(drafts)
        stats.accepted += a
    stats.seconds = time.perf_counter() - t0
    return up_to_stop(new_tokens(), stop_tokens, max_new_tokens), stats


# The plain path pays for every tensor op, so greedy skips building its one-hot rows: drafts are
# argmaxes and verify's rule on one-hot rows is "keep the drafts that equal the argmax".
def _pick(sampler: Sampler, logits: torch.Tensor, u: torch.Tensor) -> tuple[int, torch.Tensor | None]:
    """A token from logits (vocab,) at uniform u, and the distribution it was drawn from (None: greedy)."""
    if sampler.greedy:
        return int(logits.argmax()), None
    probs = sampler.probs(logits)
    return int(draw(probs, u)), probs


def _verify(sampler: Sampler, logits: torch.Tensor, q: list, drafts: list[int], u: torch.Tensor) -> tuple[int, int]:
    """``chimera.models.sampling.verify`` on the target logits (D+1, vocab) -> (kept drafts a, token)."""
    if sampler.greedy:
        preds = logits.argmax(-1).tolist()
        a = next((j for j, (d, t) in enumerate(zip(drafts, preds)) if d != t), len(drafts))
        return a, preds[a]
    a, token = verify(sampler.probs(logits), torch.stack(q), torch.tensor(drafts, device=logits.device), u)
    return int(a), int(token)
