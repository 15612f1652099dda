"""A function under ``torch.compile`` that checks Dynamo's guards once per call signature.

A decode step of a small model is as short as the checks around it, and Dynamo's guards cost most
(up to a millisecond) on objects they have not seen, such as each generation's new caches. So
``Compiled`` runs a call with every guard only when its ``signature`` (the model, the grad and
autocast modes, every tensor's shape, stride, dtype and device, every module's identity, every
frozen dataclass's values, such as a ``Sampler``) is new for this function; otherwise, and on an
instance's later calls, under ``skip_guard_eval_unsafe``. The guards passed or recompiled for that
signature, and the graph they chose depends on nothing the signature leaves out, so it is the graph
they would choose again.
"""

from __future__ import annotations

import weakref
from dataclasses import fields, is_dataclass

import torch
from torch import nn

from chimera.models import decode_attention
from chimera.models.attention import KVCache
from chimera.models.cache import Cache
from chimera.models.mamba2 import MambaState

_COMPILED: dict = {}
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per model: the call signatures whose graph was chosen with every guard checked."""


class Compiled:
    """``fn`` (whose first argument is the model) as one graph with dynamic shapes and a C++ wrapper
    (no Python between its kernels), compiled once per process and shared by every caller."""

    def __init__(self, fn):
        decode_attention.build()  # before tracing: the graph calls the kernel if it builds
        if fn not in _COMPILED:
            _COMPILED[fn] = torch.compile(fn, fullgraph=True, dynamic=True, options={"cpp_wrapper": True})
        self.raw = fn
        self.fn = _COMPILED[fn]
        self.warm = False
        self.guarded_calls = 0

    def __call__(self, *args):
        if not self.warm:
            key = (self.raw, _modes(), signature(args[1:]))
            checked = _CHECKED.setdefault(args[0], set())
            self.warm = True
            if key not in checked:
                self.guarded_calls += 1
                out = self.fn(*args)
                checked.add(key)
                return out
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            return self.fn(*args)


def maybe_compiled(fn, compile: bool):
    """``Compiled(fn)`` or ``fn`` itself: the eager call is the reference the compiled one is tested against."""
    return Compiled(fn) if compile else fn


def signature(obj) -> tuple | object:
    """What a graph's guards can tell apart in ``obj``, as a hashable key (see ``Compiled``)."""
    if isinstance(obj, torch.Tensor):
        return ("T", tuple(obj.shape), obj.stride(), obj.dtype, obj.device, obj.requires_grad)
    if isinstance(obj, Cache):
        return ("C", signature(obj.valid), signature(obj.pos), signature(obj.layers))
    if isinstance(obj, MambaState):
        return ("MS", signature(obj.conv), signature(obj.ssm))
    if isinstance(obj, KVCache):
        return ("KV", signature(obj.k), signature(obj.v))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, *map(signature, obj))
    if isinstance(obj, nn.Module):
        return ("M", id(obj))
    if obj is None or isinstance(obj, (int, float, bool, str)):
        return obj
    if is_dataclass(obj) and obj.__dataclass_params__.frozen:  # e.g. a Sampler: its values
        return (type(obj), *(signature(getattr(obj, f.name)) for f in fields(obj)))
    raise TypeError(f"no compile signature for {type(obj).__name__}")


def _modes() -> tuple:
    return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
            *(torch.is_autocast_enabled(d) and torch.get_autocast_dtype(d) for d in ("cpu", "cuda")))
