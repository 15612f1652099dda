"""NerveNet (Wang et al. 2018) policies over a body graph, with Snowflake (Blake et al. 2021) freezing.

Per node type an input MLP embeds the node's own observation; for K steps every edge sends a
message through its edge type's MLP (both directions, each its own type), messages are averaged
at the receiver, and a GRU cell updates each node's state; per node type an output MLP maps the
final state to the mean of that node's actuators. Every weight is shared by type, so the same
network drives a morphology of any size (zero-shot transfer from one N to another). Snowflake
freezes chosen parts (``input``, ``message``, ``update``, ``output``) at their initialisation.

Observations are normalised per node type (running mean / variance pooled over the nodes of a
type), so the statistics transfer across morphologies too.
"""

from __future__ import annotations

import torch
from torch import nn

from chimera.envs.morphology import Morphology
from chimera.rl.normalize import RunningNorm

PARTS = ("input", "message", "update", "output")


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


class NerveNet(nn.Module):
    """Graph policy: flat observation (B, obs_dim) of a morphology -> action means (B, act_dim)."""

    def __init__(self, graph: Morphology, hidden: int = 64, steps: int = 3, freeze: tuple[str, ...] = (),
                 obs_norm: bool = False):
        super().__init__()
        bad = [p for p in freeze if p not in PARTS]
        if bad:
            raise ValueError(f"unknown NerveNet part(s) to freeze {bad}; choose from {', '.join(PARTS)}")
        dims = graph.type_dims()
        self.hidden, self.steps = hidden, steps
        self.node_types = sorted(dims)
        kinds = {t for _, _, t in graph.edges} | set(graph.family_edge_types)
        self.edge_types = sorted(kinds | {f"{t}^" for t in kinds})
        self.inputs = nn.ModuleDict({t: mlp(d, hidden, hidden) for t, (d, _) in dims.items()})
        self.norms = nn.ModuleDict({t: RunningNorm(d) for t, (d, _) in dims.items()}) if obs_norm else None
        self.messages = nn.ModuleDict({e: mlp(hidden, hidden, hidden) for e in self.edge_types})
        self.update_cell = nn.GRUCell(hidden, hidden)
        self.outputs = nn.ModuleDict({t: mlp(hidden, hidden, a) for t, (_, a) in dims.items() if a})
        if "output" not in freeze:  # small initial actions, as for the MLP policy's head; a frozen output MLP
            for out in self.outputs.values():  # keeps its default init, or it could never move the actions
                nn.init.orthogonal_(out[-1].weight, 0.01)
                nn.init.zeros_(out[-1].bias)
        self.log_std = nn.ParameterDict({t: nn.Parameter(torch.zeros(a)) for t, (_, a) in dims.items() if a})
        self.freeze(freeze)
        self.frozen = tuple(freeze)
        self.bind(graph)

    def freeze(self, parts: tuple[str, ...]) -> None:
        modules = {"input": self.inputs, "message": self.messages, "update": self.update_cell, "output": self.outputs}
        for part in parts:
            for p in modules[part].parameters():
                p.requires_grad_(False)

    def bind(self, graph: Morphology) -> None:
        """Index tensors for a morphology; any graph whose node and edge types this network knows."""
        unknown = {t for t in graph.node_types if t not in self.inputs} | \
            {t for _, _, t in graph.edges if t not in self.messages}
        if unknown:
            raise ValueError(f"morphology has node / edge types {sorted(unknown)} this NerveNet was not built for")
        self.graph = graph
        n = len(graph.node_types)
        self._nodes = {t: torch.tensor([i for i, k in enumerate(graph.node_types) if k == t]) for t in self.node_types}
        self._obs_idx = {t: torch.tensor([graph.node_obs[i] for i in idx.tolist()], dtype=torch.long)
                         for t, idx in self._nodes.items() if len(idx)}
        self._act_idx = {t: torch.tensor([graph.node_actuators[i] for i in idx.tolist()], dtype=torch.long)
                         for t, idx in self._nodes.items() if len(idx) and t in self.outputs}
        src, dst, etype = [], [], []
        for p, c, t in graph.edges:  # both directions; the child -> parent one has its own type
            src += [p, c]
            dst += [c, p]
            etype += [self.edge_types.index(t), self.edge_types.index(f"{t}^")]
        self._src, self._dst, self._etype = torch.tensor(src), torch.tensor(dst), torch.tensor(etype)
        indeg = torch.zeros(n).index_add_(0, self._dst, torch.ones(len(dst)))
        self._indeg = indeg.clamp_min(1)[None, :, None]
        self.n_nodes, self.act_dim = n, graph.act_dim

    def node_inputs(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: obs[:, idx] for t, idx in self._obs_idx.items()}  # (B, nodes of t, width of t)

    @torch.no_grad()
    def update_norm(self, obs: torch.Tensor) -> None:
        if self.norms is not None:
            for t, x in self.node_inputs(obs.reshape(-1, obs.shape[-1])).items():
                self.norms[t].update(x)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> action means and log standard deviations, both (B, act_dim)."""
        B = obs.shape[0]
        h = obs.new_zeros(B, self.n_nodes, self.hidden, dtype=torch.float32)
        for t, x in self.node_inputs(obs).items():
            x = self.norms[t](x) if self.norms is not None else x.float()
            h[:, self._nodes[t]] = self.inputs[t](x)
        # every edge type's message MLP at once: per-edge weights gathered from the stacked type weights
        layers = [[m[i] for m in self.messages.values()] for i in (0, 2)]
        w1, b1, w2, b2 = (torch.stack([getattr(lin, a) for lin in layer])[self._etype]
                          for layer in layers for a in ("weight", "bias"))
        w1, w2 = w1.transpose(1, 2), w2.transpose(1, 2)  # (E, in, out)
        for _ in range(self.steps):
            x = torch.tanh(torch.baddbmm(b1[:, None], h[:, self._src].transpose(0, 1), w1))  # (E, B, hidden)
            msg = torch.baddbmm(b2[:, None], x, w2).transpose(0, 1)
            agg = torch.zeros_like(h).index_add_(1, self._dst, msg)
            h = self.update_cell((agg / self._indeg).reshape(-1, self.hidden),
                                 h.reshape(-1, self.hidden)).view(B, self.n_nodes, self.hidden)
        mean = obs.new_zeros(B, self.act_dim, dtype=torch.float32)
        log_std = torch.zeros(self.act_dim)
        for t, idx in self._act_idx.items():
            mean[:, idx.flatten()] = self.outputs[t](h[:, self._nodes[t]]).flatten(1)
            log_std = log_std.index_put((idx.flatten(),), self.log_std[t].repeat(len(idx)))
        return mean, log_std.expand_as(mean)
