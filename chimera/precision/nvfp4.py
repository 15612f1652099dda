"""NVFP4: E2M1 values in blocks of 16 with an E4M3 scale per block and an FP32 scale per tensor.

Two-level scaling (NVIDIA's recipe): the tensor scale ``g = amax(x) / (6 * 448)`` lets block
scales ``amax(block) / 6`` be stored in E4M3 as ``e4m3(amax(block) / 6 / g)``; values are then
``e2m1(x / (block_scale * g))``. Blocks run along the last dimension (the GEMM reduction
dimension), or over 16x16 tiles for weights so that W and W^T quantise identically.
Also the random Hadamard transform applied to the inputs of the weight-gradient GEMM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from chimera.precision.formats import E2M1_MAX, FP8_MAX, round_e2m1, round_fp8

BLOCK = 16


def nvfp4_scales(x: torch.Tensor, block_2d: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The FP32 tensor scale and the per-element decoded block scale (E4M3 value times tensor scale)."""
    xf = x.float()
    amax = xf.abs().max()
    g = amax / (E2M1_MAX * FP8_MAX["e4m3"]) if amax > 0 else torch.ones((), device=x.device)
    blocks = _block_amax(xf, block_2d)  # same shape as x: the amax of each element's block
    block_scale = round_fp8(blocks / E2M1_MAX / g, "e4m3") * g
    return g, block_scale


def fake_quantize_nvfp4(x: torch.Tensor, block_2d: bool = False, stochastic: bool = False,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Quantise to NVFP4 and back (same shape and dtype as x). Last dim must be a multiple of 16
    (and the second to last too with ``block_2d``); pad first otherwise."""
    _, scale = nvfp4_scales(x, block_2d)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = round_e2m1(x.float() / safe, stochastic=stochastic, generator=generator) * scale
    return torch.where(scale > 0, q, torch.zeros_like(q)).to(x.dtype)


def _block_amax(x: torch.Tensor, block_2d: bool) -> torch.Tensor:
    *lead, n = x.shape
    if n % BLOCK:
        raise ValueError(f"last dimension {n} is not a multiple of the NVFP4 block size {BLOCK}")
    if not block_2d:
        a = x.abs().reshape(*lead, n // BLOCK, BLOCK).amax(-1, keepdim=True)
        return a.expand(*lead, n // BLOCK, BLOCK).reshape(x.shape)
    if x.dim() < 2 or x.size(-2) % BLOCK:
        raise ValueError(f"2-D blocks need both trailing dimensions to be multiples of {BLOCK}, got {tuple(x.shape)}")
    m = x.size(-2)
    lead2 = x.shape[:-2]
    t = x.abs().reshape(*lead2, m // BLOCK, BLOCK, n // BLOCK, BLOCK)
    a = t.amax(dim=(-3, -1), keepdim=True).expand_as(t)
    return a.reshape(x.shape)


def pad_to_block(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Zero-pad ``dim`` up to a multiple of 16 (zeros change no GEMM result)."""
    n = x.size(dim)
    pad = (-n) % BLOCK
    if not pad:
        return x
    spec = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [0, pad]
    return F.pad(x, spec)


def hadamard(n: int, device=None) -> torch.Tensor:
    """The n x n Sylvester Hadamard matrix scaled by 1/sqrt(n) (orthogonal); n a power of two."""
    if n & (n - 1):
        raise ValueError(f"Hadamard size {n} is not a power of two")
    h = torch.ones(1, 1, device=device)
    while h.size(0) < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def random_hadamard(n: int, seed: int, device=None) -> torch.Tensor:
    """diag(random signs) @ H: orthogonal, so applying it to both GEMM inputs leaves the product unchanged."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    return (signs[:, None] * hadamard(n)).to(device)


def apply_rht(x: torch.Tensor, rht: torch.Tensor) -> torch.Tensor:
    """Transform each block of 16 along the last dim: x (..., n) -> (..., n) with n a multiple of 16."""
    *lead, n = x.shape
    return (x.reshape(*lead, n // BLOCK, BLOCK) @ rht).reshape(x.shape)
