"""Low-precision training recipes as a conversion pass over a built model: ``convert(model, recipe)``.

Every ``nn.Linear`` inside the backbone's (and MTP's) layers, and the MoE expert matrices, compute
their three GEMMs (forward, input gradient, weight gradient) on quantise-dequantised operands;
embeddings, the output head, norms, routers, the Mamba conv and the layers a recipe keeps in high
precision are left alone. On CPU this is an exact emulation; the weights stay in their dtype,
so the exported model is a plain checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from chimera.models.moe import Experts
from chimera.precision.formats import fake_quantize_fp8
from chimera.precision.nvfp4 import BLOCK, apply_rht, fake_quantize_nvfp4, pad_to_block, random_hadamard


@dataclass(frozen=True)
class FP8Recipe:
    """Nemotron-H FP8: E4M3 weights and activations, E5M2 gradients, tensor-wise current scaling,
    the first and last layers in high precision."""

    weight_format: str = "e4m3"
    activation_format: str = "e4m3"
    grad_format: str = "e5m2"
    keep_first_layers: int = 1
    keep_last_layers: int = 1

    def kept(self, n_layers: int) -> set[int]:
        return set(range(self.keep_first_layers)) | set(range(n_layers - self.keep_last_layers, n_layers))


@dataclass(frozen=True)
class NVFP4Recipe:
    """Nemotron 3 NVFP4: E2M1 in 16-element blocks with E4M3 block scales and an FP32 tensor scale;
    16x16 blocks for weights (forward and backward see the same weights); a random Hadamard
    transform on the weight-gradient GEMM inputs; stochastic rounding of gradients; the last
    ~15% of layers in high precision."""

    weight_2d_blocks: bool = True
    hadamard_wgrad: bool = True
    stochastic_grads: bool = True
    keep_last_fraction: float = 0.15
    hadamard_seed: int = 0

    def kept(self, n_layers: int) -> set[int]:
        n = round(self.keep_last_fraction * n_layers)
        return set(range(n_layers - n, n_layers))


Recipe = FP8Recipe | NVFP4Recipe


def _fp8_gemms(x, w, recipe: FP8Recipe):
    return fake_quantize_fp8(x, recipe.activation_format), fake_quantize_fp8(w, recipe.weight_format)


class _QuantLinearFn(torch.autograd.Function):
    """y = Q(x) Q(W)^T; dX = Q(dY) Q(W); dW = Q(dY)^T Q(x), with the recipe's formats."""

    @staticmethod
    def forward(ctx, x2d, w, recipe):
        if isinstance(recipe, FP8Recipe):
            xq, wq = _fp8_gemms(x2d, w, recipe)
        else:
            xq = fake_quantize_nvfp4(pad_to_block(x2d))[:, :x2d.size(1)]
            wq = fake_quantize_nvfp4(pad_to_block(pad_to_block(w), 0), block_2d=recipe.weight_2d_blocks)
            wq = wq[:w.size(0), :w.size(1)]
        ctx.save_for_backward(x2d, xq, wq)
        ctx.recipe = recipe
        return xq @ wq.t()

    @staticmethod
    def backward(ctx, gy):
        x2d, xq, wq = ctx.saved_tensors
        recipe = ctx.recipe
        if isinstance(recipe, FP8Recipe):
            gq = fake_quantize_fp8(gy, recipe.grad_format)
            return gq @ wq, gq.t() @ xq, None
        sr = recipe.stochastic_grads
        gq = fake_quantize_nvfp4(pad_to_block(gy), stochastic=sr)[:, :gy.size(1)]
        gx = gq @ wq
        # weight gradient: reduce over tokens; blocks (and the Hadamard transform) run along tokens
        gt, xt = pad_to_block(gy.t().float()), pad_to_block(x2d.t().float())
        if recipe.hadamard_wgrad:
            rht = random_hadamard(BLOCK, recipe.hadamard_seed, gy.device)
            gt, xt = apply_rht(gt, rht), apply_rht(xt, rht)
        gw = fake_quantize_nvfp4(gt, stochastic=sr) @ fake_quantize_nvfp4(xt).t()
        return gx.to(gy.dtype), gw.to(wq.dtype), None


def quant_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, recipe: Recipe) -> torch.Tensor:
    """F.linear with the recipe's quantised GEMMs (x (..., in), weight (out, in))."""
    lead = x.shape[:-1]
    y = _QuantLinearFn.apply(x.reshape(-1, x.size(-1)), weight, recipe).reshape(*lead, weight.size(0))
    return y if bias is None else y + bias


class QuantLinear(nn.Linear):
    """An nn.Linear whose GEMMs run in a low-precision recipe (same parameters and state dict)."""

    recipe: Recipe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quant_linear(x, self.weight, self.bias, self.recipe)


def convert(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Swap the backbone's (and MTP's) Linear layers and MoE experts to ``recipe``, in place,
    except in the layers the recipe keeps in high precision. Returns the model."""
    layers = list(model.backbone.layers)
    kept = recipe.kept(len(layers))
    blocks = [layer for i, layer in enumerate(layers) if i not in kept]
    if getattr(model, "mtp", None) is not None:
        blocks += list(model.mtp.layers)
    for block in blocks:
        for module in block.modules():
            if type(module) is nn.Linear:
                module.__class__ = QuantLinear
                module.recipe = recipe
            elif isinstance(module, Experts):
                module.linear = lambda x, w, _r=recipe: quant_linear(x, w, None, _r)
    model.precision_recipe = recipe
    return model


def quantized_layer_indices(model: nn.Module) -> list[int]:
    """Indices of backbone layers that run in low precision (for reports and tests)."""
    return [i for i, layer in enumerate(model.backbone.layers)
            if any(isinstance(m, QuantLinear) for m in layer.modules())]

