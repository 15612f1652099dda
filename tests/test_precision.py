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
def test_quantised_gradients_are_close_to_exact(recipe):
    torch.manual_seed(0)
    x = torch.randn(64, 48, requires_grad=True)
    w = torch.randn(32, 48, requires_grad=True)
    from chimera.precision import quant_linear

    y = quant_linear(x, w, None, recipe)
    gy = torch.randn_like(y)
    y.backward(gy)
    ref_y = x @ w.t()
    assert (y - ref_y).norm() / ref_y.norm() < (0.05 if isinstance(recipe, FP8Recipe) else 0.2)
    # E5M2 gradients carry 2 mantissa bits (~4% rms error per element); NVFP4 carries 1
    tol = 0.1 if isinstance(recipe, FP8Recipe) else 0.3
    assert (w.grad - gy.t() @ x).norm() / (gy.t() @ x).norm() < tol
    assert (x.grad - gy @ w).norm() / (gy @ w).norm() < tol


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
