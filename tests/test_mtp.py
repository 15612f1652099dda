"""Multi-token prediction and self-speculative decoding."""

import pytest
import torch

from chimera.generate import SamplingConfig, generate
from chimera.models import HybridConfig, HybridLM
from chimera.speculative import speculative_generate
from chimera.train.lm import mtp_loss

PATTERNS = ["MEM*ME/*E/*E", "M*M-/*", "MMM/M/M/M", "E*/-E"]


def _model(pattern, share=False, seed=0):
    torch.manual_seed(seed)
    m = HybridLM(HybridConfig(pattern=pattern, mtp_share_block=share)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("dt_bias", "D")):
                p.add_(torch.randn_like(p) * 0.3)
    return m


def test_pattern_suffix_declares_mtp_depths():
    cfg = HybridConfig(pattern="MEM*ME/*E/*E")
    assert (cfg.pattern, cfg.mtp_pattern, cfg.mtp_depths, cfg.full_pattern) == ("MEM*ME", "*E", 2, "MEM*ME/*E/*E")
    with pytest.raises(ValueError, match="same, non-empty pattern"):
        HybridConfig(pattern="M*/*E/E")


def test_mtp_weights_round_trip_in_hf_names(tmp_path):
    m = _model("M*M-/*E/*E", share=True)
    names = set(m.state_dict())
    assert {"mtp.layers.0.eh_proj.weight", "mtp.layers.0.enorm.weight", "mtp.layers.0.hnorm.weight",
            "mtp.layers.1.final_layernorm.weight"} <= names
    m.save_pretrained(tmp_path)
    back = HybridLM.from_pretrained(tmp_path)
    assert back.config.full_pattern == "M*M-/*E/*E" and back.config.mtp_share_block
    x = torch.randint(0, 272, (1, 12))
    a, b = m(x, return_mtp=True), back(x, return_mtp=True)
    for la, lb in zip(a.mtp_logits, b.mtp_logits):
        assert torch.equal(la, lb)


def test_mtp_depth_k_predicts_token_t_plus_k_plus_1():
    m = _model("M*/*/*")
    x = torch.randint(0, 272, (2, 10))
    out = m(x, return_mtp=True)
    assert [t.shape[1] for t in out.mtp_logits] == [9, 8]
    y = torch.cat([x[:, 1:], torch.full((2, 1), -100)], 1)  # targets: next tokens
    loss = mtp_loss(out.mtp_logits, y)
    ref = torch.nn.functional.cross_entropy(out.mtp_logits[0][:, :8].flatten(0, 1), x[:, 2:].flatten())
    ref2 = torch.nn.functional.cross_entropy(out.mtp_logits[1][:, :7].flatten(0, 1), x[:, 3:].flatten())
    torch.testing.assert_close(loss, (ref + ref2) / 2)


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_greedy_speculative_equals_greedy_and_drafts_equal_uncached_mtp(pattern, share):
    m = _model(pattern, share)
    prompt = torch.randint(16, 272, (9,)).tolist()
    ref = generate(m, [prompt], SamplingConfig(max_new_tokens=24))[0]
    got, stats = speculative_generate(m, prompt, 24)
    assert got == ref
    full = prompt + got
    for L, drafts in stats.history:  # every draft equals the MTP forward over the whole sequence
        with torch.no_grad():
            out = m(torch.tensor([full[:L + 1] + drafts[:-1]]), return_mtp=True)
        assert drafts == [int(out.mtp_logits[k][0, L - 1].argmax()) for k in range(len(drafts))]


def test_rollback_restores_every_cache_exactly():
    m = _model("M*ME/*E")
    ids = torch.randint(0, 272, (1, 20))
    a, b = m.new_cache(1), m.new_cache(1)
    with torch.no_grad():
        m(ids[:, :15], cache=a)
        m(ids[:, :15], cache=b)
        a.record(True)
        m(ids[:, 15:20], cache=a)  # verify 5 tokens, keep 2
        a.rollback(keep=2, total=5)
        m(ids[:, 15:17], cache=b)
        nxt = torch.randint(0, 272, (1, 1))
        torch.testing.assert_close(m(nxt, cache=a).logits, m(nxt, cache=b).logits, atol=1e-5, rtol=1e-5)
    for sa, sb in zip(a.layers, b.layers):
        if hasattr(sa, "ssm"):
            torch.testing.assert_close(sa.ssm, sb.ssm, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(sa.conv, sb.conv)
