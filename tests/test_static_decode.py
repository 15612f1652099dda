"""The fast decode path (static caches, compiled step) against the plain HybridCache path."""

import pytest
import torch

from chimera.generate import left_pad, prefill
from chimera.models import HybridConfig, HybridLM
from chimera.models.static_decode import StaticDecoder

SMALL = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48,
             mamba_num_heads=4, mamba_head_dim=8, n_groups=2, ssm_state_size=8, chunk_size=8, vocab_size=40,
             n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
             moe_shared_expert_intermediate_size=24)


def reference_and_static(pattern: str, compile: bool, steps: int = 6):
    torch.manual_seed(0)
    model = HybridLM(HybridConfig(pattern=pattern, **SMALL)).eval()
    ids, mask = left_pad([[3, 4, 5, 6, 7, 8, 9], [11, 12, 13]], pad_id=0)  # left padding in row 2
    plain = model.new_cache(2, kv_capacity=ids.size(1) + steps)
    logits = prefill(model, ids, plain, mask)
    fast_cache = model.new_cache(2, kv_capacity=ids.size(1) + steps)
    prefill(model, ids, fast_cache, mask)
    fast = StaticDecoder(model, fast_cache, capacity=ids.size(1) + steps, compile=compile)
    ref, got = [], []
    tok = logits.argmax(-1)
    with torch.no_grad():
        for _ in range(steps):
            ref.append(model(tok[:, None], cache=plain, logits_to_keep=1).logits[:, -1])
            got.append(fast.step(tok))
            tok = ref[-1].argmax(-1)
    return torch.stack(ref), torch.stack(got), fast


@pytest.mark.parametrize("pattern", ["M*-E", "MM-", "*-*E"])
def test_static_step_equals_plain_decoding(pattern):
    ref, got, _ = reference_and_static(pattern, compile=False)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_compiled_static_step_equals_plain_decoding():
    ref, got, _ = reference_and_static("M*-E", compile=True)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_static_cache_refuses_to_overflow():
    _, _, fast = reference_and_static("M*", compile=False, steps=2)
    with pytest.raises(ValueError, match="static cache is full"):
        fast.step(torch.tensor([1, 2]))


def test_generate_on_the_compiled_path_gives_the_plain_tokens():
    from chimera.generate import SamplingConfig, generate

    torch.manual_seed(0)
    model = HybridLM(HybridConfig(pattern="M*-E", **SMALL)).eval()
    cfg = SamplingConfig(max_new_tokens=8)
    for prompts in ([[3, 4, 5, 6, 7, 8, 9], [11, 12, 13]], [[3, 4, 5, 6, 7, 8, 9]]):  # batch 1: static prefill
        assert generate(model, prompts, cfg, compile=True) == generate(model, prompts, cfg)


def test_compiled_graphs_check_guards_once_per_call_signature():
    """A decoder whose model and cache shapes were seen before runs its graph without Dynamo's guard
    checks, and right; another model or another cache size gets them."""
    torch.manual_seed(0)
    cfg = HybridConfig(pattern="M*-E", **SMALL)
    model, other = HybridLM(cfg).eval(), HybridLM(cfg).eval()

    def guarded_calls(m: HybridLM, prompt: list[int], capacity: int) -> int:
        fast, logits = StaticDecoder.from_prompt(m, prompt, capacity, compile=True)
        plain, ref = StaticDecoder.from_prompt(m, prompt, capacity)
        torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
        tok = ref.argmax(-1)
        torch.testing.assert_close(fast.step(tok), plain.step(tok), atol=1e-4, rtol=1e-4)
        return fast._step.guarded_calls

    assert guarded_calls(model, [3, 4, 5], 20) == 1
    assert guarded_calls(model, [9, 8, 7, 6, 5], 24) == 0  # both caches round up to 64 positions
    assert guarded_calls(other, [3, 4, 5], 20) == 1
    assert guarded_calls(model, [3, 4, 5], 100) == 1


@pytest.mark.parametrize("pattern", ["M*-E", "MM-"])
def test_static_prefill_in_chunks_equals_plain_prefill(pattern):
    torch.manual_seed(0)
    model = HybridLM(HybridConfig(pattern=pattern, **SMALL)).eval()
    prompt = torch.randint(1, 40, (37,)).tolist()  # three chunks, the last one padded
    plain = model.new_cache(1, kv_capacity=45)
    ref = [prefill(model, torch.tensor([prompt]), plain)]
    fast, logits = StaticDecoder.from_prompt(model, prompt, capacity=45)
    got = [logits]
    with torch.no_grad():
        for _ in range(6):
            tok = ref[-1].argmax(-1)
            ref.append(model(tok[:, None], cache=plain, logits_to_keep=1).logits[:, -1])
            got.append(fast.step(tok))
    torch.testing.assert_close(torch.stack(got), torch.stack(ref), atol=1e-5, rtol=1e-5)
