"""FP8 and NVFP4 low-precision formats (exact quantise-dequantise emulation) and training recipes."""

from chimera.precision.formats import fake_quantize_fp8, round_e2m1, round_fp8
from chimera.precision.nvfp4 import apply_rht, fake_quantize_nvfp4, hadamard, nvfp4_scales, random_hadamard
from chimera.precision.recipes import FP8Recipe, NVFP4Recipe, QuantLinear, convert, quant_linear

__all__ = ["FP8Recipe", "NVFP4Recipe", "QuantLinear", "apply_rht", "convert", "fake_quantize_fp8",
           "fake_quantize_nvfp4", "hadamard", "nvfp4_scales", "quant_linear", "random_hadamard", "round_e2m1",
           "round_fp8"]
