"""Hybrid Mamba-2 / attention / MoE models in the HF NemotronH layout."""

from chimera.models.cache import Cache
from chimera.models.config import SIZES, HybridConfig, get_config
from chimera.models.hybrid import HybridBackbone, HybridLM, LMOutput, count_parameters

__all__ = ["SIZES", "Cache", "HybridBackbone", "HybridConfig", "HybridLM", "LMOutput", "count_parameters",
           "get_config"]
