"""Prune a hybrid model to target sizes by Minitron importance, copying the kept units' weights exactly.

Each axis keeps its most important units, in their original order (so Mamba heads stay in their
``n_groups`` blocks and query heads beside their KV head):

- hidden size: one global channel ranking; every tensor that reads or writes the residual stream is
  sliced (embeddings, norms, every projection's input or output, the router, experts, MTP, lm_head);
- FFN / MoE expert / shared-expert neurons: per layer (per expert), rows of up_proj, columns of down_proj;
- attention heads: per layer, the same number of query heads kept in every GQA group (KV heads stay);
- Mamba head dim: one ranking of channels over all heads of a layer; Mamba heads: ranked within each of
  the ``n_groups`` groups, so every group keeps as many heads; z, x, dt rows of in_proj, the x rows of the
  conv, A_log, D, dt_bias and the gated norm are sliced to match, B and C untouched;
- experts: per layer, within each routing group, with the router rows and correction bias;
- depth: the ``drop_layers`` layers of least importance (``cosine`` or ``loss``) leave the pattern;
  MTP layers are pruned in width like the stack, or removed (``drop_mtp``).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from chimera.compress.importance import Importance, LayerImportance
from chimera.models import HybridLM
from chimera.models.config import HybridConfig


@dataclass
class Targets:
    """Target sizes; None keeps an axis as it is."""

    hidden_size: int | None = None
    ffn_size: int | None = None
    attention_heads: int | None = None
    mamba_heads: int | None = None
    mamba_head_dim: int | None = None
    experts: int | None = None
    moe_ffn_size: int | None = None
    shared_expert_size: int | None = None
    drop_layers: int = 0
    drop_mtp: bool = False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _current(cfg: HybridConfig) -> dict[str, int]:
    return {"hidden_size": cfg.hidden_size, "ffn_size": cfg.intermediate_size,
            "attention_heads": cfg.num_attention_heads, "mamba_heads": cfg.mamba_num_heads,
            "mamba_head_dim": cfg.mamba_head_dim, "experts": cfg.n_routed_experts,
            "moe_ffn_size": cfg.moe_intermediate_size, "shared_expert_size": cfg.moe_shared_expert_intermediate_size}


def check_targets(cfg: HybridConfig, t: Targets) -> None:
    """Raise ValueError naming the flag, the value and what is allowed when a target cannot be reached."""
    kinds = set(cfg.pattern + cfg.mtp_pattern)
    needs = {"ffn_size": "-", "attention_heads": "*", "mamba_heads": "M", "mamba_head_dim": "M",
             "experts": "E", "moe_ffn_size": "E", "shared_expert_size": "E"}
    for name, now in _current(cfg).items():
        v = getattr(t, name)
        if v is None or v == now:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{_flag(name)}={v!r} must be a positive integer (at most the current {now})")
        if name in needs and needs[name] not in kinds:
            raise ValueError(f"{_flag(name)}={v}: the model has no {needs[name]!r} layers "
                             f"(pattern {cfg.full_pattern!r}); drop the flag")
        if name == "shared_expert_size" and now == 0:
            raise ValueError(f"{_flag(name)}={v}: the model has no shared expert; drop the flag")
        if v > now:
            raise ValueError(f"{_flag(name)}={v} is larger than the current size {now}; pruning only shrinks "
                             f"(allowed: 1..{now})")
    if t.attention_heads is not None and t.attention_heads % cfg.num_key_value_heads:
        raise ValueError(f"--attention-heads={t.attention_heads} is not a multiple of num_key_value_heads="
                         f"{cfg.num_key_value_heads}: every GQA group keeps the same number of query heads "
                         f"(allowed: multiples of {cfg.num_key_value_heads} up to {cfg.num_attention_heads})")
    if t.mamba_heads is not None and t.mamba_heads % cfg.n_groups:
        raise ValueError(f"--mamba-heads={t.mamba_heads} is not a multiple of n_groups={cfg.n_groups}: every "
                         f"group keeps the same number of heads (allowed: multiples of {cfg.n_groups} up to "
                         f"{cfg.mamba_num_heads})")
    if t.experts is not None:
        if t.experts < cfg.num_experts_per_tok:
            raise ValueError(f"--experts={t.experts} is fewer than num_experts_per_tok={cfg.num_experts_per_tok} "
                             f"(allowed: {cfg.num_experts_per_tok}..{cfg.n_routed_experts})")
        if t.experts % cfg.n_group:
            raise ValueError(f"--experts={t.experts} is not a multiple of the routing groups n_group={cfg.n_group} "
                             f"(allowed: multiples of {cfg.n_group} up to {cfg.n_routed_experts})")
    if not isinstance(t.drop_layers, int) or not 0 <= t.drop_layers < cfg.num_layers:
        raise ValueError(f"--drop-layers={t.drop_layers!r} must be in 0..{cfg.num_layers - 1} (the model has "
                         f"{cfg.num_layers} layers and at least one must stay)")


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, in ascending index order (ties: the lower index wins)."""
    order = torch.sort(-scores.float(), stable=True).indices
    return order[:k].sort().values


def _top_per_group(scores: torch.Tensor, groups: int, k: int) -> torch.Tensor:
    """Top k // groups of each of ``groups`` equal contiguous blocks of ``scores``, as global indices."""
    per = scores.numel() // groups
    return torch.cat([g * per + _top(scores[g * per:(g + 1) * per], k // groups) for g in range(groups)])


def _channels(units: torch.Tensor, width: int, dims: torch.Tensor | None = None) -> torch.Tensor:
    """Channel indices of the kept ``units`` of ``width`` channels each (and only their ``dims``)."""
    dims = torch.arange(width) if dims is None else dims
    return (units[:, None] * width + dims[None, :]).flatten()


def choose_layers(imp: Importance, drop: int, metric: Literal["cosine", "loss"] = "cosine") -> list[int]:
    """The main-stack layers that stay after dropping the ``drop`` least important ones."""
    scores = imp.depth_cosine if metric == "cosine" else imp.depth_loss
    if scores is None:
        raise ValueError("--depth-metric loss needs importance collected with depth_loss=True")
    return _top(scores, len(scores) - drop).tolist()


def _layer_plan(li: LayerImportance, old: HybridConfig, new: HybridConfig) -> dict[str, torch.Tensor]:
    """Kept indices of one layer's units, by the role they play in its tensors."""
    if li.kind == "-":
        return {"ffn": _top(li.ffn, new.intermediate_size)}
    if li.kind == "*":
        heads = _top_per_group(li.heads, old.num_key_value_heads, new.num_attention_heads)
        return {"q": _channels(heads, old.head_dim)}
    if li.kind == "M":
        dims = _top(li.mamba.norm(dim=0), new.mamba_head_dim)  # one head-dim ranking over all heads
        heads = _top_per_group(li.mamba[:, dims].norm(dim=1), old.n_groups, new.mamba_num_heads)
        x = _channels(heads, old.mamba_head_dim, dims)
        d, bc = old.mamba_d_inner, 2 * old.n_groups * old.ssm_state_size
        rest = torch.arange(d, d + bc)
        return {"heads": heads, "x": x, "conv": torch.cat([x, rest]),
                "in": torch.cat([x, d + x, d + rest, 2 * d + bc + heads])}
    experts = _top_per_group(li.experts, old.n_group, new.n_routed_experts)
    plan = {"experts": experts,
            "expert_ffn": torch.stack([_top(li.expert_ffn[e], new.moe_intermediate_size) for e in experts])}
    if li.shared_ffn is not None:
        plan["shared"] = _top(li.shared_ffn, new.moe_shared_expert_intermediate_size)
    return plan


# (suffix of a layer tensor) -> the plan key of each dimension; "H" is the hidden ranking, None all.
_LAYER_RULES = [
    (r"norm\.weight|enorm\.weight|hnorm\.weight|final_layernorm\.weight", ["H"]),
    (r"mixer\.in_proj\.weight", ["in", "H"]), (r"mixer\.in_proj\.bias", ["in"]),
    (r"mixer\.conv1d\.weight", ["conv", None, None]), (r"mixer\.conv1d\.bias", ["conv"]),
    (r"mixer\.(dt_bias|A_log|D)", ["heads"]), (r"mixer\.norm\.weight", ["x"]),
    (r"mixer\.out_proj\.weight", ["H", "x"]), (r"mixer\.(out_proj|o_proj|down_proj)\.bias", ["H"]),
    (r"mixer\.q_proj\.weight", ["q", "H"]), (r"mixer\.q_proj\.bias", ["q"]),
    (r"mixer\.[kv]_proj\.weight", [None, "H"]), (r"mixer\.[kv]_proj\.bias", [None]),
    (r"mixer\.o_proj\.weight", ["H", "q"]),
    (r"mixer\.up_proj\.weight", ["ffn", "H"]), (r"mixer\.up_proj\.bias", ["ffn"]),
    (r"mixer\.down_proj\.weight", ["H", "ffn"]),
    (r"mixer\.gate\.weight", ["experts", "H"]), (r"mixer\.gate\.e_score_correction_bias", ["experts"]),
    (r"mixer\.shared_experts\.up_proj\.weight", ["shared", "H"]), (r"mixer\.shared_experts\.up_proj\.bias", ["shared"]),
    (r"mixer\.shared_experts\.down_proj\.weight", ["H", "shared"]),
    (r"mixer\.shared_experts\.down_proj\.bias", ["H"]),
    (r"mixer\.fc1_latent_proj\.weight", [None, "H"]), (r"mixer\.fc1_latent_proj\.bias", [None]),
    (r"mixer\.fc2_latent_proj\.weight", ["H", None]), (r"mixer\.fc2_latent_proj\.bias", ["H"]),
]


def _take(t: torch.Tensor, index: list[torch.Tensor | None]) -> torch.Tensor:
    for dim, idx in enumerate(index):
        if idx is not None:
            t = t.index_select(dim, idx.to(t.device))
    return t


def _slice_layer(name: str, t: torch.Tensor, plan: dict, H: torch.Tensor, latent: bool) -> torch.Tensor:
    keys = dict(plan, H=H)
    if name == "eh_proj.weight":  # (d, 2d) over concat(enorm(embed), hnorm(h))
        d = t.size(0)
        return _take(t, [H, torch.cat([H, d + H])])
    width = None if latent else H
    if name in ("mixer.experts.up_proj", "mixer.experts.down_proj"):  # (E, inter, width) / (E, width, inter)
        t = t.index_select(0, plan["experts"].to(t.device))
        ffn = plan["expert_ffn"].to(t.device)  # (E', inter'): each expert keeps its own neurons
        if name.endswith("up_proj"):
            t = torch.gather(t, 1, ffn[:, :, None].expand(-1, -1, t.size(2)))
            return t if width is None else t.index_select(2, width.to(t.device))
        t = torch.gather(t, 2, ffn[:, None, :].expand(-1, t.size(1), -1))
        return t if width is None else t.index_select(1, width.to(t.device))
    for pattern, dims in _LAYER_RULES:
        if re.fullmatch(pattern, name):
            return _take(t, [None if k is None else keys[k] for k in dims])
    raise ValueError(f"prune: no slicing rule for layer tensor {name!r}")


def _new_config(cfg: HybridConfig, t: Targets, kept_layers: list[int]) -> HybridConfig:
    sizes = {k: (v if getattr(t, k) is None else getattr(t, k)) for k, v in _current(cfg).items()}
    changes = dict(hidden_size=sizes["hidden_size"], intermediate_size=sizes["ffn_size"],
                   num_attention_heads=sizes["attention_heads"], mamba_num_heads=sizes["mamba_heads"],
                   mamba_head_dim=sizes["mamba_head_dim"], n_routed_experts=sizes["experts"],
                   moe_intermediate_size=sizes["moe_ffn_size"],
                   moe_shared_expert_intermediate_size=sizes["shared_expert_size"],
                   pattern="".join(cfg.pattern[i] for i in kept_layers))
    if t.drop_mtp:
        changes.update(mtp_pattern="", mtp_depths=0, mtp_share_block=False)
    return cfg.replace(**changes)


@torch.no_grad()
def prune(model: HybridLM, imp: Importance, targets: Targets,
          depth_metric: Literal["cosine", "loss"] = "cosine") -> HybridLM:
    """A new model of the target sizes whose kept units carry ``model``'s weights exactly."""
    old = model.config
    check_targets(old, targets)
    if depth_metric not in ("cosine", "loss"):
        raise ValueError(f"--depth-metric={depth_metric!r} (expected cosine or loss)")
    kept = choose_layers(imp, targets.drop_layers, depth_metric) if targets.drop_layers else list(range(old.num_layers))
    new_cfg = _new_config(old, targets, kept)
    H = _top(imp.hidden, new_cfg.hidden_size)
    plans = [_layer_plan(li, old, new_cfg) for li in imp.layers]
    mtp_plans = [_layer_plan(li, old, new_cfg) for li in imp.mtp_layers]
    latent = old.moe_latent_size is not None
    state = {}
    for name, t in model.state_dict().items():
        if name in ("backbone.embeddings.weight", "lm_head.weight"):
            state[name] = _take(t, [None, H])
        elif name == "backbone.norm_f.weight":
            state[name] = _take(t, [H])
        elif m := re.match(r"backbone\.layers\.(\d+)\.(.*)$", name):
            i = int(m.group(1))
            if i in kept:
                new_name = f"backbone.layers.{kept.index(i)}.{m.group(2)}"
                state[new_name] = _slice_layer(m.group(2), t, plans[i], H, latent)
        elif m := re.match(r"mtp\.layers\.(\d+)\.(.*)$", name):
            if not targets.drop_mtp:
                state[name] = _slice_layer(m.group(2), t, mtp_plans[int(m.group(1))], H, latent)
        else:
            raise ValueError(f"prune: no slicing rule for tensor {name!r}")
    with torch.device("meta"):
        new = HybridLM(new_cfg)
    new.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
    for m in new.moe_layers():  # non-persistent: not in the state dict
        m.expert_load = torch.zeros(new_cfg.n_routed_experts, device=new.lm_head.weight.device)
    if new_cfg.tie_word_embeddings:
        new.lm_head.weight = new.backbone.embeddings.weight
    return new.train(model.training)


def describe(cfg: HybridConfig) -> dict[str, int | str]:
    """The sizes prune.py can change, for a before / after table."""
    out: dict[str, int | str] = {"pattern": cfg.full_pattern}
    out.update(_current(cfg))
    return out


def prune_checkpoint(checkpoint: str | Path, out: str | Path, targets: Targets, *, calib: dict,
                     depth_metric: Literal["cosine", "loss"] = "cosine", log=print) -> dict:
    """Load an HF NemotronH checkpoint, rank every axis on the calibration set, prune to ``targets`` and
    write the pruned checkpoint (with the tokenizer files and ``prune.json``) to ``out``."""
    from chimera.compress.calib import calibration_batches
    from chimera.compress.importance import collect_importance, loss_on
    from chimera.models import count_parameters
    from chimera.tokenizer import load_tokenizer

    checkpoint, out = Path(checkpoint), Path(out)
    model = HybridLM.from_pretrained(checkpoint)
    check_targets(model.config, targets)
    batches = calibration_batches(**calib, tokenizer=load_tokenizer(checkpoint), vocab_size=model.config.vocab_size)
    imp = collect_importance(model, batches, depth_loss=targets.drop_layers > 0 and depth_metric == "loss")
    pruned = prune(model, imp, targets, depth_metric).eval()
    dropped = sorted(set(range(model.config.num_layers)) - set(choose_layers(imp, targets.drop_layers, depth_metric))
                     ) if targets.drop_layers else []
    report = {"checkpoint": str(checkpoint), "targets": dict(vars(targets)),
              "depth_metric": depth_metric, "calibration": {"sequences": sum(x.size(0) for x, _ in batches),
                                                            "tokens": sum(x.numel() for x, _ in batches)},
              "dropped_layers": dropped,
              "before": {**describe(model.config), "params": count_parameters(model.config)["total"],
                         "calib_loss": imp.base_loss},
              "after": {**describe(pruned.config), "params": count_parameters(pruned.config)["total"],
                        "calib_loss": loss_on(pruned, batches)},
              "depth_cosine": imp.depth_cosine.tolist(),
              "depth_loss": None if imp.depth_loss is None else imp.depth_loss.tolist()}
    cfg = pruned.config
    width = cfg.moe_latent_size or cfg.hidden_size
    if "E" in cfg.full_pattern and (cfg.moe_intermediate_size % 8 or width % 8):
        log(f"warning: moe_intermediate_size={cfg.moe_intermediate_size} and expert width {width} are not both "
            f"multiples of 8; transformers' grouped expert GEMM needs 16-byte strides and may refuse them")
    pruned.save_pretrained(out)
    for f in checkpoint.iterdir():  # the tokenizer travels with the weights
        if f.name.startswith(("tokenizer", "special_tokens")) and f.is_file():
            shutil.copy2(f, out / f.name)
    (out / "prune.json").write_text(json.dumps(report, indent=2) + "\n")
    b, a = report["before"], report["after"]
    log(f"{'':<22}{'before':>12}{'after':>12}")
    for k in b:
        before, after = (f"{b[k]:.4f}", f"{a[k]:.4f}") if isinstance(b[k], float) else (str(b[k]), str(a[k]))
        log(f"{k:<22}{before:>12}{after:>12}")
    if dropped:
        log(f"dropped layers {dropped} (by {depth_metric})")
    log(f"wrote {out}")
    return report
