"""The body graph a morphology-aware policy reads (no MuJoCo import: agents load without it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Morphology:
    """A body graph: node i has type ``node_types[i]``, reads ``node_obs[i]`` of the flat observation and
    drives ``node_actuators[i]`` of the action; ``edges`` are (parent, child, type) triples."""

    node_names: list[str]
    node_types: list[str]
    edges: list[tuple[int, int, str]]
    node_obs: list[list[int]]
    node_actuators: list[list[int]]
    obs_dim: int = 0
    act_dim: int = 0
    family_edge_types: list[str] = field(default_factory=list)
    """Every edge type the morphology's family can have (so that a policy built on one member knows them all)."""
    meta: dict = field(default_factory=dict)

    def type_dims(self) -> dict[str, tuple[int, int]]:
        """node type -> (observation width, actuator count); identical for every node of a type."""
        dims: dict[str, tuple[int, int]] = {}
        for t, o, a in zip(self.node_types, self.node_obs, self.node_actuators):
            if dims.setdefault(t, (len(o), len(a))) != (len(o), len(a)):
                raise ValueError(f"nodes of type {t!r} differ in observation or actuator count")
        return dims
