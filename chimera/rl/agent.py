"""The agent: per-task observation encoders -> a shared core over time -> per-task actor and value heads.

Cores: ``mlp`` (no memory), ``lstm`` (the baseline) or ``hybrid`` (chimera's HybridBackbone of
Mamba-2 / MLP / MoE layers: one recurrent step per environment step during rollouts, a chunked
scan over stored sequences during training, with the state reset at episode starts; the two
agree to float precision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chimera.envs.morphology import Morphology
from chimera.models.config import HybridConfig
from chimera.models.hybrid import HybridBackbone
from chimera.rl.distributions import CategoricalLogits, DiagGaussian
from chimera.rl.gnn import NerveNet
from chimera.rl.normalize import RunningNorm

NLE_GLYPHS = 5977  # nle.nethack.MAX_GLYPH + 1


@dataclass
class AgentConfig:
    core: Literal["mlp", "lstm", "hybrid", "nervenet"] = "hybrid"
    """Sequence core shared by all tasks; nervenet: a per-task graph policy over the body of environments that
    expose a morphology (mujoco/Centipede-N), with an MLP critic."""
    hidden: int = 64
    """Feature width of encoders and core."""
    pattern: str = "ME"
    """Hybrid core layer pattern (M Mamba-2, - MLP, E MoE; attention is not used across episodes)."""
    experts: int = 4
    """MoE experts in E layers (top-2, shared expert)."""
    obs_norm: bool = False
    """Normalise vector observations by running mean / variance (kept in the agent's checkpoint)."""
    gnn_steps: int = 3
    """NerveNet message-passing steps."""
    freeze: tuple[str, ...] = ()
    """Snowflake: NerveNet parts frozen at initialisation (input, message, update, output)."""
    separate_critic: bool = True
    """The critic has its own encoder and reads the core's features without training them, so the
    value regression does not swamp the policy's features (SB3 / CleanRL use separate networks)."""


class VectorEncoder(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # = self.net(obs), without four nested module calls per environment step
        l1, _, l2, _ = self.net
        return torch.tanh(F.linear(torch.tanh(F.linear(obs.float(), l1.weight, l1.bias)), l2.weight, l2.bias))


class NLEEncoder(nn.Module):
    """Glyph embeddings + a CNN over the egocentric crop (or the full map), an MLP over blstats."""

    def __init__(self, space: gym.spaces.Dict, hidden: int, glyph_dim: int = 16):
        super().__init__()
        self.key = "glyphs_crop" if "glyphs_crop" in space.spaces else "glyphs"
        self.embed = nn.Embedding(NLE_GLYPHS, glyph_dim)
        stride = 1 if self.key == "glyphs_crop" else 2
        self.cnn = nn.Sequential(nn.Conv2d(glyph_dim, 32, 3, stride, 1), nn.ELU(),
                                 nn.Conv2d(32, 32, 3, stride, 1), nn.ELU())
        with torch.no_grad():
            h, w = space[self.key].shape
            n = self.cnn(torch.zeros(1, glyph_dim, h, w)).numel()
        self.blstats = nn.Sequential(nn.Linear(space["blstats"].shape[0], 64), nn.ELU())
        self.out = nn.Sequential(nn.Linear(n + 64, hidden), nn.ELU())

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        g = self.embed(obs[self.key].long()).permute(0, 3, 1, 2)  # (N, e, h, w)
        b = torch.sign(obs["blstats"].float()) * torch.log1p(obs["blstats"].float().abs())
        return self.out(torch.cat([self.cnn(g).flatten(1), self.blstats(b)], -1))


def make_encoder(space: gym.Space, hidden: int) -> nn.Module:
    if isinstance(space, gym.spaces.Dict) and "blstats" in space.spaces:
        return NLEEncoder(space, hidden)
    if isinstance(space, gym.spaces.Box):
        return VectorEncoder(int(np.prod(space.shape)), hidden)
    raise ValueError(f"no encoder for observation space {space}; expected a Box or an NLE Dict")


class PolicyHead(nn.Module):
    """Categorical logits for Discrete actions, a diagonal Gaussian for Box actions; and a value
    from the core features (and, with a separate critic, the critic's own encoding)."""

    def __init__(self, space: gym.Space, hidden: int, critic_in: int | None = None):
        super().__init__()
        self.discrete = isinstance(space, gym.spaces.Discrete)
        n = space.n if self.discrete else int(np.prod(space.shape))
        self.actor = nn.Linear(hidden, n)
        nn.init.orthogonal_(self.actor.weight, 0.01)
        nn.init.zeros_(self.actor.bias)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(n))
        self.critic = nn.Linear(critic_in or hidden, 1)
        nn.init.orthogonal_(self.critic.weight, 1.0)
        nn.init.zeros_(self.critic.bias)

    def forward(self, h: torch.Tensor, hv: torch.Tensor | None = None):
        out = self.actor(h)
        dist = CategoricalLogits(out) if self.discrete else DiagGaussian(out, self.log_std)
        value_in = h if hv is None else torch.cat([h.detach(), hv], -1)
        return dist, self.critic(value_in).squeeze(-1)


class Agent(nn.Module):
    """Encoders and heads per task around one shared core."""

    def __init__(self, tasks: dict[str, tuple[gym.Space, gym.Space]], cfg: AgentConfig,
                 graphs: dict[str, Morphology] | None = None):
        super().__init__()
        self.cfg = cfg
        self.obs_norms = nn.ModuleDict({k: RunningNorm(int(np.prod(o.shape))) for k, (o, _) in tasks.items()
                                        if cfg.obs_norm and isinstance(o, gym.spaces.Box)})
        if cfg.core == "nervenet":
            missing = [k for k in tasks if not graphs or k not in graphs]
            if missing:
                raise ValueError(f"core nervenet needs environments that expose a morphology graph "
                                 f"(mujoco/Centipede-N); {', '.join(missing)} do not")
            self.gnn = nn.ModuleDict({k: NerveNet(graphs[k], cfg.hidden, cfg.gnn_steps, cfg.freeze, cfg.obs_norm)
                                      for k in tasks})
            self.gnn_critic = nn.ModuleDict({k: nn.Sequential(VectorEncoder(int(np.prod(o.shape)), cfg.hidden),
                                                              nn.Linear(cfg.hidden, 1)) for k, (o, _) in tasks.items()})
            self.core = nn.Identity()
            return
        if cfg.freeze:
            raise ValueError("freeze (Snowflake) applies to core nervenet only")
        self.encoders = nn.ModuleDict({k: make_encoder(o, cfg.hidden) for k, (o, _) in tasks.items()})
        critic_in = 2 * cfg.hidden if cfg.separate_critic else None
        self.heads = nn.ModuleDict({k: PolicyHead(a, cfg.hidden, critic_in) for k, (_, a) in tasks.items()})
        self.critic_encoders = nn.ModuleDict(
            {k: make_encoder(o, cfg.hidden) for k, (o, _) in tasks.items()} if cfg.separate_critic else {})
        if cfg.core == "lstm":
            self.core: nn.Module = nn.LSTM(cfg.hidden, cfg.hidden)
        elif cfg.core == "hybrid":
            if "*" in cfg.pattern:
                raise ValueError(f"agent pattern {cfg.pattern!r}: use M, - and E layers for a recurrent core")
            self.core_cfg = HybridConfig(
                pattern=cfg.pattern, vocab_size=16, hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                mamba_num_heads=max(1, cfg.hidden // 16), mamba_head_dim=16, n_groups=1, ssm_state_size=16,
                chunk_size=32, n_routed_experts=cfg.experts, num_experts_per_tok=min(2, cfg.experts),
                moe_intermediate_size=cfg.hidden, moe_shared_expert_intermediate_size=cfg.hidden,
                pad_token_id=0, bos_token_id=0, eos_token_id=0)
            self.core = HybridBackbone(self.core_cfg)
        else:
            self.core = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.Tanh())

    # ---- observation normalisation ------------------------------------------------------------
    def normalize(self, task: str, obs: Any) -> Any:
        return self.obs_norms[task](obs) if task in self.obs_norms else obs

    @torch.no_grad()
    def update_obs_norm(self, task: str, obs: Any) -> None:
        """Fold a batch of raw observations (any leading shape) into the running statistics."""
        if task in self.obs_norms:
            self.obs_norms[task].update(obs.reshape(-1, obs.shape[-1]))
        if self.cfg.core == "nervenet":
            self.gnn[task].update_norm(obs)

    @torch.no_grad()
    def balance_experts(self) -> None:
        """Aux-loss-free MoE balancing of a hybrid core: move each router's correction bias by the
        expert load seen in training forwards since the last call (call after every optimizer step)."""
        if self.cfg.core != "hybrid":
            return
        for m in self.core.modules():
            if hasattr(m, "update_bias"):  # the MoE mixers (as HybridLM.update_moe_bias does for an LM)
                m.update_bias(self.core_cfg.moe_bias_update_rate)

    # ---- recurrent state ------------------------------------------------------------------
    def initial_state(self, n: int) -> Any:
        if self.cfg.core == "lstm":
            return (torch.zeros(1, n, self.cfg.hidden), torch.zeros(1, n, self.cfg.hidden))
        if self.cfg.core == "hybrid":
            return self.core.new_cache(n)
        return None

    @staticmethod
    def clone_state(state: Any) -> Any:
        if state is None:
            return None
        if isinstance(state, tuple):
            return tuple(s.clone() for s in state)
        return state.clone()

    @staticmethod
    def select_state(state: Any, index: torch.Tensor) -> Any:
        if state is None:
            return None
        if isinstance(state, tuple):
            return tuple(s[:, index] for s in state)
        return state.select(index)

    # ---- forward ------------------------------------------------------------------------------
    def encode(self, task: str, obs: Any) -> torch.Tensor:
        return self.encoders[task](self.normalize(task, obs))

    def core_seq(self, x: torch.Tensor, state: Any, starts: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """x (T, n, H), starts (T, n) bool (first step of an episode) -> features (T, n, H), new state."""
        if self.cfg.core == "mlp":
            return torch.tanh(F.linear(x, self.core[0].weight, self.core[0].bias)), None  # = self.core(x)
        if self.cfg.core == "lstm":
            h, c = state
            outs = []
            for t in range(x.size(0)):
                keep = (~starts[t]).float()[None, :, None]
                out, (h, c) = self.core(x[t:t + 1], (h * keep, c * keep))
                outs.append(out)
            return torch.cat(outs), (h, c)
        y = self.core(inputs_embeds=x.transpose(0, 1), cache=state, reset=starts.t())
        return y.transpose(0, 1), state

    def critic_features(self, task: str, obs: Any) -> torch.Tensor | None:
        return self.critic_encoders[task](self.normalize(task, obs)) if self.cfg.separate_critic else None

    def graph_policy(self, task: str, obs: torch.Tensor):
        """NerveNet: flat observations (B, D) -> (Gaussian over actions, value)."""
        mean, log_std = self.gnn[task](obs)
        return DiagGaussian(mean, log_std), self.gnn_critic[task](self.normalize(task, obs)).squeeze(-1)

    def step(self, task: str, obs: Any, state: Any, starts: torch.Tensor):
        """One environment step for n envs: -> (dist, value, new state)."""
        if self.cfg.core == "nervenet":
            return (*self.graph_policy(task, obs), None)
        h, state = self.core_seq(self.encode(task, obs)[None], state, starts[None])
        dist, value = self.heads[task](h[0], self.critic_features(task, obs))
        return dist, value, state

    def evaluate(self, task: str, obs_seq: Any, state: Any, starts: torch.Tensor):
        """Stored sequences (T, n, ...) from their initial state -> (dist over (T*n), values (T, n))."""
        T, n = starts.shape
        flat = {k: v.flatten(0, 1) for k, v in obs_seq.items()} if isinstance(obs_seq, dict) else obs_seq.flatten(0, 1)
        if self.cfg.core == "nervenet":
            dist, value = self.graph_policy(task, flat)
            return dist, value.view(T, n)
        x = self.encode(task, flat).view(T, n, -1)
        h, _ = self.core_seq(x, state, starts)
        dist, value = self.heads[task](h.flatten(0, 1), self.critic_features(task, flat))
        return dist, value.view(T, n)
