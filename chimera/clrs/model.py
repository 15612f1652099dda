"""The encode-process-decode learner of the generalist CLRS paper (Ibarz et al. 2022), in PyTorch.

Per step: every input and (current) hint is encoded by a linear layer into node, edge or graph
features (pointers become edge features and extend the adjacency); a processor updates the node
states from z = [node features, previous state]; per feature a decoder reads [node features,
previous state, new state] (and edge features, plus triplet edge messages for Triplet-GMPNN).
No teacher forcing: from the second step on, the hints fed back are the model's own soft
predictions (sigmoid / softmax / soft pointers / Sinkhorn permutations).

Processors (all with max aggregation, a 2-layer message MLP, layer norm):
``mpnn`` (fully connected), ``pgn`` (the graph's adjacency, from the inputs' masks and
pointers), ``triplet_gmpnn`` (fully connected, triplet edge messages, gating whose last layer
starts at bias -3). Sorting outputs that must be permutations are decoded as a permutation
matrix (Gumbel-Sinkhorn while training) plus a mask of the first node.

The step is computed fused (docs/CLRS.md): all the layers that read one input run as one matmul,
and the edge features stay in factored form (raw edge inputs times the encoders' weights) because
everything that reads them is linear. tests/clrs_reference.py is the plain formulation it must equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chimera.clrs.samplers import Batch, model_spec
from chimera.clrs.specs import Location, Stage, Type

PROCESSORS = ("mpnn", "pgn", "triplet_gmpnn")


@dataclass
class ModelConfig:
    """The learner's options; the defaults are the generalist paper's (Ibarz et al. 2022)."""

    processor: Literal["mpnn", "pgn", "triplet_gmpnn"] = "triplet_gmpnn"
    """triplet_gmpnn: triplet reasoning and gating (the paper's processor networks); mpnn / pgn without either."""
    hidden: int = 128
    triplet_features: int = 8
    layer_norm: bool = True
    sinkhorn_steps: int = 10
    """Permutation decoders (encoders and decoders): Sinkhorn steps while training (25, noiseless, for hints
    fed back)."""
    sinkhorn_temperature: float = 0.1
    static_hints_as_inputs: bool = True
    """Static hint elimination (dataset and training): the constant pred_h hint of 12 algorithms is an input instead."""
    encoder_init: Literal["xavier_on_scalars", "default"] = "xavier_on_scalars"
    """Encoder initialisation (dataset and training): the official (haiku) truncated normal of std
    1/sqrt(fan_in), except scalar hints' encoders at std 1/sqrt(hidden) with xavier_on_scalars (gradient
    clipping: train.py)."""
    hint_teacher_forcing: float = 0.0
    """Probability, per sample and step while training, of feeding back the true hint instead of the model's
    soft prediction (the paper removes teacher forcing: 0)."""

    def validate(self) -> None:
        if self.processor not in PROCESSORS:
            raise ValueError(f"processor {self.processor!r}: choose one of {', '.join(PROCESSORS)}")
        if self.encoder_init not in ("xavier_on_scalars", "default"):
            raise ValueError(f"encoder_init {self.encoder_init!r}: choose xavier_on_scalars or default")
        if not 0.0 <= self.hint_teacher_forcing <= 1.0:
            raise ValueError(f"hint_teacher_forcing {self.hint_teacher_forcing}: a probability in [0, 1]")


# ---- data: numpy probes -> typed tensors -----------------------------------------------------------------------
@dataclass
class Feature:
    location: str
    type_: str
    data: torch.Tensor  # pointers one-hot over nodes; permutations as matrices


def _one_hot(idx: np.ndarray, n: int) -> torch.Tensor:
    return F.one_hot(torch.as_tensor(idx, dtype=torch.long), n).float()


def permutation_target(pred: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Predecessor pointers of a linear order -> (cyclic predecessor matrix, one-hot of the first node)."""
    B, n = pred.shape
    P = _one_hot(pred, n)
    first = (pred == np.arange(n)).argmax(-1)
    pointed = P.sum(1)  # how often each node is someone's predecessor
    pointed[torch.arange(B), torch.as_tensor(first)] -= 1  # not counting the first node's self-pointer
    last = pointed.argmin(-1)
    P[torch.arange(B), torch.as_tensor(first)] = F.one_hot(last, n).float()
    return P, _one_hot(first, n)


def to_feature(location: str, type_: str, data: np.ndarray, n: int) -> Feature:
    if type_ == Type.POINTER:
        return Feature(location, type_, _one_hot(data, n))
    return Feature(location, type_, torch.as_tensor(data, dtype=torch.float32))


def targets(batch: Batch) -> dict[str, Feature]:
    """Output targets; a should-be-permutation output becomes a permutation matrix and a first-node mask."""
    n, out = batch.num_nodes, {}
    for name, f in batch.outputs.items():
        if f.type_ == Type.SHOULD_BE_PERMUTATION:
            P, first = permutation_target(f.data.astype(int))
            out[name] = Feature(f.location, Type.PERMUTATION_POINTER, P)
            out[name + "_mask"] = Feature(f.location, Type.MASK_ONE, first)
        else:
            out[name] = to_feature(f.location, f.type_, f.data.astype(int) if f.type_ == Type.POINTER else f.data, n)
    return out


def decoded_spec(spec: dict[str, tuple[str, str, str]]) -> dict[str, tuple[str, str, str]]:
    """The features a model with ``spec`` decodes: hints and outputs, permutations split in two."""
    out = {}
    for name, (stage, loc, t) in spec.items():
        if stage == Stage.INPUT:
            continue
        if t == Type.SHOULD_BE_PERMUTATION:
            out[name] = (stage, loc, Type.PERMUTATION_POINTER)
            out[name + "_mask"] = (stage, loc, Type.MASK_ONE)
        else:
            out[name] = (stage, loc, t)
    return out


def categories(algorithm: str, batch: Batch) -> dict[str, int]:
    return {name: int(f.data.shape[-1]) for group in (batch.inputs, batch.hints, batch.outputs)
            for name, f in group.items() if f.type_ == Type.CATEGORICAL}


# ---- encoders, processor, decoders -------------------------------------------------------------------------------
def log_sinkhorn(x: torch.Tensor, steps: int, temperature: float, noise: bool) -> torch.Tensor:
    if noise:
        u = torch.rand(x.shape, dtype=x.dtype)  # in index order, whatever x's memory layout
        x = x - torch.log(-torch.log(u + 1e-12) + 1e-12)
    x = x / temperature - 1e6 * torch.eye(x.shape[-1])
    for _ in range(steps):
        x = torch.log_softmax(x, -1)
        x = torch.log_softmax(x, -2)
    return x


class _Maximum(torch.autograd.Function):
    """torch.maximum with a two-pass backward: the gradient goes to the larger input (to u at a tie), where
    torch.maximum's backward spends extra passes (eq, where, div, masked_fill) on splitting ties evenly, which
    real valued decoder activations do not have."""

    @staticmethod
    def forward(ctx, u, v):
        first = u >= v
        ctx.save_for_backward(first)
        ctx.shapes = u.shape, v.shape
        return torch.where(first, u, v)

    @staticmethod
    def backward(ctx, g):
        (first,) = ctx.saved_tensors
        zero = g.new_zeros(())
        return torch.where(first, g, zero).sum_to_size(ctx.shapes[0]), torch.where(first, zero, g).sum_to_size(
            ctx.shapes[1])


def maximum(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Elementwise max of two broadcastable tensors (``_Maximum``)."""
    return _Maximum.apply(u, v)


def fused(layers: list[nn.Linear], x: torch.Tensor) -> list[torch.Tensor]:
    """Several linear layers on one input as one matmul (their weights stacked): the same outputs, in order."""
    y = F.linear(x, torch.cat([m.weight for m in layers]), torch.cat([m.bias for m in layers]))
    return list(y.split([m.out_features for m in layers], -1))


def fused_edges(layers: list[nn.Linear], edges: Edges) -> list[torch.Tensor]:
    """``fused`` for layers that read the (factored) edge features."""
    y = edges.project(torch.cat([m.weight for m in layers]), torch.cat([m.bias for m in layers]))
    return list(y.split([m.out_features for m in layers], -1))


@dataclass
class Edges:
    """Encoded edge features in factored form: ``x @ w.T + b`` (B, n, n, h) with x the raw edge inputs
    (B, n, n, F), F small. Every reader of the edge features is linear, so a reader W gets
    ``x @ (W w).T + W b`` directly and the (B, n, n, h) tensor is never built."""

    x: torch.Tensor  # (B, n, n, F)
    w: torch.Tensor  # (h, F)
    b: torch.Tensor  # (h,)

    @classmethod
    def dense(cls, edge: torch.Tensor) -> Edges:
        """Given edge features (B, n, n, h) (tests, benchmarks)."""
        h = edge.shape[-1]
        return cls(edge, torch.eye(h), torch.zeros(h))

    def project(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``F.linear(edge features, weight, bias)``: weight (o, h) -> (B, n, n, o)."""
        const = weight @ self.b if bias is None else torch.addmv(bias, weight, self.b)
        return F.linear(self.x, weight @ self.w, const)


class Processor(nn.Module):
    def __init__(self, kind: str, h: int, triplet_features: int, layer_norm: bool):
        super().__init__()
        if kind not in PROCESSORS:
            raise ValueError(f"unknown processor {kind!r}; choose one of {', '.join(PROCESSORS)}")
        self.kind, self.h = kind, h
        self.m1, self.m2, self.me, self.mg = nn.Linear(2 * h, h), nn.Linear(2 * h, h), nn.Linear(h, h), nn.Linear(h, h)
        # (in-place ReLUs: their inputs are fresh tensors nothing else reads)
        self.msg_mlp = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(h, h), nn.ReLU(inplace=True), nn.Linear(h, h))
        self.o1, self.o2 = nn.Linear(2 * h, h), nn.Linear(h, h)
        self.ln = nn.LayerNorm(h) if layer_norm else nn.Identity()
        self.gated = self.triplets = kind == "triplet_gmpnn"
        self.masked = kind == "pgn"  # mpnn and triplet_gmpnn take messages from every node
        if self.gated:
            self.g1, self.g2, self.g3 = nn.Linear(2 * h, h), nn.Linear(h, h), nn.Linear(h, h)
            nn.init.constant_(self.g3.bias, -3.0)  # gates start mostly closed: keep the previous state
        if self.triplets:
            t = triplet_features
            self.t1, self.t2, self.t3 = nn.Linear(2 * h, t), nn.Linear(2 * h, t), nn.Linear(2 * h, t)
            self.te1, self.te2, self.te3 = nn.Linear(h, t), nn.Linear(h, t), nn.Linear(h, t)
            self.tg, self.o3 = nn.Linear(h, t), nn.Linear(t, h)

    def forward(self, node, edges: Edges, graph, adj, hidden):
        """(B, n, h) node features, edge features, (B, h) graph features, (B, n, n) adjacency, (B, n, h) state
        -> new state (B, n, h) and, for triplet_gmpnn, triplet edge messages (B, n, n, h)."""
        z = torch.cat([node, hidden], -1)  # (B, n, 2h)
        on_z, on_e, on_g = [self.m1, self.m2, self.o1], [self.me], [self.mg]
        if self.gated:
            on_z.append(self.g1)
        if self.triplets:
            on_z += [self.t1, self.t2, self.t3]
            on_e += [self.te1, self.te2, self.te3]
            on_g.append(self.tg)
        zs = fused(on_z, z)  # each (B, n, .)
        gs = fused(on_g, graph)  # each (B, .)
        m1, m2, o1 = zs[:3]
        tri = None
        if self.triplets:  # ts[b, i, j, k], max over i -> edge messages (B, j, k); the terms without i after the max
            t1, t2, t3 = zs[-3:]
            te1, te2, te3 = fused_edges(on_e[1:], edges)  # each (B, n, n, t)
            with_i = (t1[:, :, None] + te1)[:, :, :, None] + te2[:, :, None]  # (B, i, j, k, t)
            rest = t2[:, :, None] + t3[:, None] + te3 + gs[1][:, None, None]  # (B, j, k, t)
            tri = F.relu(self.o3(with_i.max(1).values + rest))  # (B, j, k, h)
        # msgs[b, i, j]: from sender i to receiver j; added in place into the fresh (B, n, n, h) projection
        msgs = edges.project(self.me.weight, self.me.bias).add_((m1 + gs[0][:, None])[:, None]).add_(m2[:, :, None])
        msgs = self.msg_mlp(msgs)  # (B, i, j, h)
        if self.masked:
            msgs = msgs.masked_fill(adj[..., None] < 0.5, -1e9)
        msgs = msgs.max(1).values  # (B, j, h)
        on_msgs = [self.o2, self.g2] if self.gated else [self.o2]
        ms = fused(on_msgs, msgs)
        out = self.ln(F.relu(o1 + ms[0]))
        if self.gated:
            gate = torch.sigmoid(self.g3(F.relu(zs[3] + ms[1])))
            out = out * gate + hidden * (1 - gate)
        return out, tri


class Decoder(nn.Module):
    """Logits for one feature from h_t = [node features, old state, new state] (3h) and edge features
    e_t = [edge features, triplet messages] (e). The layers named in ``on_h`` read h_t and ``c`` reads e_t;
    the model runs each of these for every decoder at once (``EncodeProcessDecode.decode``)."""

    def __init__(self, loc: str, t: str, h: int, e: int, k: int):
        super().__init__()
        self.loc, self.t = loc, t
        out = k if t == Type.CATEGORICAL else 1
        self.on_h: tuple[str, ...] = ()
        if loc == Location.NODE:
            if t in (Type.POINTER, Type.PERMUTATION_POINTER):
                self.a, self.b = nn.Linear(3 * h, h), nn.Linear(3 * h, h)
                self.c, self.d = nn.Linear(e, h), nn.Linear(h, 1)
                self.on_h = ("a", "b")
            else:
                self.a = nn.Linear(3 * h, out)
                self.on_h = ("a",)
        elif loc == Location.EDGE:
            width = h if t == Type.POINTER else out
            self.a, self.b, self.c = nn.Linear(3 * h, width), nn.Linear(3 * h, width), nn.Linear(e, width)
            self.on_h = ("a", "b")
            if t == Type.POINTER:
                self.d, self.f = nn.Linear(3 * h, h), nn.Linear(h, 1)
                self.on_h = ("a", "b", "d")
        else:
            self.a, self.b = nn.Linear(3 * h, out), nn.Linear(h, out)
            if t == Type.POINTER:
                self.c = nn.Linear(3 * h, 1)
                self.on_h = ("c",)
        self.reads_edges = loc == Location.EDGE or (loc == Location.NODE and t in (Type.POINTER,
                                                                                  Type.PERMUTATION_POINTER))

    def logits(self, p: dict[str, torch.Tensor], c: torch.Tensor | None, h_t, graph) -> torch.Tensor:
        """p: this decoder's ``on_h`` layers applied to h_t (B, n, .); c: its ``c`` applied to e_t (B, n, n, .)."""
        t = self.t
        if self.loc == Location.NODE:
            if t in (Type.POINTER, Type.PERMUTATION_POINTER):  # logits[b, i, j] = d(max(a_i, b_j + c_ji))
                q = maximum(p["b"][:, :, None] + c, p["a"][:, None])  # q[b, j, i]
                return self.d(q).squeeze(-1).transpose(1, 2)
            y = p["a"]
            return y if t == Type.CATEGORICAL else y.squeeze(-1)
        if self.loc == Location.EDGE:
            y = p["a"][:, :, None] + p["b"][:, None, :] + c
            if t == Type.POINTER:  # logits[b, i, j, k]
                return self.f(maximum(y[:, :, :, None], p["d"][:, None, None])).squeeze(-1)
            return y if t == Type.CATEGORICAL else y.squeeze(-1)
        y = self.a(h_t.amax(1)) + self.b(graph)
        if t == Type.POINTER:
            return (y[:, None] + p["c"]).squeeze(-1)
        return y if t == Type.CATEGORICAL else y.squeeze(-1)


POINTERS = (Type.POINTER, Type.SOFT_POINTER, Type.PERMUTATION_POINTER)


class EncodeProcessDecode(nn.Module):
    def __init__(self, algorithm: str, cfg: ModelConfig, cats: dict[str, int]):
        super().__init__()
        cfg.validate()
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
            scalar_hint = stage == Stage.HINT and t == Type.SCALAR and cfg.encoder_init == "xavier_on_scalars"
            for suffix in ("", "@2") if loc == Location.EDGE and t == Type.POINTER else ("",):
                enc = self.encoders[name + suffix]
                std = 1 / np.sqrt(h) if scalar_hint else 1 / np.sqrt(enc.in_features)
                nn.init.trunc_normal_(enc.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(enc.bias)
        self.processor = Processor(cfg.processor, h, cfg.triplet_features, cfg.layer_norm)
        e = 2 * h if cfg.processor == "triplet_gmpnn" else h
        self.dspec = decoded_spec(self.spec)
        self.decoders = nn.ModuleDict({name: Decoder(loc, t, h, e, cats.get(name, 1))
                                       for name, (_, loc, t) in self.dspec.items()})

    # -- encoding --
    def encode(self, feats: dict[str, Feature], B: int, n: int):
        """Every feature's encoder at once per location: the raw values side by side times the encoders'
        weights side by side (a sum of linear layers is one linear layer on the concatenation)."""
        h = self.cfg.hidden
        parts = {Location.NODE: [], Location.EDGE: [], Location.GRAPH: []}  # (raw columns, encoder)
        masked = self.processor.masked  # only PGN reads the adjacency
        adj = [torch.eye(n).expand(B, n, n)]
        for name, f in feats.items():
            if name not in self.encoders:
                raise ValueError(f"{self.algorithm}: feature {name!r} is not an input or hint of this model's spec "
                                 f"({', '.join(self.encoders)}); with static_hints_as_inputs a batch goes through "
                                 "samplers.pred_as_input (train.prepared) first")
            enc, x = self.encoders[name], f.data
            if f.type_ in POINTERS:
                if f.location == Location.NODE:  # a node pointer is an edge feature and extends the adjacency
                    parts[Location.EDGE].append((x[..., None], enc))
                    if masked:
                        adj.append(x + x.transpose(1, 2) > 0.5)
                elif f.location == Location.EDGE:  # (B, i, j, k) one-hot; affine encoders commute with the mean
                    parts[Location.EDGE] += [(x.mean(1)[..., None], enc),
                                             (x.mean(2)[..., None], self.encoders[name + "@2"])]
                else:
                    parts[Location.NODE].append((x[..., None], enc))
                continue
            parts[f.location].append((x if f.type_ == Type.CATEGORICAL else x[..., None], enc))
            if masked and f.location == Location.EDGE and f.type_ == Type.MASK:
                adj.append(x + x.transpose(1, 2) > 0)
        shapes = {Location.NODE: (B, n), Location.EDGE: (B, n, n), Location.GRAPH: (B,)}
        xs, ws, bs = {}, {}, {}
        for loc, ps in parts.items():
            xs[loc] = torch.cat([x for x, _ in ps], -1) if ps else torch.zeros(*shapes[loc], 0)
            ws[loc] = torch.cat([m.weight for _, m in ps], 1) if ps else torch.zeros(h, 0)
            bs[loc] = torch.stack([m.bias for _, m in ps]).sum(0) if ps else torch.zeros(h)
        node = F.linear(xs[Location.NODE], ws[Location.NODE], bs[Location.NODE])  # (B, n, h)
        graph = F.linear(xs[Location.GRAPH], ws[Location.GRAPH], bs[Location.GRAPH])  # (B, h)
        edges = Edges(xs[Location.EDGE], ws[Location.EDGE], bs[Location.EDGE])  # (B, n, n, h), factored
        adj = torch.stack([a.float() for a in adj]).amax(0) if masked else None
        return node, edges, graph, adj

    def decode(self, h_t: torch.Tensor, edges: Edges, tri: torch.Tensor | None, graph) -> dict[str, torch.Tensor]:
        """Every decoder's layers on h_t as one matmul, and every edge reader ``c`` as one projection."""
        h = self.cfg.hidden
        on_h = [(name, part, getattr(dec, part)) for name, dec in self.decoders.items() for part in dec.on_h]
        p: dict[str, dict[str, torch.Tensor]] = {name: {} for name in self.decoders}
        if on_h:
            for (name, part, _), y in zip(on_h, fused([m for *_, m in on_h], h_t), strict=True):
                p[name][part] = y
        readers = [(name, dec.c) for name, dec in self.decoders.items() if dec.reads_edges]
        c: dict[str, torch.Tensor] = {}
        if readers:
            w = torch.cat([m.weight for _, m in readers])  # (sum of widths, e)
            y = edges.project(w[:, :h], torch.cat([m.bias for _, m in readers]))  # (B, n, n, sum of widths)
            if tri is not None:  # in place into the fresh projection
                y = y.view(-1, y.shape[-1]).addmm_(tri.reshape(-1, h), w[:, h:].T).view(y.shape)
            c = dict(zip([name for name, _ in readers], y.split([m.out_features for _, m in readers], -1),
                         strict=True))
        return {name: dec.logits(p[name], c.get(name), h_t, graph) for name, dec in self.decoders.items()}

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

    def forward(self, batch: Batch, inputs: dict[str, Feature], first_hints: dict[str, Feature],
                hint_truth: dict[str, torch.Tensor] | None = None):
        """-> (output logits at each sample's last step, hint logits per step (list over steps)).
        ``hint_truth`` (T, B, ...) per hint is needed only for teacher forcing."""
        B, n, h = batch.size, batch.num_nodes, self.cfg.hidden
        steps = max(1, int(batch.lengths.max()) - 1)
        lengths = torch.as_tensor(batch.lengths)
        hidden = torch.zeros(B, n, h)
        hints, outputs, hint_preds = first_hints, None, []
        for i in range(steps):
            node, edges, graph, adj = self.encode({**inputs, **hints}, B, n)
            new, tri = self.processor(node, edges, graph, adj, hidden)
            h_t = torch.cat([node, hidden, new], -1)  # (B, n, 3h)
            preds = self.decode(h_t, edges, tri, graph)
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
            if self.training and self.cfg.hint_teacher_forcing > 0 and i + 1 < steps:
                if hint_truth is None:
                    raise ValueError("hint_teacher_forcing > 0 needs the true hints: pass hint_truth")
                force = torch.rand(B) < self.cfg.hint_teacher_forcing  # (B,) samples fed the true hint
                hints = {k: Feature(f.location, f.type_, torch.where(force.view(-1, *[1] * (f.data.dim() - 1)),
                                                                     hint_truth[k][i + 1], f.data))
                         for k, f in hints.items()}
            hidden = new
        return outputs, hint_preds


# ---- losses and scores ----------------------------------------------------------------------------------------------
def feature_loss(t: str, logits: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor | None = None):
    """Per-type loss, averaged over valid entries (``valid`` broadcasts over the batch axis 0)."""
    if t == Type.SCALAR:
        loss, mask = (logits - truth) ** 2, torch.ones_like(truth)
    elif t == Type.MASK:
        mask = (truth != -1).float()
        loss = F.binary_cross_entropy_with_logits(logits, truth.clamp(min=0), reduction="none")
    elif t in (Type.MASK_ONE, Type.CATEGORICAL):
        mask = (truth == 1).any(-1).float()
        loss = -(truth.clamp(min=0) * torch.log_softmax(logits, -1)).sum(-1)
    elif t == Type.POINTER:
        loss, mask = -(truth * torch.log_softmax(logits, -1)).sum(-1), torch.ones(truth.shape[:-1])
    elif t == Type.PERMUTATION_POINTER:
        loss, mask = -(truth * logits).sum(-1), torch.ones(truth.shape[:-1])
    else:
        raise ValueError(f"no loss for type {t}")
    if valid is not None:
        mask = mask * valid.view(-1, *[1] * (mask.dim() - 1))
    return (loss * mask).sum() / mask.sum().clamp(min=1e-8)


def output_predictions(dspec: dict, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hard predictions: pointer indices, 0/1 masks, one-hot classes; permutations fused with their first-node mask."""
    out = {}
    for name, x in logits.items():
        t = dspec[name][2]
        if name.endswith("_mask") and name[:-5] in logits and dspec[name[:-5]][2] == Type.PERMUTATION_POINTER:
            continue
        if t == Type.PERMUTATION_POINTER:
            first = logits[name + "_mask"].argmax(-1)
            ptr = x.argmax(-1)
            ptr[torch.arange(len(first)), first] = first
            out[name] = ptr
        elif t == Type.POINTER:
            out[name] = x.argmax(-1)
        elif t == Type.MASK:
            out[name] = (x > 0).float()
        elif t in (Type.MASK_ONE, Type.CATEGORICAL):
            out[name] = F.one_hot(x.argmax(-1), x.shape[-1]).float()
        else:
            out[name] = x
    return out


def score(batch: Batch, preds: dict[str, torch.Tensor]) -> dict[str, float]:
    """The benchmark's scores per output (pointer / mask_one / categorical accuracy, mask F1, scalar MSE) and
    their mean."""
    res = {}
    for name, f in batch.outputs.items():
        p = preds[name].numpy()
        truth = f.data
        t = f.type_
        if t in (Type.POINTER, Type.SHOULD_BE_PERMUTATION):
            res[name] = float((p == truth).mean())
        elif t == Type.MASK:
            m = truth != -1
            tp = ((p > 0.5) & (truth > 0.5) & m).sum()
            fp = ((p > 0.5) & (truth < 0.5) & m).sum()
            fn = ((p < 0.5) & (truth > 0.5) & m).sum()
            precision = tp / (tp + fp) if tp + fp else 1.0
            recall = tp / (tp + fn) if tp + fn else 1.0
            res[name] = float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0
        elif t in (Type.MASK_ONE, Type.CATEGORICAL):
            m = np.all(truth != -1, -1)
            res[name] = float(((p.argmax(-1) == truth.argmax(-1)) * m).sum() / m.sum())
        else:
            res[name] = float(((p - truth) ** 2).mean())
    res["score"] = float(np.mean(list(res.values())))
    return res
