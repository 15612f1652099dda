"""Token distributions and the speculative accept / correct rule, as tensor code that compiles.

``Sampler.probs`` turns logits into the distribution a token is drawn from: one-hot on the argmax
when greedy, else the softmax at ``temperature`` restricted to ``top_k`` / ``top_p``. ``draw``
takes a token from a distribution by inverse CDF at a given uniform, so a compiled graph needs
no random number generator and the plain and static decoders draw the same tokens from the same
uniforms.

``verify`` is speculative sampling (Leviathan et al. 2023; Chen et al. 2023): draft ``d_j``,
drawn from ``q_j``, is kept with probability ``min(1, p_j(d_j) / q_j(d_j))``; at the first
rejection the token comes from ``norm(max(0, p_j - q_j))``, and when every draft is kept, from the
next target row. Each emitted token then follows the target ``p`` exactly, whatever ``q`` is. With
one-hot distributions (greedy) it keeps exactly the drafts that equal the argmax and emits the
argmax: greedy speculative decoding is the same code.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Sampler:
    """How a token is chosen from logits."""

    temperature: float = 0.0
    """0 means greedy."""
    top_k: int = 0
    """Keep the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Keep the smallest set of most likely tokens whose probability reaches p."""

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"{self} needs temperature >= 0, top_k >= 0 and 0 < top_p <= 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (..., vocab) -> the float32 distribution (..., vocab) a token is drawn from."""
        if self.greedy:
            return F.one_hot(logits.argmax(-1), logits.size(-1)).float()
        return self.log_probs(logits).exp()

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (..., vocab) -> log of ``probs`` (float32; -inf outside top-k / top-p, 0 / -inf when greedy)."""
        lead = logits.shape[:-1]
        return log_probs(logits, torch.full(lead, self.temperature, device=logits.device),
                         torch.full(lead, self.top_k, device=logits.device),
                         torch.full(lead, self.top_p, device=logits.device),
                         filtered=self.top_k > 0 or self.top_p < 1)


GREEDY = Sampler()


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The token at uniform ``u`` in [0, 1) of each distribution: probs (..., vocab), u (...) -> (...).

    The first token whose cumulative mass exceeds u times the total, so never one of probability 0.
    The sums are in float64: u * total stays below the total for every float32 u < 1, and tokens
    of mass below float32's resolution next to the top one keep their share."""
    cdf = probs.double().cumsum(-1)
    return torch.searchsorted(cdf, (u.double() * cdf[..., -1])[..., None], right=True)[..., 0]


def verify(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor,
           u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept a prefix of the drafts and choose the token after it.

    p (..., D+1, vocab): the target's distribution after the committed token and after each draft;
    q (..., D, vocab): the distributions the drafts were drawn from; drafts (..., D); u (..., D+1)
    uniforms (D acceptance tests, one for the token). Returns (a, token), both (...): the first a
    drafts are kept and ``token`` follows them.
    """
    D = drafts.size(-1)
    at = drafts[..., None]
    keep = u[..., :D] * q.gather(-1, at)[..., 0] < p[..., :D, :].gather(-1, at)[..., 0]
    a = keep.long().cumprod(-1).sum(-1)
    fix = torch.cat([(p[..., :D, :] - q).clamp(min=0), p[..., D:, :]], -2)  # rows 0..D-1: after a rejection
    at_a = a[..., None, None].expand(*a.shape, 1, p.size(-1))
    row = fix.gather(-2, at_a)[..., 0, :]
    # a rejection where p and q agree has probability 0; rounding aside, fall back to p's row
    row = torch.where(row.sum(-1, keepdim=True) > 0, row, p.gather(-2, at_a)[..., 0, :])
    return a, draw(row, u[..., D])


def log_probs(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
              filtered: bool = True) -> torch.Tensor:
    """The distribution each row's token is drawn from, as log-probabilities in float32: logits (..., vocab)
    and one sampler per row, temperature / top_k / top_p (...). A row at temperature 0 is one-hot on
    its argmax; ``filtered=False`` skips the top-k / top-p sort (every row has top_k 0 and top_p 1)."""
    logits = logits.float()
    greedy = temperature == 0
    scaled = logits / torch.where(greedy, 1.0, temperature)[..., None]
    if filtered:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        k = torch.where(top_k > 0, top_k, logits.size(-1)).clamp(max=logits.size(-1))
        kth = sorted_logits.gather(-1, (k - 1)[..., None])
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))  # top-k, ties kept
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (never at top_p = 1: float rounding
        # can bring the running sum to 1 before the smallest tokens)
        drop = (probs.cumsum(-1) - probs >= top_p[..., None]) & (top_p < 1)[..., None]
        scaled = scaled.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    one_hot = F.one_hot(logits.argmax(-1), logits.size(-1)).float().log()
    return torch.where(greedy[..., None], one_hot, scaled.log_softmax(-1))


def row_uniforms(seed: int, key: str, count: int) -> list[float]:
    """The ``count`` float32 uniforms in [0, 1) one request draws its tokens at, from (seed, key): a row's
    tokens do not depend on the other rows of its batch."""
    rng = np.random.default_rng([seed % 2**63, zlib.crc32(key.encode())])
    return rng.random(count, dtype=np.float32).tolist()


class Uniforms:
    """The uniforms a speculative decoder draws its tokens with: from a generator seeded with ``seed``
    (default: from torch's global generator), or zeros when greedy (the draws do not depend on them)."""

    def __init__(self, sampler: Sampler, seed: int | None, device):
        self.device = device
        self.gen = None
        if not sampler.greedy:
            seed = int(torch.randint(2**62, ())) if seed is None else seed
            self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, n: int) -> torch.Tensor:
        if self.gen is None:
            return torch.zeros(n, device=self.device)
        return torch.rand(n, generator=self.gen).to(self.device)
