"""Batched generation for rollouts: every row is its own sequence, logprobs are the sampler's, seeds repeat."""

import pytest
import torch

from chimera.inference import Engine, Request, Sampler, generate_batch
from chimera.models import HybridLM, get_config

PROMPTS = [[5, 80, 81, 82, 83], [7, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105],
           [9, 40, 41], [5, 80, 81, 82, 83], [11]]
SAMPLERS = [Sampler(temperature=1.0), Sampler(temperature=1.0, top_k=7), Sampler(temperature=0.8, top_p=0.9)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = HybridLM(get_config("tiny-moe")).eval()
    with torch.no_grad():  # move Mamba parameters off their init so the state carries real signal
        for name, p in m.named_parameters():
            if name.endswith(("dt_bias", "D")):
                p.add_(torch.randn_like(p) * 0.3)
    return m


def full_forward_greedy(model, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def test_greedy_rows_of_a_mixed_length_batch_equal_single_prompt_greedy(model):
    batch = generate_batch(model, PROMPTS, max_new_tokens=12)
    assert [c.prompt_index for c in batch] == list(range(len(PROMPTS)))
    for c in batch:
        assert c.tokens == full_forward_greedy(model, PROMPTS[c.prompt_index], 12)
        assert c.logprobs == [0.0] * 12 and c.finish_reason == "length"
        assert c.tokens == generate_batch(model, [PROMPTS[c.prompt_index]], max_new_tokens=12)[0].tokens


@pytest.mark.parametrize("sampler", SAMPLERS, ids=str)
def test_logprobs_are_the_samplers_log_softmax_of_a_plain_forward(model, sampler):
    out = generate_batch(model, PROMPTS, n=2, sampler=sampler, max_new_tokens=10, seed=0)
    for c in out:
        prompt = PROMPTS[c.prompt_index]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + c.tokens])).logits[0, len(prompt) - 1:-1]
        ref = sampler.log_probs(logits).gather(-1, torch.tensor(c.tokens)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-5, rtol=0)


def test_a_seed_repeats_exactly_and_samples_of_a_prompt_differ(model):
    kw = dict(n=4, sampler=SAMPLERS[0], max_new_tokens=10, seed=7, stop_tokens=(100, 101, 102))
    a, b = generate_batch(model, PROMPTS, **kw), generate_batch(model, PROMPTS, **kw)
    assert [(c.tokens, c.logprobs, c.finish_reason) for c in a] == [(c.tokens, c.logprobs, c.finish_reason) for c in b]
    for i in range(len(PROMPTS)):
        samples = [tuple(c.tokens) for c in a[4 * i:4 * i + 4]]
        assert len(set(samples)) > 1
    # a row's tokens do not depend on its batch: fewer rows at a time (continuous batching) give the same
    few = generate_batch(model, PROMPTS, max_rows=3, **kw)
    assert [c.tokens for c in few] == [c.tokens for c in a]
    assert [c.tokens for c in generate_batch(model, PROMPTS, **{**kw, "seed": 8})] != [c.tokens for c in a]


def test_stop_tokens_end_a_row_with_the_stop_token(model):
    ref = generate_batch(model, PROMPTS, max_new_tokens=12)
    stop = ref[1].tokens[3]
    out = generate_batch(model, PROMPTS, max_new_tokens=12, stop_tokens=(stop,))
    for r, c in zip(ref, out):
        if stop in r.tokens:
            assert c.tokens == r.tokens[:r.tokens.index(stop) + 1] and c.finish_reason == "stop"
        else:
            assert c.tokens == r.tokens and c.finish_reason == "length"


def test_padding_never_reaches_a_mamba_state(model):
    """Prompts of different lengths are prefilled in one right-padded call: each row's conv window, SSM
    state and keys equal the prompt's prefilled alone, and what the padding holds changes no state at all."""
    engine = Engine(model, max_rows=3, capacity=32)
    for p in PROMPTS[:3]:
        engine.submit(Request(p, max_new_tokens=4))
    engine._admit()
    for row, p in enumerate(PROMPTS[:3]):
        alone = model.new_cache(1, len(p))
        with torch.no_grad():
            model(torch.tensor([p]), cache=alone)
        for got, ref in zip(engine.decoder.cache.layers, alone.layers):
            if hasattr(ref, "ssm"):
                torch.testing.assert_close(got.conv[row], ref.conv[0], atol=1e-6, rtol=1e-5)
                torch.testing.assert_close(got.ssm[row], ref.ssm[0], atol=1e-6, rtol=1e-5)
            elif ref is not None:
                torch.testing.assert_close(got.k[row, :, :len(p)], ref.k[0, :, :len(p)], atol=1e-6, rtol=1e-5)
        assert engine.decoder.cache.valid[row].sum() == len(p) and engine.decoder.cache.pos[row] == len(p)
    P = max(map(len, PROMPTS[:3]))
    lengths = torch.tensor([len(p) for p in PROMPTS[:3]])
    states = []
    for fill in (0, 200):  # two paddings: the states must not differ in a single bit
        ids = torch.tensor([p + [fill] * (P - len(p)) for p in PROMPTS[:3]])
        cache = model.new_cache(3, P)
        with torch.no_grad():
            model.backbone(ids, cache=cache, lengths=lengths)
        states.append([(s.conv, s.ssm) for s in cache.layers if hasattr(s, "ssm")])
    for (c0, s0), (c1, s1) in zip(*states):
        assert torch.equal(c0, c1) and torch.equal(s0, s1)


def test_finished_rows_leave_the_batch(model):
    """Rows that end early stop costing compute: the decoder shrinks to the rows still running."""
    engine = Engine(model, max_rows=4, capacity=64)
    reqs = [engine.submit(Request(PROMPTS[0], max_new_tokens=n)) for n in (2, 3, 30, 30)]
    sizes = []
    while not engine.idle:
        engine.step()
        sizes.append(engine.decoder.rows)
    assert sizes[0] == 4 and sizes[-1] == 2 and [len(r.tokens) for r in reqs] == [2, 3, 30, 30]
    engine = Engine(model, max_rows=4, capacity=64)
    alone = [engine.submit(Request(PROMPTS[0], max_new_tokens=n)) for n in (2, 2, 2, 9)]
    while not engine.idle:
        engine.step()
    assert engine.decoder.rows == 2 and alone[3].tokens == reqs[2].tokens[:9]  # never a batch of 1
    assert reqs[2].tokens == reqs[3].tokens == full_forward_greedy(model, PROMPTS[0], 30)


def test_a_cancelled_request_frees_its_row_for_a_waiting_one(model):
    engine = Engine(model, max_rows=1, capacity=64)
    first, second = engine.submit(Request(PROMPTS[2], 50)), engine.submit(Request(PROMPTS[0], 6))
    engine.step()
    engine.cancel(first)
    for _ in engine.run():
        pass
    assert first.finish_reason == "cancelled" and len(first.tokens) < 50
    assert second.tokens == full_forward_greedy(model, PROMPTS[0], 6)


def test_bad_requests_are_refused(model):
    with pytest.raises(ValueError, match="at least one token"):
        generate_batch(model, [[]], max_new_tokens=3)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        generate_batch(model, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="n=0"):
        generate_batch(model, PROMPTS, n=0, max_new_tokens=3)
    with pytest.raises(ValueError, match="exceeds the engine's capacity"):
        Engine(model, 1, 8).submit(Request(list(range(1, 8)), max_new_tokens=4))
