"""The three ways MoE dispatches tokens to experts compute the same thing."""

import torch

from chimera.models import HybridConfig
from chimera.models.moe import MoE


def test_sorted_gathered_and_dense_dispatch_agree():
    torch.manual_seed(0)
    moe = MoE(HybridConfig(pattern="E", n_routed_experts=4, num_experts_per_tok=2)).eval()
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(64, 64)
    _, w, idx = moe.gate(x)
    sorted_ = moe.experts(x, idx, w)  # 128 assignments over 4 experts: sorted by expert, one matmul each
    dense = moe.experts(x, idx, w, loop_free=True)  # 4 experts <= 4 * top-2: every expert on every token
    gathered = moe.experts._gathered(x, idx, w)
    torch.testing.assert_close(dense, sorted_, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gathered, sorted_, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sorted_, moe.experts(x, idx.flip(-1), w))  # the routing matters
