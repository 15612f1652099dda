"""Chimera: hybrid Mamba-Transformer MoE models, their training recipe, inference and RL, at laptop scale."""

__version__ = "0.1.0"
