"""Speculative sampling: the accept / correct rule keeps the target distribution, the decoder's
sequences follow the main model's distribution, and the eager and compiled rounds draw the same
tokens from the same seed."""

import itertools

import pytest
import torch
from test_speculative import PROMPTS, half_trained

from chimera.inference import Sampler, SamplingConfig, draw, speculative_generate, verify


def test_draw_follows_the_distribution_and_never_picks_a_zero():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.3, 0.0])
    u = torch.rand(100_000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(draw(probs.expand(len(u), -1), u), minlength=6) / len(u)
    assert torch.allclose(counts, probs, atol=0.006)
    edges = torch.tensor([0.0, 0.5 - 1e-7, 0.5, 0.7001, 1 - 2**-24])  # the last: the largest float32 below 1
    assert draw(probs.expand(5, -1), edges).tolist() == [1, 1, 3, 4, 4]
    # unnormalised rows (the corrections) are scaled by their total
    assert draw(torch.tensor([0.0, 0.02, 0.02]), torch.tensor(0.49)).item() == 1


def test_sampler_restricts_and_rejects_bad_values():
    logits = torch.randn(3, 20)
    cases = ((SamplingConfig(temperature=0.7, top_k=5), 5), (SamplingConfig(temperature=1.3, top_p=0.8), None))
    for cfg, kept in cases:
        probs = cfg.sampler().probs(logits)
        assert torch.allclose(probs.sum(-1), torch.ones(3))
        if kept:
            assert set(probs[0].nonzero()[:, 0].tolist()) == set(logits[0].topk(kept).indices.tolist())
        else:  # the smallest set of top tokens whose mass reaches 0.8
            full = (logits[0] / 1.3).softmax(-1).sort(descending=True).values
            assert int((probs[0] > 0).sum()) == int((full.cumsum(-1) - full < 0.8).sum())
    assert torch.equal(Sampler().probs(logits).argmax(-1), logits.argmax(-1))
    assert Sampler().probs(logits).sum() == 3  # one-hot
    for bad in (dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError, match="needs temperature >= 0"):
            Sampler(**bad)


def test_verify_keeps_the_target_distribution():
    """One round with D = 2 drafts, vectorised over many rounds: the first emitted token follows p_0, the
    one after a kept first draft follows p_1, after two kept drafts p_2; acceptance is sum(min(p, q))."""
    g = torch.Generator().manual_seed(0)
    V, N = 5, 400_000
    p = torch.softmax(3 * torch.randn(3, V, generator=g), -1)
    q = torch.softmax(3 * torch.randn(2, V, generator=g), -1)
    p[0, 4], q[0, 2], q[1, 0] = 0.0, 0.0, 0.0  # zeros on either side
    p[0], q = p[0] / p[0].sum(), q / q.sum(-1, keepdim=True)
    drafts = torch.stack([draw(q[j].expand(N, V), torch.rand(N, generator=g)) for j in range(2)], -1)
    a, token = verify(p.expand(N, 3, V), q.expand(N, 2, V), drafts, torch.rand(N, 3, generator=g))

    def freq(column, rows):
        return torch.bincount(column[rows], minlength=V).double() / int(rows.sum())

    first = torch.where(a > 0, drafts[:, 0], token)  # the round emits d_1 .. d_a, then the token
    second = torch.where(a > 1, drafts[:, 1], token)
    assert torch.allclose(freq(first, a >= 0), p[0].double(), atol=0.005)
    assert torch.allclose(freq(second, a >= 1), p[1].double(), atol=0.005)
    assert torch.allclose(freq(token, a == 2), p[2].double(), atol=0.005)
    assert abs((a >= 1).double().mean() - torch.minimum(p[0], q[0]).sum()) < 0.005
    assert int((first == 4).sum()) == 0  # p_0 gives it no mass: never emitted, though drafts may propose it


def test_verify_with_one_hot_rows_is_greedy():
    p = Sampler().probs(torch.tensor([[0.1, 2.0, 0.3], [1.0, 0.0, 0.5], [0.0, 0.0, 9.0]]))
    q = Sampler().probs(torch.randn(2, 3))
    for drafts, want in (([1, 0], (2, 2)), ([1, 2], (1, 0)), ([0, 0], (0, 1))):
        a, token = verify(p, q, torch.tensor(drafts), torch.zeros(3))
        assert (int(a), int(token)) == want


@torch.no_grad()
def exact_sequence_probs(model, prompt: list[int], sampler: Sampler, n: int) -> dict[tuple[int, ...], float]:
    """The main model's probability of every continuation of n tokens under ``sampler``, by enumeration."""
    out = {(): 1.0}
    for _ in range(n):
        nxt = {}
        for seq, pr in out.items():
            probs = sampler.probs(model(torch.tensor([prompt + list(seq)])).logits[0, -1])
            for t in probs.nonzero()[:, 0].tolist():
                nxt[(*seq, t)] = pr * float(probs[t])
        out = nxt
    return out


def test_sampled_sequences_follow_the_main_models_distribution():
    """Continuations of 3 tokens over 400 seeds against the main model's exact probabilities (top-k 2:
    8 sequences); drafts from a half-trained MTP block often disagree, so corrections happen. A
    Pearson chi-square over 7 degrees of freedom is below 24.3 with probability 0.999."""
    model = half_trained("M*ME/*E/*E", share=True, steps=20)
    sampler, prompt, n = Sampler(temperature=1.5, top_k=2), PROMPTS[0], 3
    exact = exact_sequence_probs(model, prompt, sampler, n)
    counts = dict.fromkeys(exact, 0)
    accepted = drafted = 0
    for seed in range(400):
        got, stats = speculative_generate(model, prompt, n, sampler=sampler, seed=seed)
        counts[tuple(got)] += 1
        accepted, drafted = accepted + stats.accepted, drafted + stats.drafted
    assert 0.2 < accepted / drafted < 0.9
    chi2 = sum((counts[s] - 400 * pr) ** 2 / (400 * pr) for s, pr in exact.items())
    assert chi2 < 24.3, (chi2, counts, exact)


@pytest.mark.parametrize("pattern,share", [("M*ME/*E/*E", False), ("MM-/M/M/M", False)])
def test_sampled_rounds_repeat_exactly_from_a_seed(pattern, share):
    model = half_trained(pattern, share)
    sampler = Sampler(temperature=1.0, top_p=0.9)
    for prompt, seed in itertools.product(PROMPTS, (0, 1)):
        got, stats = speculative_generate(model, prompt, 20, sampler=sampler, seed=seed)
        again, again_stats = speculative_generate(model, prompt, 20, sampler=sampler, seed=seed)
        assert got == again and stats.history == again_stats.history
    assert got != speculative_generate(model, prompt, 20, sampler=sampler, seed=2)[0]  # the seed matters


def test_sampled_compiled_rounds_draw_what_the_eager_rounds_draw():
    model = half_trained("M*ME/*E/*E", share=True)
    sampler = Sampler(temperature=0.8, top_k=8)
    for prompt in PROMPTS:
        got, stats = speculative_generate(model, prompt, 20, compile=True, sampler=sampler, seed=3)
        eager, eager_stats = speculative_generate(model, prompt, 20, sampler=sampler, seed=3)
        assert got == eager and stats.history == eager_stats.history and stats.accepted > 0
