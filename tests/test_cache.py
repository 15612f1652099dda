"""The cache: sequence calls and step calls over it equal the full forward, for every pattern; rows
keep any prefix of a step; rows move between caches exactly; the Mamba state does not grow."""

import pytest
import torch

from chimera.models import HybridBackbone, HybridLM, get_config

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


def step(model, cache, tokens, record=False, keep=None):
    """tokens (b, n) through the step path -> logits (b, n, vocab); keeps ``keep`` (b,) of them."""
    ctx = cache.context(tokens.size(1), record=record)
    h = model.backbone.step(model.backbone.embeddings(tokens), cache, ctx)
    cache.advance(ctx, keep)
    return model.lm_head(h)


@torch.no_grad()
def test_cached_decoding_matches_full_forward_at_every_position(model):
    ids = torch.randint(0, 272, (2, 41))
    full = model(ids).logits
    cache = model.new_cache(2, 4)  # small capacity: a sequence call grows the KV buffers
    steps = [model(ids[:, t:t + 1], cache=cache).logits for t in range(41)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    fixed = model.new_cache(2, 41)  # the step path, one token per row at a time, in fixed buffers
    got = [step(model, fixed, ids[:, t:t + 1]) for t in range(41)]
    torch.testing.assert_close(torch.cat(got, 1), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_a_recorded_step_keeps_any_prefix_of_each_row(model):
    """Verify 6 tokens per row, keep 2 in one row and 5 in the other: the next token of each row is what
    the full forward gives at its position, as if the rest had never been fed."""
    ids = torch.randint(0, 272, (2, 30))
    full = model(ids).logits
    cache = model.new_cache(2, 32)
    model(ids[:, :20], cache=cache)
    block = step(model, cache, ids[:, 20:26], record=True, keep=torch.tensor([2, 5]))
    torch.testing.assert_close(block, full[:, 20:26], atol=1e-5, rtol=1e-5)
    assert cache.pos.tolist() == [22, 25]
    nxt = step(model, cache, torch.stack([ids[0, 22:23], ids[1, 25:26]]))
    torch.testing.assert_close(nxt[0, 0], full[0, 22], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nxt[1, 0], full[1, 25], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_prefill_in_chunks_equals_prefill_at_once(model):
    ids = torch.randint(0, 272, (2, 53))
    one, many = model.new_cache(2), model.new_cache(2)
    last_one = model(ids, cache=one).logits[:, -1]
    for start in range(0, 53, 10):
        last_many = model(ids[:, start:start + 10], cache=many).logits[:, -1]
    torch.testing.assert_close(last_many, last_one, atol=1e-5, rtol=1e-5)
    nxt = torch.randint(0, 272, (2, 1))
    torch.testing.assert_close(model(nxt, cache=many).logits, model(nxt, cache=one).logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(one.layers, many.layers):
        if a is not None and hasattr(a, "ssm"):
            torch.testing.assert_close(a.ssm, b.ssm, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.conv, b.conv, atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_rows_inserted_from_a_prefill_cache_decode_as_their_own_sequence(model):
    """Prompts of different lengths, each prefilled alone and copied into rows of one cache (one of them
    into two rows), decode each as its own sequence: no row sees another's positions or padding."""
    prompts = [torch.randint(3, 272, (n,)) for n in (5, 17)]
    big = model.new_cache(3, 24)
    for rows, p in (([0, 2], prompts[0]), ([1], prompts[1])):
        src = model.new_cache(1, len(p))
        model(p[None], cache=src)
        big.insert(torch.tensor(rows), src)
    assert big.pos.tolist() == [5, 17, 5]
    nxt = torch.randint(3, 272, (3, 1))
    got = step(model, big, nxt)[:, 0]
    for row, p in ((0, prompts[0]), (1, prompts[1]), (2, prompts[0])):
        ref = model(torch.cat([p, nxt[row]])[None]).logits[0, -1]
        torch.testing.assert_close(got[row], ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_mamba_state_size_does_not_grow_with_context():
    m = HybridLM(get_config("tiny")).eval()
    cache = m.new_cache(1, 16)
    m(torch.randint(0, 272, (1, 16)), cache=cache)
    small = cache.nbytes()
    m(torch.randint(0, 272, (1, 240)), cache=cache)
    big = cache.nbytes()
    assert big["mamba"] == small["mamba"] > 0
    assert big["kv"] == small["kv"] * 256 // 16


@torch.no_grad()
def test_backbone_sequence_with_resets_matches_stepwise_rollout():
    """The RL training-time scan over a stored sequence reproduces the rollout-time steps across resets."""
    torch.manual_seed(0)
    cfg = get_config("tiny-moe").replace(pattern="ME-M")
    net = HybridBackbone(cfg).eval()
    b, T = 3, 29
    x = torch.randn(b, T, cfg.hidden_size)
    reset = torch.rand(b, T) < 0.15
    reset[:, 0] = True
    start = net.new_cache(b)
    net(inputs_embeds=torch.randn(b, 5, cfg.hidden_size), cache=start)  # a state carried from before
    step_cache, seq_cache = start.clone(), start.clone()
    steps = [net(inputs_embeds=x[:, t:t + 1], cache=step_cache, reset=reset[:, t:t + 1]) for t in range(T)]
    seq = net(inputs_embeds=x, cache=seq_cache, reset=reset)
    torch.testing.assert_close(seq, torch.cat(steps, 1), atol=1e-5, rtol=1e-5)
    for a, c in zip(step_cache.layers, seq_cache.layers):
        if a is not None:
            torch.testing.assert_close(a.ssm, c.ssm, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.conv, c.conv, atol=1e-6, rtol=1e-6)
