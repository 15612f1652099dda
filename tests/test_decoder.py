"""The Decoder (rows of one fixed-capacity cache, eager or compiled) against the model's own forward."""

import pytest
import torch

from chimera.inference import Decoder, Sampler, generate, generate_batch
from chimera.inference.decoder import RowSampling, padded_capacity
from chimera.models import HybridConfig, HybridLM

SMALL = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48,
             mamba_num_heads=4, mamba_head_dim=8, n_groups=2, ssm_state_size=8, chunk_size=8, vocab_size=40,
             n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
             moe_shared_expert_intermediate_size=24)
PROMPTS = [[3, 4, 5, 6, 7, 8, 9], [11, 12, 13]]


def small(pattern: str) -> HybridLM:
    torch.manual_seed(0)
    return HybridLM(HybridConfig(pattern=pattern, **SMALL)).eval()


def greedy_rows(b: int, vocab: int) -> RowSampling:
    return RowSampling(torch.zeros(b), torch.zeros(b, dtype=torch.long), torch.ones(b),
                       torch.full((b,), -1), torch.zeros(1, vocab), filtered=False)


def reference(model, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding by full forwards over the growing sequence (no cache at all)."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def decode(model, compile: bool, steps: int = 6) -> list[list[int]]:
    dec = Decoder(model, rows=2, capacity=16, compile=compile)
    logits = torch.cat([dec.prefill([p], [[i]]) for i, p in enumerate(PROMPTS)])
    tokens = [logits.argmax(-1)]
    for _ in range(steps - 1):
        tokens.append(dec.step(tokens[-1], torch.zeros(2), greedy_rows(2, 40))[0])
    return torch.stack(tokens, 1).tolist()


@pytest.mark.parametrize("pattern", ["M*-E", "MM-", "*-*E"])
def test_decoder_steps_equal_full_forward_greedy(pattern):
    model = small(pattern)
    assert decode(model, compile=False) == [reference(model, p, 6) for p in PROMPTS]


def test_compiled_decoder_equals_eager():
    model = small("M*-E")
    assert decode(model, compile=True) == decode(model, compile=False)


def test_generate_on_the_compiled_path_gives_the_eager_tokens():
    model = small("M*-E")
    for prompts in (PROMPTS, PROMPTS[:1]):
        assert generate(model, prompts, compile=True) == generate(model, prompts)
    sampled = dict(sampler=Sampler(temperature=1.0, top_p=0.9), n=2, max_new_tokens=10, seed=4)
    eager, compiled = generate_batch(model, PROMPTS, **sampled), generate_batch(model, PROMPTS, compile=True, **sampled)
    assert [c.tokens for c in compiled] == [c.tokens for c in eager]
    for c, e in zip(compiled, eager):
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(e.logprobs), atol=1e-4, rtol=0)


def test_compiled_prefill_in_chunks_equals_the_sequence_prefill():
    model = small("M*-E")
    prompt = torch.randint(1, 40, (37,)).tolist()  # three chunks, the last one padded
    eager = Decoder(model, 1, padded_capacity(40), compile=False).prefill([prompt], [[0]])
    compiled = Decoder(model, 1, padded_capacity(40), compile=True).prefill([prompt], [[0]])
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_compiled_graphs_check_guards_once_per_call_signature():
    """A decoder whose model and cache shapes were seen before runs its graph without Dynamo's guard
    checks, and right; another model or another cache size gets them."""
    cfg = HybridConfig(pattern="M*-E", **SMALL)
    torch.manual_seed(0)
    model, other = HybridLM(cfg).eval(), HybridLM(cfg).eval()

    def guarded_calls(m: HybridLM, prompt: list[int], capacity: int) -> int:
        fast, plain = Decoder(m, 1, capacity, compile=True), Decoder(m, 1, capacity)
        tok = fast.prefill([prompt], [[0]]).argmax(-1)
        assert torch.equal(tok, plain.prefill([prompt], [[0]]).argmax(-1))
        for _ in range(3):
            nxt = fast.step(tok, torch.zeros(1), greedy_rows(1, 40))[0]
            assert torch.equal(nxt, plain.step(tok, torch.zeros(1), greedy_rows(1, 40))[0])
            tok = nxt
        return fast._step.guarded_calls

    assert guarded_calls(model, [3, 4, 5], 64) == 1
    assert guarded_calls(model, [9, 8, 7, 6, 5], 64) == 0  # the same shapes: no guards
    assert guarded_calls(other, [3, 4, 5], 64) == 1
    assert guarded_calls(model, [3, 4, 5], 128) == 1


def test_a_prompt_too_long_for_the_decoder_is_refused():
    dec = Decoder(small("M*"), 1, 8)
    with pytest.raises(ValueError, match="leaves no room"):
        dec.prefill([list(range(1, 9))], [[0]])
