"""The inference engine: every way Chimera generates tokens goes through this package.

- ``Sampler`` (``sampling.py``): how a token is chosen (greedy, temperature, top-k, top-p), ``draw`` by
  inverse CDF at a given uniform, ``verify`` (the speculative accept / correct rule).
- ``Decoder`` (``decoder.py``): rows of one fixed-capacity cache that prefill, step and select
  together, eager or compiled; ``Engine`` (``engine.py``): continuous batching of ``Request``s on it.
- ``generate_batch`` / ``generate`` (``generate.py``): rollouts with logprobs, ``n`` samples per prompt;
  continuations with a thinking budget (``ThinkingBudget``, ``budget.py``).
- ``speculative_generate`` (``speculative.py``): self-speculative decoding on the MTP layers.
"""

from chimera.inference.budget import ThinkingBudget
from chimera.inference.decoder import Decoder
from chimera.inference.engine import Engine, Event, Request
from chimera.inference.generate import Completion, SamplingConfig, generate, generate_batch
from chimera.inference.sampling import GREEDY, Sampler, draw, verify
from chimera.inference.speculative import SpeculativeDecoder, SpeculativeStats, speculative_generate

__all__ = ["GREEDY", "Completion", "Decoder", "Engine", "Event", "Request", "Sampler", "SamplingConfig",
           "SpeculativeDecoder", "SpeculativeStats", "ThinkingBudget", "draw", "generate", "generate_batch",
           "speculative_generate", "verify"]
