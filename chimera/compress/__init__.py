"""Minitron / MiniPuzzle compression of hybrid models: activation importance over a calibration set
(``importance.py``), pruning of every width axis and of depth with the kept units' weights copied
exactly (``prune.py``), calibration data (``calib.py``) and logit distillation (``distill.py``)."""

from chimera.compress.calib import calibration_batches
from chimera.compress.importance import Importance, LayerImportance, collect_importance
from chimera.compress.prune import Targets, check_targets, prune

__all__ = ["Importance", "LayerImportance", "Targets", "calibration_batches", "check_targets",
           "collect_importance", "prune"]
