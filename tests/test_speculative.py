"""Speculative decoding on the MTP layers: rounds equal greedy decoding, drafts equal the uncached MTP
forward, the compiled rounds equal the eager ones, and the thinking budget holds."""

import pytest
import torch
import torch.nn.functional as F

from chimera.inference import SamplingConfig, SpeculativeDecoder, ThinkingBudget, generate, speculative_generate
from chimera.models import HybridConfig, HybridLM
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


def greedy(model, prompt, n):
    return generate(model, [prompt], SamplingConfig(max_new_tokens=n))[0]


def assert_drafts_equal_uncached_mtp(model, prompt, out, history):
    """Every round's drafts equal the MTP forward over the whole sequence up to the frontier (depth k
    predicts from depth k-1's output, as deep as the drafts go)."""
    full = prompt + out
    for L, drafts in history:
        ids = torch.tensor([full[:L + 1] + drafts[:-1]])
        with torch.no_grad():
            h, want = model(ids).hidden, []
            for k in range(1, len(drafts) + 1):
                h = model.mtp(k, h[:, :ids.size(1) - k], model.backbone.embeddings(ids[:, k:]))
                want.append(int(model.lm_head(h[0, L - 1]).argmax()))
        assert drafts == want


@pytest.mark.parametrize("pattern,share", [("M*ME/*E/*E", False), ("M*ME/*E/*E", True), ("MM-/M/M/M", False),
                                           ("E*/-E", False)])
def test_greedy_rounds_equal_greedy_and_drafts_equal_the_uncached_mtp(pattern, share):
    model = half_trained(pattern, share)
    accepted = drafted = 0
    for prompt in PROMPTS:
        got, stats = speculative_generate(model, prompt, 20)
        assert got == greedy(model, prompt, 20)
        assert_drafts_equal_uncached_mtp(model, prompt, got, stats.history)
        accepted, drafted = accepted + stats.accepted, drafted + stats.drafted
    assert 0 < accepted < drafted  # rounds with partial acceptance happened


def test_compiled_rounds_equal_the_eager_rounds():
    model = half_trained("M*ME/*E/*E", share=True)
    for prompt in PROMPTS:
        eager, eager_stats = speculative_generate(model, prompt, 20)
        got, stats = speculative_generate(model, prompt, 20, compile=True)
        assert got == eager and stats.history == eager_stats.history and stats.accepted > 0


def test_stop_tokens_and_short_prompts():
    model = half_trained("M*ME/*E/*E", steps=0)
    ref = greedy(model, [1, 2, 3], 12)
    got, _ = SpeculativeDecoder(model).generate([1, 2, 3], 12, stop_tokens=(ref[4],))
    assert got == ref[:ref.index(ref[4]) + 1]
    with pytest.raises(ValueError, match="at least depth=2"):
        SpeculativeDecoder(model).generate([1], 5)
    out, stats = speculative_generate(model, [1], 5)  # too short to draft from: decoded plainly
    assert out == greedy(model, [1], 5) and stats.rounds == 0


def test_long_prompts_on_both_prefill_paths(monkeypatch):
    import chimera.inference.speculative as spec

    model = half_trained("M*ME/*E/*E", steps=30)
    prompt = [(5 + 2 * i) % 40 for i in range(21)]  # two prefill chunks
    ref = greedy(model, prompt, 16)
    got, stats = SpeculativeDecoder(model).generate(prompt, 16)
    assert got == ref
    assert_drafts_equal_uncached_mtp(model, prompt, got, stats.history)
    monkeypatch.setattr(spec, "STATIC_PREFILL_MAX", 8)  # the sequence forward, then copied
    again, again_stats = SpeculativeDecoder(model).generate(prompt, 16)
    assert again == ref and again_stats.history == stats.history


def test_a_shared_mtp_block_drafts_past_its_trained_depths():
    model = half_trained("M*ME/*E/*E", share=True)
    for prompt in (PROMPTS[1], [(1 + 3 * i) % 40 for i in range(17)]):  # the second: a 1-token chunk first
        got, stats = SpeculativeDecoder(model, depth=3).generate(prompt, 20)
        assert got == greedy(model, prompt, 20)
        assert all(len(drafts) == 3 for _, drafts in stats.history)
        assert_drafts_equal_uncached_mtp(model, prompt, got, stats.history)
    with pytest.raises(ValueError, match="shared by all depths"):
        SpeculativeDecoder(half_trained("M*ME/*E/*E", steps=0), depth=3)


@pytest.mark.parametrize("n", [0, 3, 9])
def test_speculative_decoding_under_a_thinking_budget_equals_plain_decoding(n):
    """Greedy, the budget decides the same tokens with and without speculation; sampled, the thinking
    segment never exceeds N + grace and is closed once."""
    model = half_trained("M*ME/*E/*E", share=True)
    think, end, newline = 30, 31, (7,)
    budget = ThinkingBudget(n, think, end, newline, max_answer_tokens=5)
    for prompt in ([3, 5, 7, 9, think], [10, 11, 12, 13, 14, think]):
        ref = generate(model, [prompt], SamplingConfig(max_new_tokens=40), budget=budget)[0]
        got, stats = speculative_generate(model, prompt, 40, budget=budget)
        assert got == ref and stats.rounds > 0
        for seed in range(4):
            out, _ = speculative_generate(model, prompt, 40, budget=budget, seed=seed,
                                          sampler=SamplingConfig(temperature=1.5).sampler())
            assert out.count(end) == 1 and out.index(end) <= n + budget.grace and think not in out[out.index(end):]
            assert len(out) - out.index(end) - 1 <= 5
