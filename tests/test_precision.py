"""FP8 / NVFP4 formats and recipes: exact representable values, hand-computed scales, saturation,
unbiased stochastic rounding, the Hadamard transform, and a quantised model that trains."""

import pytest
import torch
import torch.nn.functional as F

from chimera.models import HybridLM, get_config
from chimera.precision import (
    FP8Recipe,
    NVFP4Recipe,
    QuantLinear,
    apply_rht,
    convert,
    fake_quantize_fp8,
    fake_quantize_nvfp4,
    hadamard,
    nvfp4_scales,
    random_hadamard,
    round_e2m1,
    round_fp8,
)
from chimera.precision.recipes import quantized_layer_indices

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


@pytest.mark.parametrize("fmt,dtype", [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)])
def test_every_fp8_value_round_trips_exactly(fmt, dtype):
    values = torch.arange(256, dtype=torch.uint8).view(dtype).float()
    values = values[torch.isfinite(values)]
    assert torch.equal(round_fp8(values, fmt), values)
    assert len(values.unique()) == (253 if fmt == "e4m3" else 247)  # +-0 and the NaN / inf codes excluded


def test_every_e2m1_value_round_trips_exactly():
    values = torch.cat([E2M1, -E2M1])
    assert torch.equal(round_e2m1(values), values)
    assert torch.equal(round_e2m1(values, stochastic=True), values)


def test_e2m1_rounds_ties_to_even_and_saturates():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 100.0, -5.5, -0.2])
    assert round_e2m1(x).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, -6.0, 0.0]
    assert round_fp8(torch.tensor([1e6, -1e6]), "e4m3").tolist() == [448.0, -448.0]


def test_stochastic_rounding_is_unbiased():
    g = torch.Generator().manual_seed(0)
    for v in (0.3, 1.1, 2.7, 4.9, -3.3):
        draws = round_e2m1(torch.full((200_000,), v), stochastic=True, generator=g)
        assert set(draws.unique().tolist()) <= set((E2M1 * (1 if v > 0 else -1)).tolist())
        assert draws.mean().item() == pytest.approx(v, abs=0.01)


def test_nvfp4_block_scales_equal_hand_computed():
    x = torch.zeros(2, 32)
    x[0, :16] = torch.linspace(-3, 3, 16)  # block amax 3
    x[0, 16:] = 0.1  # block amax 0.1
    x[1, :16] = 12.0  # tensor amax 12
    g, scale = nvfp4_scales(x)
    assert g.item() == pytest.approx(12.0 / (6 * 448))
    for row, col, amax in ((0, 0, 3.0), (0, 16, 0.1), (1, 0, 12.0)):
        expected = round_fp8(torch.tensor(amax / 6 / g.item()), "e4m3").item() * g.item()
        assert scale[row, col].item() == pytest.approx(expected, rel=1e-6)
    assert scale[1, 16].item() == 0.0  # an all-zero block


def test_nvfp4_zero_blocks_and_exact_grid_values():
    x = torch.zeros(4, 32)
    assert torch.equal(fake_quantize_nvfp4(x), x)
    y = torch.cat([E2M1, -E2M1]).repeat(2, 2)  # (2, 32): every block holds 6 -> block scale 1 after decoding
    q = fake_quantize_nvfp4(y)
    torch.testing.assert_close(q, y, rtol=1e-6, atol=0)
    big = torch.randn(16, 64) * 1000
    err = (fake_quantize_nvfp4(big) - big).abs() / big.abs().amax()
    assert err.max() < 0.2


def test_nvfp4_2d_blocks_quantise_w_and_wT_identically():
    w = torch.randn(48, 64)
    a = fake_quantize_nvfp4(w, block_2d=True)
    b = fake_quantize_nvfp4(w.t().contiguous(), block_2d=True).t()
    assert torch.equal(a, b)


def test_hadamard_is_orthogonal_and_undone_exactly():
    h = hadamard(16)
    assert torch.equal(h @ h.t(), torch.eye(16))
    r = random_hadamard(16, seed=3)
    assert torch.equal(r @ r.t(), torch.eye(16))
    x = torch.randint(-8, 8, (5, 48)).float()  # dyadic values: every product and sum is exact
    assert torch.equal(apply_rht(apply_rht(x, r), r.t()), x)
    y = torch.randn(7, 32)
    torch.testing.assert_close(apply_rht(y, r) @ apply_rht(torch.ones(1, 32), r).t(), y @ torch.ones(32, 1))


def test_fp8_current_scaling_maps_amax_to_format_max():
    x = torch.randn(100) * 3
    q = fake_quantize_fp8(x, "e4m3")
    assert q.abs().max().item() == pytest.approx(x.abs().max().item(), rel=1e-6)  # amax -> 448 exactly
    assert ((q - x).abs() / x.abs().clamp(min=1e-3)).median() < 0.07


@pytest.mark.parametrize("recipe", [FP8Recipe(), NVFP4Recipe()])
def test_converted_layers_keep_high_precision_ends(recipe):
    model = convert(HybridLM(get_config("small-moe")), recipe)
    n = len(model.backbone.layers)
    expected = sorted(set(range(n)) - recipe.kept(n))
    assert quantized_layer_indices(model) == expected
    assert not isinstance(model.lm_head, QuantLinear)
    assert recipe.kept(n) == ({0, n - 1} if isinstance(recipe, FP8Recipe) else {n - 2, n - 1})


@pytest.mark.parametrize("recipe", [FP8Recipe(), NVFP4Recipe()])
def test_quantised_model_trains_and_loss_falls(recipe):
    torch.manual_seed(0)
    model = convert(HybridLM(get_config("tiny-moe").replace(hidden_size=64)), recipe).train()
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=1e-2)
    ids = torch.randint(3, 272, (4, 33))
    losses = []
    for _ in range(120):
        loss = F.cross_entropy(model(ids[:, :-1]).logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


# ---- backward against the formats applied by hand ----------------------------------------------------
E2M1_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _e2m1_by_hand(v: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """E2M1 of v (already divided by its block scale): nearest grid value, ties to the even grid index;
    or, given uniforms u, the upper neighbour with probability (|v| - lower) / (upper - lower)."""
    a = v.abs().clamp(max=6.0)
    if u is None:
        dist = (a[..., None] - E2M1_GRID).abs()
        best = dist.min(-1, keepdim=True).values
        tied = dist == best  # one or two grid values; prefer the even index
        idx = torch.where(tied[..., ::2].any(-1), (tied[..., ::2].float().argmax(-1)) * 2,
                          tied[..., 1::2].float().argmax(-1) * 2 + 1)
        level = E2M1_GRID[idx]
    else:
        lo_idx = (a[..., None] >= E2M1_GRID).sum(-1) - 1
        lo, hi = E2M1_GRID[lo_idx], E2M1_GRID[(lo_idx + 1).clamp(max=7)]
        step = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        level = torch.where(u < (a - lo) / step, hi, lo)
    return torch.sign(v) * level


def _nvfp4_by_hand(x: torch.Tensor, tiles: bool = False, u: torch.Tensor | None = None) -> torch.Tensor:
    """NVFP4 quantise-dequantise: tensor scale amax / (6 * 448), E4M3 block scales of blocks of 16 along the
    last dim (or 16x16 tiles), E2M1 values."""
    g = x.abs().max() / (6 * 448)
    r, c = x.shape
    if tiles:
        amax = x.abs().reshape(r // 16, 16, c // 16, 16).amax(dim=(1, 3), keepdim=True).expand(-1, 16, -1, 16)
    else:
        amax = x.abs().reshape(r, c // 16, 16).amax(-1, keepdim=True).expand(-1, -1, 16)
    scale = (amax.reshape(r, c) / 6 / g).to(torch.float8_e4m3fn).float() * g
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, _e2m1_by_hand(x / safe, u) * scale, torch.zeros_like(x))


def _fp8_by_hand(x: torch.Tensor, dtype: torch.dtype, fmt_max: float) -> torch.Tensor:
    scale = fmt_max / x.abs().max()
    return (x * scale).clamp(-fmt_max, fmt_max).to(dtype).float() / scale


def _pad16(x: torch.Tensor, dim: int) -> torch.Tensor:
    pad = [0, 0, 0, 0]
    pad[1 if dim == 1 else 3] = (-x.size(dim)) % 16
    return F.pad(x, pad)


def _hadamard16_by_hand(seed: int) -> torch.Tensor:
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    h = torch.kron(torch.kron(torch.kron(h2, h2), h2), h2) / 4
    signs = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(seed)).float() * 2 - 1
    return signs[:, None] * h


def _nvfp4_backward_by_hand(x, w, gy, recipe: NVFP4Recipe, seed: int):
    """dX = Q(dY) Q(W) and dW = Q(H dY^T) Q(H x^T)^T, with the recipe's switches, from the same uniforms."""
    n_out, n_in = w.shape
    wq = _nvfp4_by_hand(_pad16(_pad16(w, 1), 0), tiles=recipe.weight_2d_blocks)[:n_out, :n_in]
    g = torch.Generator().manual_seed(seed)  # the uniforms the backward draws, in its order
    gy_p = _pad16(gy, 1)
    u1 = torch.rand(gy_p.shape, generator=g) if recipe.stochastic_grads else None
    gx = _nvfp4_by_hand(gy_p, u=u1)[:, :n_out] @ wq
    gt, xt = _pad16(gy.t(), 1), _pad16(x.t(), 1)  # blocks along tokens
    if recipe.hadamard_wgrad:
        h = _hadamard16_by_hand(recipe.hadamard_seed)
        gt = (gt.reshape(gt.size(0), -1, 16) @ h).reshape(gt.shape)
        xt = (xt.reshape(xt.size(0), -1, 16) @ h).reshape(xt.shape)
    u2 = torch.rand(gt.shape, generator=g) if recipe.stochastic_grads else None
    gw = _nvfp4_by_hand(gt, u=u2) @ _nvfp4_by_hand(xt).t()
    return gx, gw


def _backward(recipe, x, w, gy, seed):
    from chimera.precision import quant_linear

    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = quant_linear(x, w, None, recipe)
    torch.manual_seed(seed)  # stochastic rounding draws from the global generator
    y.backward(gy)
    return y.detach(), x.grad, w.grad


NVFP4_VARIANTS = {"recipe": NVFP4Recipe(), "no_hadamard": NVFP4Recipe(hadamard_wgrad=False),
                  "no_stochastic_rounding": NVFP4Recipe(stochastic_grads=False),
                  "1d_weight_blocks": NVFP4Recipe(weight_2d_blocks=False)}


@pytest.mark.parametrize("variant", list(NVFP4_VARIANTS))
def test_nvfp4_gradients_equal_the_formats_applied_by_hand(variant):
    recipe = NVFP4_VARIANTS[variant]
    x, w, gy = torch.randn(40, 48), torch.randn(24, 48), torch.randn(40, 24)  # padding on every axis
    y, gx, gw = _backward(recipe, x, w, gy, seed=7)
    hand_x = _nvfp4_by_hand(x)
    hand_w = _nvfp4_by_hand(_pad16(_pad16(w, 1), 0), tiles=recipe.weight_2d_blocks)[:24]
    torch.testing.assert_close(y, hand_x @ hand_w.t(), rtol=1e-6, atol=1e-6)
    hand_gx, hand_gw = _nvfp4_backward_by_hand(x, w, gy, recipe, seed=7)
    torch.testing.assert_close(gx, hand_gx, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gw, hand_gw, rtol=1e-6, atol=1e-6)
    for other, r in NVFP4_VARIANTS.items():  # each switch changes the gradients far beyond that tolerance
        if other != variant:
            o_gx, o_gw = _nvfp4_backward_by_hand(x, w, gy, r, seed=7)
            assert (o_gx - gx).abs().max() > 1e-2 or (o_gw - gw).abs().max() > 1e-2, other


def test_fp8_gradients_equal_the_formats_applied_by_hand():
    x, w, gy = torch.randn(40, 48), torch.randn(24, 48), torch.randn(40, 24)
    y, gx, gw = _backward(FP8Recipe(), x, w, gy, seed=0)
    xq, wq = _fp8_by_hand(x, torch.float8_e4m3fn, 448.0), _fp8_by_hand(w, torch.float8_e4m3fn, 448.0)
    gq = _fp8_by_hand(gy, torch.float8_e5m2, 57344.0)
    torch.testing.assert_close(y, xq @ wq.t(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx, gq @ wq, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gw, gq.t() @ xq, rtol=1e-6, atol=1e-6)
    e4m3 = _fp8_by_hand(gy, torch.float8_e4m3fn, 448.0)  # E4M3 gradients would be another result
    assert (e4m3 @ wq - gx).abs().max() > 1e-2
