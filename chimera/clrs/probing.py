"""Recording an algorithm's data flow as CLRS probes.

An instrumented algorithm creates ``Probes(algorithm)``, calls ``input(...)`` and ``output(...)``
once and ``hint(...)`` at every step it exposes, each with exactly the features of that stage,
then ``finalize()``. The result is the nested dict the CLRS benchmark uses:
``probes[stage][location][name] = {"data": ndarray, "type_": type}``, with hints stacked on a
leading time axis and inputs / outputs squeezed.

The helpers below build the recurring encodings: predecessor pointers of an array order, heap
parents, one-hot masks, adjacency with self-loops, and the joint text + pattern layout of the
string algorithms (text nodes first, then pattern nodes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from chimera.clrs.specs import LOCATIONS, SPECS, STAGES, Stage, Type

ProbesDict = dict[str, dict[str, dict[str, dict[str, Any]]]]


class ProbeError(ValueError):
    pass


class Probes:
    def __init__(self, algorithm: str):
        self.algorithm = algorithm
        self.spec = SPECS[algorithm]
        self._data: dict[str, list[np.ndarray]] = {name: [] for name in self.spec}
        self._names = {stage: {n for n, (s, _, _) in self.spec.items() if s == stage} for stage in STAGES}
        self._final: ProbesDict | None = None

    def _push(self, stage: str, values: dict[str, Any]) -> None:
        if self._final is not None:
            raise ProbeError(f"{self.algorithm}: probes already finalized")
        if set(values) != self._names[stage]:
            missing, extra = self._names[stage] - set(values), set(values) - self._names[stage]
            raise ProbeError(f"{self.algorithm} {stage} probe: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, value in values.items():
            self._data[name].append(value)

    def input(self, **values: Any) -> None:
        self._push(Stage.INPUT, values)

    def hint(self, **values: Any) -> None:
        self._push(Stage.HINT, values)

    def output(self, **values: Any) -> None:
        self._push(Stage.OUTPUT, values)

    def finalize(self) -> ProbesDict:
        out: ProbesDict = {s: {loc: {} for loc in LOCATIONS} for s in STAGES}
        for name, (stage, loc, type_) in self.spec.items():
            values = self._data[name]
            data = np.stack(values) if stage == Stage.HINT else np.squeeze(np.array(values))
            out[stage][loc][name] = {"data": data, "type_": type_}
        self._final = out
        return out


def check(probes: ProbesDict, algorithm: str) -> None:
    """Raise if a finalized probe set does not fit its spec (one-hot and mask values included)."""
    for name, (stage, loc, type_) in SPECS[algorithm].items():
        entry = probes[stage][loc].get(name)
        if entry is None or entry["type_"] != type_:
            raise ProbeError(f"{algorithm}: probe {name} missing or not of type {type_}")
        data = entry["data"]
        if type_ in (Type.MASK, Type.MASK_ONE, Type.CATEGORICAL):
            if not np.isin(data, (0, 1, -1)).all():
                raise ProbeError(f"{algorithm}: {name} must hold 0 / 1 / -1")
            if type_ != Type.MASK and not (np.abs(data).sum(-1) == 1).all():
                raise ProbeError(f"{algorithm}: {name} must be one-hot")


# ---- encodings -----------------------------------------------------------------------------------------
def pred_array(pos: np.ndarray) -> np.ndarray:
    """Predecessor pointers of the order ``pos`` (pos[i] is the node at place i); the first points to itself."""
    out = np.arange(pos.shape[0])
    out[pos[1:]] = pos[:-1]
    return out


def heap_parents(pos: np.ndarray, heap_size: int) -> np.ndarray:
    """Heap parent pointers of the first ``heap_size`` places of ``pos``; the others point to themselves."""
    assert heap_size > 0
    out = np.arange(pos.shape[0])
    i = np.arange(1, heap_size)
    out[pos[i]] = pos[(i - 1) // 2]
    return out


def one_hot_rows(values: np.ndarray, n: int) -> np.ndarray:
    assert n > 0
    out = np.zeros((values.shape[0], n))
    out[np.arange(values.shape[0]), values] = 1
    return out


def mask_one(i: int, n: int) -> np.ndarray:
    assert n > i
    out = np.zeros(n)
    out[i] = 1
    return out


def with_self_loops(A: np.ndarray) -> np.ndarray:
    """1.0 where an edge exists or on the diagonal."""
    return ((A + np.eye(A.shape[0])) != 0) * 1.0


# string algorithms: node i < n is text position i, node n + j is pattern position j
def strings_id(n: int, m: int) -> np.ndarray:
    return np.concatenate([np.zeros(n), np.ones(m)])


def strings_pos(n: int, m: int) -> np.ndarray:
    return np.concatenate([np.arange(n) * 1.0 / n, np.arange(m) * 1.0 / m])


def strings_pred(n: int, m: int) -> np.ndarray:
    out = np.arange(n + m)
    out[1:n] = np.arange(n - 1)
    out[n + 1:] = np.arange(n, n + m - 1)
    return out


def strings_pair(pair: np.ndarray) -> np.ndarray:
    n, m = pair.shape
    out = np.zeros((n + m, n + m))
    out[:n, n:] = pair
    return out


def strings_pair_cat(pair: np.ndarray, classes: int) -> np.ndarray:
    """One-hot classes in the text-row x pattern-column block; an extra class -1 marks the unused cells."""
    n, m = pair.shape
    out = np.zeros((n + m, n + m, classes + 1))
    rows, cols = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    out[rows, cols + n, pair.astype(int)] = 1
    out[:n, :n, classes] = -1
    out[n:, :, classes] = -1
    return out


def strings_pi(n: int, m: int, pi: np.ndarray) -> np.ndarray:
    out = np.arange(n + m)
    out[n:] = n + pi[:m]
    return out
