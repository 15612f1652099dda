"""HybridConfig: the layer pattern and sizes of a hybrid Mamba-2 / attention / MoE decoder.

The pattern is a string with one character per layer, as in Nemotron-H:
``M`` Mamba-2 mixer, ``*`` attention, ``-`` MLP (relu^2), ``E`` Mixture of Experts.
The config converts to and from the Hugging Face ``NemotronH`` ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

LAYER_KINDS = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}

# HF spellings of each layer kind; the first is the one we write, the rest are legacy.
_HF_BLOCK_TYPES = {
    "M": ("linear_attention", "mamba"),
    "*": ("full_attention", "attention"),
    "-": ("mlp",),
    "E": ("moe",),
}
_HF_TO_CHAR = {name: char for char, names in _HF_BLOCK_TYPES.items() for name in names}

# Legacy HF keys -> current HF keys (the NemotronH remote-code configs used these).
_HF_LEGACY_KEYS = {
    "mamba_n_groups": "n_groups",
    "mamba_d_conv": "conv_kernel",
    "mamba_expand": "expand",
    "mamba_dt_min": "time_step_min",
    "mamba_dt_max": "time_step_max",
    "mamba_dt_limit": "time_step_limit",
    "mamba_dt_init_floor": "time_step_floor",
    "mamba_conv_bias": "use_conv_bias",
    "mamba_chunk_size": "chunk_size",
    "norm_eps": "layer_norm_epsilon",
}


@dataclass
class HybridConfig:
    """Sizes and layer pattern of a hybrid decoder; field names follow HF NemotronH."""

    pattern: str = "M*M-"
    """One character per layer: M Mamba-2, * attention, - MLP, E MoE. A suffix ``/B`` per MTP depth
    adds multi-token prediction blocks of pattern B (``"MEM*ME/*E/*E"``: two depths of ``*E``)."""
    vocab_size: int = 272
    hidden_size: int = 64
    # attention
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    attention_bias: bool = False
    # MLP
    intermediate_size: int = 128
    mlp_bias: bool = False
    # Mamba-2
    mamba_num_heads: int = 4
    mamba_head_dim: int = 16
    n_groups: int = 2
    ssm_state_size: int = 16
    conv_kernel: int = 4
    chunk_size: int = 16
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    use_conv_bias: bool = True
    use_bias: bool = False
    # MoE
    n_routed_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 32
    moe_shared_expert_intermediate_size: int = 64
    moe_latent_size: int | None = None
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    n_group: int = 1
    topk_group: int = 1
    moe_bias_update_rate: float = 1e-3
    """Aux-loss-free balancing: step size of the correction-bias update (0 disables it)."""
    moe_aux_loss_coeff: float = 0.0
    """Weight of the sequence-level load-balancing loss (0 disables it)."""
    # multi-token prediction (Megatron / Nemotron 3 design)
    mtp_pattern: str = ""
    """Layer pattern of one MTP block (e.g. "*E"); empty: no MTP."""
    mtp_depths: int = 0
    """Number of future tokens predicted beyond the next one."""
    mtp_share_block: bool = False
    """Apply one MTP block at every depth (HF num_nextn_predict_layers=1) instead of one block per depth."""
    mtp_loss_scale: float = 0.1
    """Weight of the mean MTP cross-entropy added to the training loss."""
    # model
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    """HF config keys we do not use, kept so a round trip loses nothing."""

    def __post_init__(self) -> None:
        if "/" in self.pattern:
            main, *blocks = self.pattern.split("/")
            if len(set(blocks)) != 1 or not blocks[0]:
                raise ValueError(f"pattern {self.pattern!r}: every MTP block after '/' must have the same, "
                                 f"non-empty pattern (got {blocks})")
            self.pattern, self.mtp_pattern, self.mtp_depths = main, blocks[0], len(blocks)
        self.validate()

    @property
    def full_pattern(self) -> str:
        """The pattern with its MTP suffix, e.g. ``MEM*ME/*E/*E``."""
        return self.pattern + "".join("/" + self.mtp_pattern for _ in range(self.mtp_depths))

    @property
    def mtp_num_blocks(self) -> int:
        """Physical MTP blocks (HF num_nextn_predict_layers)."""
        if not self.mtp_depths:
            return 0
        return 1 if self.mtp_share_block else self.mtp_depths

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.pattern)

    @property
    def mamba_d_inner(self) -> int:
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def mamba_conv_dim(self) -> int:
        return self.mamba_d_inner + 2 * self.n_groups * self.ssm_state_size

    @property
    def layer_kinds(self) -> list[str]:
        return [LAYER_KINDS[c] for c in self.pattern]

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the field when sizes or the pattern are inconsistent."""
        if not self.pattern:
            raise ValueError("pattern is empty (expected one character per layer from M, *, -, E)")
        for where, pat in (("pattern", self.pattern), ("mtp_pattern", self.mtp_pattern)):
            for i, c in enumerate(pat):
                if c not in LAYER_KINDS:
                    raise ValueError(
                        f"{where} {pat!r} has unknown layer kind {c!r} at position {i} (expected M, *, -, E)"
                    )
        if bool(self.mtp_pattern) != bool(self.mtp_depths):
            raise ValueError(f"mtp_pattern={self.mtp_pattern!r} and mtp_depths={self.mtp_depths} must be set together")
        positive = ["vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                    "intermediate_size", "mamba_num_heads", "mamba_head_dim", "n_groups", "ssm_state_size",
                    "conv_kernel", "chunk_size", "n_routed_experts", "num_experts_per_tok",
                    "moe_intermediate_size", "n_group", "topk_group"]
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 2**31:
                raise ValueError(f"{name}={v!r} must be a positive integer (below 2**31)")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not divisible by "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.mamba_num_heads % self.n_groups:
            raise ValueError(
                f"mamba_num_heads={self.mamba_num_heads} is not divisible by n_groups={self.n_groups}"
            )
        if self.num_experts_per_tok > self.n_routed_experts:
            raise ValueError(
                f"num_experts_per_tok={self.num_experts_per_tok} exceeds n_routed_experts={self.n_routed_experts}"
            )
        if self.n_routed_experts % self.n_group:
            raise ValueError(f"n_routed_experts={self.n_routed_experts} is not divisible by n_group={self.n_group}")
        if self.topk_group > self.n_group:
            raise ValueError(f"topk_group={self.topk_group} exceeds n_group={self.n_group}")
        if self.moe_latent_size is not None and not 0 < self.moe_latent_size < 2**31:
            raise ValueError(f"moe_latent_size={self.moe_latent_size} must be a positive integer or None")
        if not 0 <= self.moe_shared_expert_intermediate_size < 2**31:
            raise ValueError("moe_shared_expert_intermediate_size must be >= 0 (0 means no shared expert)")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            v = getattr(self, name)
            if not 0 <= v < self.vocab_size:
                raise ValueError(f"{name}={v} is outside the vocabulary [0, {self.vocab_size})")

    # ---- HF config.json ------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """The HF NemotronH config.json contents for this config."""
        out: dict[str, Any] = dict(self.extra)
        ours = {"pattern", "extra", "moe_bias_update_rate", "moe_aux_loss_coeff", "mtp_pattern", "mtp_depths",
                "mtp_share_block", "mtp_loss_scale"}
        for f in fields(self):
            if f.name not in ours:
                out[f.name] = getattr(self, f.name)
        out.update(
            architectures=["NemotronHForCausalLM"],
            model_type="nemotron_h",
            layers_block_type=[_HF_BLOCK_TYPES[c][0] for c in self.pattern],
            mamba_hidden_act="silu",
            mlp_hidden_act="relu2",
            expand=max(1, self.mamba_d_inner // self.hidden_size),
            n_shared_experts=1 if self.moe_shared_expert_intermediate_size > 0 else 0,
            num_nextn_predict_layers=self.mtp_num_blocks,
            chimera={"moe_bias_update_rate": self.moe_bias_update_rate,
                     "moe_aux_loss_coeff": self.moe_aux_loss_coeff,
                     "mtp_depths": self.mtp_depths, "mtp_loss_scale": self.mtp_loss_scale},
        )
        if self.mtp_depths:
            out["mtp_layers_block_type"] = [_HF_BLOCK_TYPES[c][0] for c in self.mtp_pattern]
        out.pop("num_hidden_layers", None)
        out.pop("hybrid_override_pattern", None)
        return out

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> HybridConfig:
        """Build from an HF NemotronH config dict (current or legacy spellings)."""
        d = dict(d)
        for key, ours in (("mlp_hidden_act", "relu2"), ("mamba_hidden_act", "silu")):
            act = d.pop(key, ours)
            if act != ours:  # the MLP / expert and Mamba gate activations are fixed in the model code
                raise ValueError(f"{key}={act!r} is not supported: chimera implements NemotronH's {ours!r} only")
        for old, new in _HF_LEGACY_KEYS.items():
            if old in d:
                d.setdefault(new, d.pop(old))
        pattern = _pattern_from_hf(d)
        ours = {f.name for f in fields(cls)} - {"pattern", "extra"}
        kwargs: dict[str, Any] = {k: d.pop(k) for k in list(d) if k in ours}
        if "head_dim" not in kwargs and "num_attention_heads" in kwargs and "hidden_size" in kwargs:
            kwargs["head_dim"] = kwargs["hidden_size"] // kwargs["num_attention_heads"]
        if kwargs.get("num_key_value_heads") is None and "num_attention_heads" in kwargs:
            kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
        for k in ("eos_token_id", "bos_token_id", "pad_token_id"):
            if isinstance(kwargs.get(k), list):
                kwargs[k] = kwargs[k][0] if kwargs[k] else None
            if kwargs.get(k) is None:
                kwargs.pop(k, None)
        chimera = d.pop("chimera", {}) or {}
        if not isinstance(chimera, dict):
            raise ValueError(f"config key 'chimera' has value {chimera!r}; expected an object")
        kwargs.update({k: v for k, v in chimera.items() if k in ours})
        _check_types(cls, kwargs)
        blocks = d.pop("num_nextn_predict_layers", 0) or 0
        mtp_types = d.pop("mtp_layers_block_type", None)
        mtp_string = d.pop("mtp_hybrid_override_pattern", None)
        if blocks:
            kwargs["mtp_pattern"] = (_pattern_from_hf({"layers_block_type": mtp_types}) if mtp_types
                                     else mtp_string or "*E")
            kwargs.setdefault("mtp_depths", blocks)
            kwargs["mtp_share_block"] = blocks == 1 and kwargs["mtp_depths"] > 1
        else:
            kwargs.pop("mtp_depths", None)
        if "n_shared_experts" in d and d["n_shared_experts"] == 0:
            kwargs["moe_shared_expert_intermediate_size"] = 0
        for k in ("time_step_limit", "layers_block_type", "hybrid_override_pattern", "num_hidden_layers"):
            d.pop(k, None)
        return cls(pattern=pattern, extra=d, **kwargs)

    def save(self, path: str | Path) -> None:
        """Write config.json in the HF NemotronH format."""
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> HybridConfig:
        """Read an HF NemotronH config.json."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); expected an HF NemotronH config.json") from e
        return cls.from_hf_dict(d)

    def replace(self, **changes: Any) -> HybridConfig:
        return dataclasses.replace(self, **changes)


def _fits(value: Any, tp: type) -> bool:
    if tp is type(None):
        return value is None
    if isinstance(value, bool):  # JSON true / false are not numbers
        return tp is bool
    return isinstance(value, int | float) if tp is float else isinstance(value, tp)


def _check_types(cls: type, kwargs: dict[str, Any]) -> None:
    """Raise ValueError naming the first config value whose JSON type does not fit its field."""
    hints = typing.get_type_hints(cls)
    for key, value in kwargs.items():
        allowed = typing.get_args(hints[key]) or (hints[key],)  # `int | None` -> (int, NoneType)
        if not any(_fits(value, tp) for tp in allowed):
            names = " or ".join("null" if tp is type(None) else tp.__name__ for tp in allowed)
            raise ValueError(f"config key {key!r} has value {value!r}; expected {names}")


def _pattern_from_hf(d: dict[str, Any]) -> str:
    types = d.get("layers_block_type") or d.get("layer_types")
    if types and (not isinstance(types, list) or not all(isinstance(t, str) for t in types)):
        raise ValueError(f"layers_block_type={types!r} must be a list of layer type names")
    if types:
        chars = []
        for i, t in enumerate(types):
            if t not in _HF_TO_CHAR:
                raise ValueError(
                    f"layers_block_type[{i}]={t!r} is not a known layer type "
                    f"(expected one of {sorted(_HF_TO_CHAR)})"
                )
            chars.append(_HF_TO_CHAR[t])
        return "".join(chars)
    if "hybrid_override_pattern" in d:
        return d["hybrid_override_pattern"]
    raise ValueError("config has neither 'layers_block_type' nor 'hybrid_override_pattern'; cannot tell the layers")


# ---- named sizes --------------------------------------------------------------------------

def _released(**kw: Any) -> HybridConfig:
    base = dict(vocab_size=131072, conv_kernel=4, chunk_size=128, ssm_state_size=128, n_groups=8,
                mamba_head_dim=64, head_dim=128, num_key_value_heads=8)
    base.update(kw)
    return HybridConfig(**base)


SIZES: dict[str, Any] = {
    # Tiny presets for tests, demos and laptops.
    "tiny": lambda: HybridConfig(pattern="M*M-"),
    "tiny-mamba": lambda: HybridConfig(pattern="MMM"),
    "tiny-moe": lambda: HybridConfig(pattern="MEM*ME"),
    "tiny-latent-moe": lambda: HybridConfig(pattern="MEM*ME", moe_latent_size=32),
    "tiny-mtp": lambda: HybridConfig(pattern="MEM*ME/*E/*E"),
    # A 12-layer main stack with one shared 2-layer MTP block (as Nemotron 3 repeats one block over
    # depths): drafting costs little next to a main-model step, the setting speculation pays off in.
    "tiny-mtp-deep": lambda: HybridConfig(pattern="MEM*MEMEM*ME/*E/*E", mtp_share_block=True),
    "small-moe": lambda: HybridConfig(
        pattern="MEMEM*EMEM", hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        mamba_num_heads=8, mamba_head_dim=32, n_groups=2, ssm_state_size=32, chunk_size=64,
        n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=128,
        moe_shared_expert_intermediate_size=256, intermediate_size=512),
    "small-mtp": lambda: SIZES["small-moe"]().replace(mtp_pattern="*E", mtp_depths=2),
    # Released shapes (for parameter counts on the meta device; weights come from checkpoints).
    "nemotron-h-8b": lambda: _released(
        pattern="M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-", hidden_size=4096,
        num_attention_heads=32, intermediate_size=21504, mamba_num_heads=128),
    "nemotron-nano-9b-v2": lambda: _released(
        pattern="M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-", hidden_size=4480,
        num_attention_heads=40, intermediate_size=15680, mamba_num_heads=128, mamba_head_dim=80),
    "nemotron-3-nano-30b-a3b": lambda: _released(
        pattern="MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME", hidden_size=2688,
        num_attention_heads=32, num_key_value_heads=2, intermediate_size=1856, mamba_num_heads=64,
        n_routed_experts=128, num_experts_per_tok=6, moe_intermediate_size=1856,
        moe_shared_expert_intermediate_size=3712, routed_scaling_factor=2.5),
}


def get_config(name: str) -> HybridConfig:
    """A named size from the registry, e.g. 'tiny-moe' or 'nemotron-h-8b'."""
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r} (known: {', '.join(SIZES)})")
    return SIZES[name]()
