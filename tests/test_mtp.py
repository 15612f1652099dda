"""Multi-token prediction and self-speculative decoding."""

import pytest
import torch

from chimera.models import HybridConfig, HybridLM
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


def test_an_mtp_depth_steps_as_its_sequence_forward():
    """An MTP depth over a cache, a few positions at a time with a prefix kept, equals its forward over
    the whole sequence."""
    m = _model("M*ME/*E/*E")
    x = torch.randint(0, 272, (1, 14))
    with torch.no_grad():
        h = m(x).hidden
        full = m.mtp(1, h[:, :12], m.backbone.embeddings(x[:, 1:13]))
        cache = m.new_mtp_cache(1, 16)
        first = m.mtp(1, h[:, :6], m.backbone.embeddings(x[:, 1:7]), cache)
        ctx = cache.context(4, record=True)
        block = m.mtp.step(1, h[:, 6:10], m.backbone.embeddings(x[:, 7:11]), cache, ctx)
        cache.advance(ctx, torch.tensor([2]))  # keep positions 6, 7
        ctx = cache.context(4)
        rest = m.mtp.step(1, h[:, 8:12], m.backbone.embeddings(x[:, 9:13]), cache, ctx)
    torch.testing.assert_close(torch.cat([first, block[:, :2], rest], 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(block, full[:, 6:10], atol=1e-5, rtol=1e-5)
