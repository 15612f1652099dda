"""Hybrid Mamba-2 / attention / MoE models in the HF NemotronH layout."""

from chimera.models.cache import HybridCache
from chimera.models.config import SIZES, HybridConfig, count_parameters, get_config
from chimera.models.hybrid import HybridBackbone, HybridLM, LMOutput

__all__ = ["SIZES", "HybridBackbone", "HybridCache", "HybridConfig", "HybridLM", "LMOutput", "count_parameters",
           "get_config"]
