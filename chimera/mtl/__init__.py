"""Supervised multi-task learning: the Multi-digit testbed, its LeNet, one training loop over any
aggregator of ``chimera.rl.multitask``, and the per-step cost meter (time and peak memory)."""

from chimera.mtl.cost import StepMeter, interleaved_costs
from chimera.mtl.digits import TASKS, MultiDigit, build_multidigit, overlay
from chimera.mtl.lenet import MultiLeNet
from chimera.mtl.train import MTLConfig, accuracy, train_multidigit, train_step
from chimera.rl.multitask import METHODS, aggregate

__all__ = ["METHODS", "TASKS", "MTLConfig", "MultiDigit", "MultiLeNet", "StepMeter", "accuracy", "aggregate",
           "build_multidigit", "interleaved_costs", "overlay", "train_multidigit", "train_step"]
