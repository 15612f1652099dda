"""The CLRS learner as it was before it was fused (one linear layer per feature, edge features built at width
h, amax reductions): the oracle the fast learner in chimera.clrs.model is checked against (same parameters,
same loss and gradients), and the "before" of bench/clrs_throughput.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chimera.clrs.model import PROCESSORS, Feature, ModelConfig, decoded_spec
from chimera.clrs.samplers import Batch, model_spec
from chimera.clrs.specs import Location, Stage, Type


def log_sinkhorn(x: torch.Tensor, steps: int, temperature: float, noise: bool) -> torch.Tensor:
    if noise:
        u = torch.rand_like(x)
        x = x - torch.log(-torch.log(u + 1e-12) + 1e-12)
    x = x / temperature - 1e6 * torch.eye(x.shape[-1])
    for _ in range(steps):
        x = torch.log_softmax(x, -1)
        x = torch.log_softmax(x, -2)
    return x


class Processor(nn.Module):
    def __init__(self, kind: str, h: int, triplet_features: int, layer_norm: bool):
        super().__init__()
        if kind not in PROCESSORS:
            raise ValueError(f"unknown processor {kind!r}; choose one of {', '.join(PROCESSORS)}")
        self.kind, self.h = kind, h
        self.m1, self.m2, self.me, self.mg = nn.Linear(2 * h, h), nn.Linear(2 * h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.msg_mlp = nn.Sequential(nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h))
        self.o1, self.o2 = nn.Linear(2 * h, h), nn.Linear(h, h)
        self.ln = nn.LayerNorm(h) if layer_norm else nn.Identity()
        self.gated = self.triplets = kind == "triplet_gmpnn"
        if self.gated:
            self.g1, self.g2, self.g3 = nn.Linear(2 * h, h), nn.Linear(h, h), nn.Linear(h, h)
            nn.init.constant_(self.g3.bias, -3.0)  # gates start mostly closed: keep the previous state
        if self.triplets:
            t = triplet_features
            self.t1, self.t2, self.t3 = nn.Linear(2 * h, t), nn.Linear(2 * h, t), nn.Linear(2 * h, t)
            self.te1, self.te2, self.te3 = nn.Linear(h, t), nn.Linear(h, t), nn.Linear(h, t)
            self.tg, self.o3 = nn.Linear(h, t), nn.Linear(t, h)

    def forward(self, node, edge, graph, adj, hidden):
        z = torch.cat([node, hidden], -1)
        tri = None
        if self.triplets:  # (B, i, j, k): max over i -> edge messages (B, j, k)
            ts = (self.t1(z)[:, :, None, None] + self.t2(z)[:, None, :, None] + self.t3(z)[:, None, None, :]
                  + self.te1(edge)[:, :, :, None] + self.te2(edge)[:, :, None, :] + self.te3(edge)[:, None, :, :]
                  + self.tg(graph)[:, None, None, None])
            tri = F.relu(self.o3(ts.amax(1)))
        # msgs[b, i, j]: from sender i to receiver j
        msgs = self.m1(z)[:, None] + self.m2(z)[:, :, None] + self.me(edge) + self.mg(graph)[:, None, None]
        msgs = self.msg_mlp(msgs)
        if self.kind != "pgn":
            adj = torch.ones_like(adj)
        msgs = msgs.masked_fill(adj[..., None] < 0.5, -1e9).amax(1)
        out = self.ln(F.relu(self.o1(z) + self.o2(msgs)))
        if self.gated:
            gate = torch.sigmoid(self.g3(F.relu(self.g1(z) + self.g2(msgs))))
            out = out * gate + hidden * (1 - gate)
        return out, tri


class Decoder(nn.Module):
    """Logits for one feature from h_t = [node features, old state, new state] (3h) and edge features."""

    def __init__(self, loc: str, t: str, h: int, e: int, k: int):
        super().__init__()
        self.loc, self.t = loc, t
        out = k if t == Type.CATEGORICAL else 1
        if loc == Location.NODE:
            if t in (Type.POINTER, Type.PERMUTATION_POINTER):
                self.a, self.b = nn.Linear(3 * h, h), nn.Linear(3 * h, h)
                self.c, self.d = nn.Linear(e, h), nn.Linear(h, 1)
            else:
                self.a = nn.Linear(3 * h, out)
        elif loc == Location.EDGE:
            width = h if t == Type.POINTER else out
            self.a, self.b, self.c = nn.Linear(3 * h, width), nn.Linear(3 * h, width), nn.Linear(e, width)
            if t == Type.POINTER:
                self.d, self.f = nn.Linear(3 * h, h), nn.Linear(h, 1)
        else:
            self.a, self.b = nn.Linear(3 * h, out), nn.Linear(h, out)
            if t == Type.POINTER:
                self.c = nn.Linear(3 * h, 1)

    def forward(self, h_t, edge, graph):
        t = self.t
        if self.loc == Location.NODE:
            if t in (Type.POINTER, Type.PERMUTATION_POINTER):  # logits[b, i, j]: node i points to j
                p_e = self.b(h_t)[:, :, None] + self.c(edge)
                return self.d(torch.maximum(self.a(h_t)[:, :, None], p_e.transpose(1, 2))).squeeze(-1)
            y = self.a(h_t)
            return y if t == Type.CATEGORICAL else y.squeeze(-1)
        if self.loc == Location.EDGE:
            y = self.a(h_t)[:, :, None] + self.b(h_t)[:, None, :] + self.c(edge)
            if t == Type.POINTER:  # logits[b, i, j, k]
                return self.f(torch.maximum(y[:, :, :, None], self.d(h_t)[:, None, None])).squeeze(-1)
            return y if t == Type.CATEGORICAL else y.squeeze(-1)
        y = self.a(h_t.amax(1)) + self.b(graph)
        if t == Type.POINTER:
            return (y[:, None] + self.c(h_t)).squeeze(-1)
        return y if t == Type.CATEGORICAL else y.squeeze(-1)


class EncodeProcessDecode(nn.Module):
    def __init__(self, algorithm: str, cfg: ModelConfig, cats: dict[str, int]):
        super().__init__()
        self.algorithm, self.cfg = algorithm, cfg
        h = cfg.hidden
        self.spec = model_spec(algorithm, cfg.static_hints_as_inputs)
        self.encoders = nn.ModuleDict()
        for name, (stage, loc, t) in self.spec.items():
            if stage == Stage.OUTPUT:
                continue
            self.encoders[name] = nn.Linear(cats.get(name, 1), h)
            if loc == Location.EDGE and t == Type.POINTER:
                self.encoders[name + "@2"] = nn.Linear(1, h)
        self.processor = Processor(cfg.processor, h, cfg.triplet_features, cfg.layer_norm)
        e = 2 * h if cfg.processor == "triplet_gmpnn" else h
        self.dspec = decoded_spec(self.spec)
        self.decoders = nn.ModuleDict({name: Decoder(loc, t, h, e, cats.get(name, 1))
                                       for name, (_, loc, t) in self.dspec.items()})

    # -- encoding --
    def encode(self, feats: dict[str, Feature], node, edge, graph, adj):
        for name, f in feats.items():
            enc, x = self.encoders[name], f.data
            if f.type_ in (Type.POINTER, Type.SOFT_POINTER, Type.PERMUTATION_POINTER):
                if f.location == Location.NODE:
                    edge = edge + enc(x[..., None])
                    adj = torch.maximum(adj, ((x + x.transpose(1, 2)) > 0.5).float())
                elif f.location == Location.EDGE:  # (B, i, j, k) one-hot; affine encoders commute with the mean
                    edge = edge + enc(x.mean(1)[..., None]) + self.encoders[name + "@2"](x.mean(2)[..., None])
                else:
                    node = node + enc(x[..., None])
                continue
            e = enc(x) if f.type_ == Type.CATEGORICAL else enc(x[..., None])
            if f.location == Location.NODE:
                node = node + e
            elif f.location == Location.EDGE:
                edge = edge + e
                if f.type_ == Type.MASK:
                    adj = torch.maximum(adj, ((x + x.transpose(1, 2)) > 0).float())
            else:
                graph = graph + e
        return node, edge, graph, adj

    def soft(self, name: str, logits: torch.Tensor) -> Feature:
        """A decoded hint turned back into an encodable feature (no teacher forcing)."""
        _, loc, t = self.dspec[name]
        if t == Type.MASK:
            return Feature(loc, t, torch.sigmoid(logits))
        if t in (Type.MASK_ONE, Type.CATEGORICAL, Type.POINTER):
            return Feature(loc, Type.SOFT_POINTER if t == Type.POINTER else t, torch.softmax(logits, -1))
        if t == Type.PERMUTATION_POINTER:
            return Feature(loc, t, log_sinkhorn(logits, 25, self.cfg.sinkhorn_temperature, False).exp())
        return Feature(loc, t, logits)

    def forward(self, batch: Batch, inputs: dict[str, Feature], first_hints: dict[str, Feature], hint_truth=None):
        """-> (output logits at each sample's last step, hint logits per step (list over steps)); no teacher
        forcing (hint_truth is not read)."""
        B, n, h = batch.size, batch.num_nodes, self.cfg.hidden
        steps = max(1, int(batch.lengths.max()) - 1)
        lengths = torch.as_tensor(batch.lengths)
        hidden = torch.zeros(B, n, h)
        hints, outputs, hint_preds = first_hints, None, []
        for i in range(steps):
            node, edge, graph = torch.zeros(B, n, h), torch.zeros(B, n, n, h), torch.zeros(B, h)
            adj = torch.eye(n).expand(B, n, n)
            node, edge, graph, adj = self.encode({**inputs, **hints}, node, edge, graph, adj)
            new, tri = self.processor(node, edge, graph, adj, hidden)
            h_t = torch.cat([node, hidden, new], -1)
            e_t = edge if tri is None else torch.cat([edge, tri], -1)
            preds = {name: dec(h_t, e_t, graph) for name, dec in self.decoders.items()}
            for name, (_, _, t) in self.dspec.items():
                if t == Type.PERMUTATION_POINTER:
                    preds[name] = log_sinkhorn(preds[name], self.cfg.sinkhorn_steps, self.cfg.sinkhorn_temperature,
                                               noise=self.training)
            step_out = {k: v for k, v in preds.items() if self.dspec[k][0] == Stage.OUTPUT}
            if outputs is None:
                outputs = step_out
            else:  # keep each sample's prediction from its last real step
                live = (lengths > i + 1).float()
                outputs = {k: torch.where(live.view(-1, *[1] * (v.dim() - 1)) > 0, v, outputs[k])
                           for k, v in step_out.items()}
            step_hints = {k: v for k, v in preds.items() if self.dspec[k][0] == Stage.HINT}
            hint_preds.append(step_hints)
            hints = {k: self.soft(k, v) for k, v in step_hints.items()}
            hidden = new
        return outputs, hint_preds
