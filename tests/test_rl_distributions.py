"""The policy heads' lean distributions against torch.distributions."""

import torch
from torch.distributions import Categorical, Independent, Normal

from chimera.rl.distributions import CategoricalLogits, DiagGaussian


def test_categorical_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g) * 3
    ours, ref = CategoricalLogits(logits), Categorical(logits=logits)
    a = torch.randint(0, 5, (6,), generator=g)
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(a))
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    torch.testing.assert_close(ours.probs, ref.probs)
    assert torch.equal(ours.mode, ref.probs.argmax(-1))


def test_categorical_samples_follow_the_probabilities():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0]]).expand(40_000, 4)
    counts = torch.bincount(CategoricalLogits(logits).sample(), minlength=4).float() / 40_000
    torch.testing.assert_close(counts, logits[0].softmax(-1), atol=0.01, rtol=0)


def test_gaussian_matches_torch():
    g = torch.Generator().manual_seed(1)
    mean, log_std = torch.randn(7, 3, generator=g), torch.randn(3, generator=g) * 0.5
    ours, ref = DiagGaussian(mean, log_std), Independent(Normal(mean, log_std.exp()), 1)
    x = torch.randn(7, 3, generator=g)
    torch.testing.assert_close(ours.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    torch.manual_seed(0)
    s = DiagGaussian(mean[:1].expand(50_000, 3), log_std).sample()
    torch.testing.assert_close(s.mean(0), mean[0], atol=0.03, rtol=0)
    torch.testing.assert_close(s.std(0), log_std.exp(), atol=0.03, rtol=0)
