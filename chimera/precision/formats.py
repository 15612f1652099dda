"""Low-precision number formats, emulated exactly by quantise-dequantise in fp32.

E4M3 / E5M2 use torch's own float8 dtypes (round to nearest even); values beyond the format's
range saturate to its largest finite value instead of becoming NaN. E2M1 (FP4: 0, 0.5, 1, 1.5,
2, 3, 4, 6) is rounded here, to nearest even or stochastically.
"""

from __future__ import annotations

import torch

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}
E2M1_MAX = 6.0
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def round_fp8(x: torch.Tensor, fmt: str = "e4m3") -> torch.Tensor:
    """Round fp32 values to the nearest FP8 value (saturating), returned as fp32."""
    if fmt not in FP8_DTYPES:
        raise ValueError(f"unknown FP8 format {fmt!r} (expected 'e4m3' or 'e5m2')")
    m = FP8_MAX[fmt]
    return x.float().clamp(-m, m).to(FP8_DTYPES[fmt]).float()


def round_e2m1(x: torch.Tensor, stochastic: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round to FP4 E2M1 (saturating at +-6): to nearest even, or stochastically (unbiased)."""
    x = x.float()
    a = x.abs().clamp(max=E2M1_MAX)
    # spacing of representable values: 0.5 below 2, 1 in [2, 4), 2 in [4, 6]
    step = torch.where(a < 2, torch.full_like(a, 0.5), torch.where(a < 4, torch.ones_like(a), torch.full_like(a, 2.0)))
    scaled = a / step
    if stochastic:
        low = scaled.floor()
        u = torch.rand(a.shape, generator=generator, device=a.device)
        q = low + (u < scaled - low).float()
    else:
        q = torch.round(scaled)  # half to even: ties go to the even mantissa (0, 1, 2, 4)
    return torch.sign(x) * (q * step).clamp(max=E2M1_MAX)


def fake_quantize_fp8(x: torch.Tensor, fmt: str = "e4m3") -> torch.Tensor:
    """Tensor-wise current scaling: scale so amax maps to the format's max, round, scale back."""
    amax = x.detach().abs().max().float()
    if amax == 0:
        return torch.zeros_like(x)
    scale = FP8_MAX[fmt] / amax
    return (round_fp8(x.float() * scale, fmt) / scale).to(x.dtype)
