"""Cached (step-by-step) inference equals the parallel forward, for every pattern."""

import pytest
import torch

from chimera.generate import SamplingConfig, generate, prefill
from chimera.models import HybridLM, get_config

PATTERNS = ["tiny", "tiny-mamba", "tiny-moe", "tiny-latent-moe"]


@pytest.fixture(params=PATTERNS, scope="module")
def model(request):
    torch.manual_seed(1)
    m = HybridLM(get_config(request.param)).eval()
    with torch.no_grad():  # move Mamba parameters off their init so the state carries real signal
        for name, p in m.named_parameters():
            if name.endswith(("dt_bias", "D", "conv1d.bias")):
                p.add_(torch.randn_like(p) * 0.3)
    return m


@torch.no_grad()
def test_cached_decoding_matches_full_forward_at_every_position(model):
    ids = torch.randint(0, 272, (2, 41))
    full = model(ids).logits
    cache = model.new_cache(2, kv_capacity=4)  # small capacity: the KV buffer must grow
    steps = [model(ids[:, t:t + 1], cache=cache).logits for t in range(41)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_prefill_in_chunks_equals_prefill_at_once(model):
    ids = torch.randint(0, 272, (2, 53))
    one, many = model.new_cache(2), model.new_cache(2)
    last_one = prefill(model, ids, one)
    last_many = prefill(model, ids, many, chunk_size=10)
    torch.testing.assert_close(last_many, last_one, atol=1e-5, rtol=1e-5)
    nxt = torch.randint(0, 272, (2, 1))
    torch.testing.assert_close(model(nxt, cache=many).logits, model(nxt, cache=one).logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(one.layers, many.layers):
        if a is not None and hasattr(a, "ssm"):
            torch.testing.assert_close(a.ssm, b.ssm, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.conv, b.conv, atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_batched_prompts_of_different_lengths_match_one_by_one(model):
    prompts = [torch.randint(3, 272, (n,)).tolist() for n in (5, 17, 11)]
    cfg = SamplingConfig(max_new_tokens=8)
    batched = generate(model, prompts, cfg, prefill_chunk=6)
    single = [generate(model, [p], cfg)[0] for p in prompts]
    assert batched == single


@torch.no_grad()
def test_mamba_state_size_does_not_grow_with_context():
    m = HybridLM(get_config("tiny")).eval()
    cache = m.new_cache(1)
    m(torch.randint(0, 272, (1, 16)), cache=cache)
    small = cache.nbytes()
    m(torch.randint(0, 272, (1, 240)), cache=cache)
    big = cache.nbytes()
    assert big["mamba"] == small["mamba"] > 0
    assert big["kv"] == small["kv"] * 256 // 16


@torch.no_grad()
def test_backbone_sequence_with_resets_matches_stepwise_rollout():
    """The RL training-time scan over a stored sequence reproduces the rollout-time steps across resets."""
    from chimera.models import HybridBackbone
    from chimera.models.cache import HybridCache

    torch.manual_seed(0)
    cfg = get_config("tiny-moe").replace(pattern="ME-M")
    net = HybridBackbone(cfg).eval()
    b, T = 3, 29
    x = torch.randn(b, T, cfg.hidden_size)
    reset = torch.rand(b, T) < 0.15
    reset[:, 0] = True
    start = HybridCache.empty(cfg, b)
    net(inputs_embeds=torch.randn(b, 5, cfg.hidden_size), cache=start)  # a state carried from before
    step_cache, seq_cache = start.clone(), start.clone()
    steps = [net(inputs_embeds=x[:, t:t + 1], cache=step_cache, reset=reset[:, t:t + 1]) for t in range(T)]
    seq = net(inputs_embeds=x, cache=seq_cache, reset=reset)
    torch.testing.assert_close(seq, torch.cat(steps, 1), atol=1e-5, rtol=1e-5)
    for a, c in zip(step_cache.layers, seq_cache.layers):
        if a is not None:
            torch.testing.assert_close(a.ssm, c.ssm, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.conv, c.conv, atol=1e-6, rtol=1e-6)
