"""Action distributions for the policy heads: categorical over logits and diagonal Gaussian.

Only what PPO needs (sample, log_prob, entropy, mode), written directly on tensors: the rollouts
build one distribution per environment step on a handful of rows, where ``torch.distributions``'
generic machinery (argument broadcasting, lazy properties, multinomial sampling) costs more than
the network itself. Values equal ``torch.distributions.Categorical`` / ``Independent(Normal)``
(tests/test_rl_distributions.py).
"""

from __future__ import annotations

import math

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class CategoricalLogits:
    """Categorical over the last axis of ``logits``; samples by the Gumbel-max trick."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits.log_softmax(-1)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.exp()

    @property
    def mode(self) -> torch.Tensor:
        return self.logits.argmax(-1)

    def sample(self) -> torch.Tensor:
        u = torch.rand_like(self.logits).clamp_(min=torch.finfo(self.logits.dtype).tiny)
        return (self.logits - u.log_().neg_().log_()).argmax(-1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return self.logits.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.logits.exp() * self.logits).sum(-1)


class DiagGaussian:
    """Independent normals over the last axis; log_prob and entropy summed over it."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean, self.log_std = mean, log_std.expand_as(mean)

    @property
    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self) -> torch.Tensor:
        return torch.normal(self.mean, self.log_std.exp())

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        z = (action - self.mean) * (-self.log_std).exp()
        return (-0.5 * z * z - self.log_std - _LOG_SQRT_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (0.5 + _LOG_SQRT_2PI + self.log_std).sum(-1)
