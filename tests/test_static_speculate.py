"""Speculative decoding on static caches (one graph per round) against greedy decoding and the plain
speculative decoder."""

import pytest
import torch
import torch.nn.functional as F

from chimera.generate import SamplingConfig, generate
from chimera.models import HybridConfig, HybridLM
from chimera.models.static_speculate import StaticSpeculator
from chimera.speculative import speculative_generate
from chimera.train.lm import mtp_loss

SMALL = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48,
             mamba_num_heads=4, mamba_head_dim=8, n_groups=2, ssm_state_size=8, chunk_size=8, vocab_size=40,
             n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
             moe_shared_expert_intermediate_size=24)
PROMPTS = [[3, 5, 7, 9], [10, 11, 12, 13, 14, 15], [0, 3, 6]]


def half_trained(pattern: str, share: bool = False, steps: int = 30) -> HybridLM:
    """A model briefly trained (main and MTP losses) on arithmetic progressions mod 40: its drafts are
    right often but not always, so rounds accept anything from none to all of them."""
    torch.manual_seed(0)
    model = HybridLM(HybridConfig(pattern=pattern, mtp_share_block=share, **SMALL))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        start, stride = torch.randint(0, 40, (16, 1), generator=g), torch.randint(1, 4, (16, 1), generator=g)
        x = (start + stride * torch.arange(20)) % 40
        out = model(x[:, :-1], return_mtp=True)
        loss = F.cross_entropy(out.logits.flatten(0, 1), x[:, 1:].flatten()) + mtp_loss(out.mtp_logits, x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("pattern,share", [("M*ME/*E/*E", False), ("M*ME/*E/*E", True), ("MM-/M/M/M", False),
                                           ("E*/-E", False)])
def test_static_rounds_equal_greedy_and_the_plain_speculative_decoder(pattern, share):
    model = half_trained(pattern, share)
    accepted = drafted = 0
    for prompt in PROMPTS:
        ref = generate(model, [prompt], SamplingConfig(max_new_tokens=20))[0]
        got, stats = StaticSpeculator(model).generate(prompt, 20)
        plain, plain_stats = speculative_generate(model, prompt, 20)
        assert got == ref == plain
        # the same drafts at the same frontiers: every MTP depth's cache and carry was rolled back exactly
        assert stats.history == plain_stats.history
        accepted, drafted = accepted + stats.accepted, drafted + stats.drafted
    assert 0 < accepted < drafted  # rounds with partial acceptance happened


def test_compiled_rounds_equal_greedy():
    model = half_trained("M*ME/*E/*E", share=True)
    for prompt in PROMPTS:
        ref = generate(model, [prompt], SamplingConfig(max_new_tokens=20))[0]
        got, stats = speculative_generate(model, prompt, 20, compile=True)
        assert got == ref
        assert stats.accepted > 0


def test_stop_tokens_and_short_prompts():
    model = half_trained("M*ME/*E/*E", steps=0)
    ref = generate(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=12))[0]
    got, _ = StaticSpeculator(model).generate([1, 2, 3], 12, stop_tokens=(ref[4],))
    assert got == ref[:ref.index(ref[4]) + 1]
    with pytest.raises(ValueError, match="at least depth=2"):
        StaticSpeculator(model).generate([1], 5)
    # speculative_generate takes the plain path for a prompt that short
    assert speculative_generate(model, [1], 5, compile=True)[0] == generate(model, [[1]],
                                                                          SamplingConfig(max_new_tokens=5))[0]


def test_long_prompts_on_both_prefill_paths(monkeypatch):
    import chimera.models.static_speculate as ss

    model = half_trained("M*ME/*E/*E", steps=30)
    prompt = [(5 + 2 * i) % 40 for i in range(21)]  # two prefill chunks
    ref = generate(model, [prompt], SamplingConfig(max_new_tokens=16))[0]
    got, stats = StaticSpeculator(model).generate(prompt, 16)
    assert got == ref and stats.history == speculative_generate(model, prompt, 16)[1].history
    monkeypatch.setattr(ss, "STATIC_PREFILL_MAX", 8)  # the plain chunked scan, then copied
    assert StaticSpeculator(model).generate(prompt, 16)[0] == ref


def test_a_shared_mtp_block_drafts_past_its_trained_depths():
    model = half_trained("M*ME/*E/*E", share=True)
    for prompt in (PROMPTS[1], [(1 + 3 * i) % 40 for i in range(17)]):  # the second: a 1-token chunk first
        ref = generate(model, [prompt], SamplingConfig(max_new_tokens=20))[0]
        got, stats = StaticSpeculator(model, depth=3).generate(prompt, 20)
        plain, plain_stats = speculative_generate(model, prompt, 20, depth=3)
        assert got == ref == plain and stats.history == plain_stats.history
        assert all(len(drafts) == 3 for _, drafts in stats.history)
    with pytest.raises(ValueError, match="shared by all depths"):
        StaticSpeculator(half_trained("M*ME/*E/*E", steps=0), depth=3)
