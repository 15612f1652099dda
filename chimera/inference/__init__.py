"""The inference engine: every way Chimera generates tokens goes through this package.

Public API (other packages import from here, never from the modules behind it):

- ``Sampler`` / ``GREEDY``: how a token is chosen (greedy, temperature, top-k, top-p).
- ``generate(model, prompts, cfg, ...)``: continuations of a batch of prompts (thinking budget, compile).
- ``generate_batch(model, prompts, n=..., sampler=..., ...) -> list[Completion]``: batched rollouts with
  per-token logprobs and finish reasons, ``n`` samples per prompt (GRPO groups).
- ``speculative_generate``: self-speculative decoding on the MTP layers.
"""

from chimera.generate import SamplingConfig, ThinkingBudget, generate
from chimera.inference.batch import Completion, generate_batch
from chimera.models.sampling import GREEDY, Sampler, draw, verify
from chimera.speculative import speculative_generate

__all__ = ["GREEDY", "Completion", "Sampler", "SamplingConfig", "ThinkingBudget", "draw", "generate",
           "generate_batch", "speculative_generate", "verify"]
