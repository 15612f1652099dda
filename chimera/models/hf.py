"""Load and save HF NemotronH checkpoint directories (config.json + safetensors, single or sharded).

The only name translation is for MoE experts: the checkpoint stores one matrix per expert
(``mixer.experts.{k}.up_proj.weight``), the model one (E, out, in) tensor (``mixer.experts.up_proj``).
Multi-token-prediction weights (``mtp.*``) load when config.json declares MTP layers
(``num_nextn_predict_layers``) and are skipped otherwise, as transformers does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from chimera.models.config import HybridConfig

_EXPERT = re.compile(r"^(.*\.mixer\.experts)\.(\d+)\.(up_proj|down_proj)\.weight$")
_SKIPPED_PREFIXES = ("mtp.",)


def to_hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict in HF names: experts split one tensor per expert, tied head dropped."""
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        m = re.match(r"^(.*\.mixer\.experts)\.(up_proj|down_proj)$", name)
        if m:
            for k in range(t.size(0)):
                out[f"{m.group(1)}.{k}.{m.group(2)}.weight"] = t[k].contiguous()
        else:
            out[name] = t
    if model.config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def from_hf_state_dict(tensors: dict[str, torch.Tensor], cfg: HybridConfig) -> dict[str, torch.Tensor]:
    """HF names -> ours: per-expert matrices stacked into (E, out, in)."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for name, t in tensors.items():
        if name.startswith(_SKIPPED_PREFIXES) and not cfg.mtp_depths:
            continue
        m = _EXPERT.match(name)
        if m:
            experts.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = t
        else:
            out[name] = t
    for (prefix, proj), per_expert in experts.items():
        missing = sorted(set(range(cfg.n_routed_experts)) - set(per_expert))
        if missing:
            raise ValueError(f"checkpoint lacks {prefix}.{missing[0]}.{proj}.weight "
                             f"(config has n_routed_experts={cfg.n_routed_experts})")
        extra = sorted(set(per_expert) - set(range(cfg.n_routed_experts)))
        if extra:
            raise ValueError(f"checkpoint has {prefix}.{extra[0]}.{proj}.weight but config has "
                             f"n_routed_experts={cfg.n_routed_experts}")
        out[f"{prefix}.{proj}"] = torch.stack([per_expert[k] for k in range(cfg.n_routed_experts)])
    return out


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}; expected an HF NemotronH checkpoint directory")
    tensors: dict[str, torch.Tensor] = {}
    for fname in files:
        fpath = path / fname
        if not fpath.exists():
            raise FileNotFoundError(f"{index} names shard {fname}, which is missing from {path}")
        try:
            with safe_open(str(fpath), framework="pt") as f:
                for k in f.keys():
                    tensors[k] = f.get_tensor(k)
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"cannot read {fpath}: {e}; the file is corrupt or not safetensors") from e
    return tensors


def load_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"):
    """Build a ``cls`` (HybridLM) from an HF NemotronH checkpoint directory, checking every tensor's shape."""
    path = Path(path)
    if (path / "model" / "config.json").exists() and (path / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{path} is a run directory, not a checkpoint; did you mean {path / 'model'}?")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path / 'config.json'} not found; expected an HF NemotronH checkpoint directory")
    cfg = HybridConfig.load(path / "config.json")
    with torch.device("meta"):
        model = cls(cfg)
    state = from_hf_state_dict(_read_tensors(path), cfg)
    expected = model.state_dict()
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    for name, t in expected.items():
        if name not in state:
            raise ValueError(f"checkpoint {path} lacks tensor {name!r} (expected shape {tuple(t.shape)})")
        if tuple(state[name].shape) != tuple(t.shape):
            raise ValueError(f"tensor {name!r} in {path} has shape {tuple(state[name].shape)}, "
                             f"expected {tuple(t.shape)} from config.json")
        if state[name].is_floating_point() != t.is_floating_point():
            raise ValueError(f"tensor {name!r} in {path} has dtype {state[name].dtype}, expected a "
                             f"{'floating-point' if t.is_floating_point() else str(t.dtype)} tensor")
    unexpected = sorted(set(state) - set(expected) - {"lm_head.weight"})
    if unexpected:
        raise ValueError(f"checkpoint {path} has tensor {unexpected[0]!r} that the config's pattern "
                         f"{cfg.pattern!r} has no place for ({len(unexpected)} unexpected in all)")
    dtype = dtype or state["backbone.embeddings.weight"].dtype
    model = model.to_empty(device=device)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False, assign=False)
    # Non-persistent buffers are not in checkpoints: give them their initial values.
    for m in model.moe_layers():
        m.expert_load = torch.zeros(cfg.n_routed_experts, device=device)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.backbone.embeddings.weight
    model = model.to(dtype)
    for m in model.moe_layers():  # the router stays in fp32, as in the reference
        m.gate.float()
    return model.eval()


def save_pretrained(model, path: str | Path, max_shard_bytes: int = 2 * 1024**3) -> None:
    """Write config.json and safetensors (sharded with an index above ``max_shard_bytes``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.save(path / "config.json")
    tensors = {k: v.detach().cpu().contiguous() for k, v in to_hf_state_dict(model).items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        _atomic_save(shards[0], path / "model.safetensors")
        return
    n = len(shards)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        _atomic_save(shard, path / fname)
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _atomic_save(tensors: dict[str, torch.Tensor], dest: Path) -> None:
    tmp = dest.with_suffix(".safetensors.tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(dest)
