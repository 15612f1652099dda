"""The post-training loop: rollout -> score -> update, on many environments at once.

Each step: choose ``prompts_per_step`` problems (environments by weight, problems by the pass-rate
curriculum), sample ``samples_per_prompt`` episodes of each on the inference engine, turn rewards
into group-relative advantages (DAPO's overlong shaping and dynamic sampling where asked), score
the sampled tokens under the pre-update parameters once, then run minibatch epochs of the chosen
objective (``losses``), ESPO stopping them once the ratio drifts past delta. With ``budget.prob`` > 0 a
share of the prompt groups is rolled out under a sampled thinking budget and rewarded for the answer
given under it (Nemotron 3 Nano's budget-control RL). MoE routers keep
their aux-loss-free bias balancing after every optimizer step. Every random choice is a function
of (seed, step), so a resumed run repeats the run it continues, metric for metric.

Under torchrun (data-parallel, replicated weights, gloo) the step's problems are the same whatever the
number of processes: each rank rolls out a contiguous block of the prompt groups on its own replica, the
episodes are gathered so that every rank holds the whole step (rewards, advantages, curriculum, metrics),
each rank scores and trains on the rows it rolled out with the batch's normalisers, and the gradients are
summed (``chimera.train.distributed``), so the update is the one-process update. Evaluation is sharded the
same way; rank 0 alone logs and writes.
"""

from __future__ import annotations

import random
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from chimera.config import to_dict
from chimera.inference import Sampler
from chimera.models import HybridLM, get_config
from chimera.models.config import SIZES
from chimera.posttrain.envs import Env, list_ids, make
from chimera.posttrain.envs.game import GameEnv, random_policy_rate
from chimera.posttrain.envs.remote import EnvHosts, require_ray
from chimera.posttrain.losses import (
    LossConfig,
    group_advantages,
    keep_groups,
    overlong_penalty,
    policy_loss,
    stop_epochs,
)
from chimera.posttrain.rollout import (
    Episode,
    RolloutConfig,
    batch_tensors,
    rollout,
    thinking_budget,
    token_logprobs,
)
from chimera.posttrain.sft import check_budget_shares, sft, solver_needs
from chimera.runs import Run, RunSettings, plot_metrics, rng_state, seed_everything, set_rng_state
from chimera.tokenizer import load_tokenizer
from chimera.train import distributed


@dataclass
class RolloutOptions:
    temperature: float = 1.0
    """Sampling temperature of the rollouts (top-k / top-p stay off, so the trainer's distribution is the engine's)."""
    max_new_tokens: int = 128
    """Tokens per assistant turn (a calculator call takes ~90, three lookups ~165)."""
    max_len: int = 768
    """Tokens per episode in all."""
    max_turns: int = 8
    thinking: bool = True
    compile: bool = False
    """Decode with the compiled step (worth it for long runs on big models)."""


@dataclass
class Objective(LossConfig):
    """The policy objective (``chimera.posttrain.losses.LossConfig``) and how each step's episodes feed it."""

    epochs: int = 1
    """Passes over each step's episodes (ESPO: at most this many, stopped at delta)."""
    minibatches: int = 1
    dynamic_sampling: bool = False
    """DAPO: leave out groups whose rewards are all equal (they carry no signal)."""
    overlong: Literal["none", "filter", "soft"] = "none"
    """DAPO: truncated episodes out of the loss (filter), or a reward penalty near the turn limit (soft)."""
    overlong_cache: int = 16
    """soft: the penalty ramps from 0 to -1 over the last this-many tokens of rollout.max_new_tokens."""


@dataclass
class OptimOptions:
    lr: float = 1e-4
    warmup_steps: int = 0
    """Linear warmup, then a constant rate."""
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0


@dataclass
class CurriculumOptions:
    pool_size: int = 512
    """Training problems per environment (seeds 0..pool_size-1) that the curriculum chooses among."""
    floor: float = 0.1
    """Weight of a problem whose pass rate is 0 or 1 (unseen: 1; pass rate p: max(floor, 4 p (1 - p)))."""
    enabled: bool = True
    """Off: problems uniformly from the pool."""


@dataclass
class SFTOptions:
    steps: int = 0
    """SFT steps on solver-made demonstrations before RL (0: none; use it where the environments are new to
    the model, so that RL starts above zero)."""
    batch_size: int = 16
    lr: float = 1e-3
    thinking_off: float = 0.0
    """Share of demonstrations with the reasoning removed (thinking off), as train-lm's data.thinking_off."""
    thinking_cut: float = 0.0
    """Share of demonstrations whose trace is cut at a random point and closed with </think>, answer kept."""
    env_weights: tuple[float, ...] = ()
    """Share of the demonstrations per environment (empty: the RL's env_weights); weigh up the environments
    the model is new to (a calculator call is a long exact copy) and down those it already solves."""
    warmup_steps: int = 0
    """Linear warmup of the learning rate (a fresh AdamW's first full-size steps can undo the model's SFT)."""
    min_lr_ratio: float = 1.0
    """Cosine decay to this share of lr by the last step (1: constant after the warmup)."""


@dataclass
class BudgetOptions:
    """Budget-control RL: some prompt groups think under a sampled budget and are rewarded for the answer
    given under it; all samples of a group share their budget, so advantages compare like with like."""

    prob: float = 0.0
    """Share of prompt groups rolled out under a thinking budget (0: off)."""
    fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    """Budgets as fractions of the problem's reference trace (its solver's thinking tokens), one drawn
    uniformly per group; 0 closes the thinking segment at once."""
    tokens: tuple[int, ...] = ()
    """(lo, hi): draw an absolute budget uniformly from lo..hi tokens instead of a fraction."""
    over_penalty: float = 0.0
    """Subtracted from the reward of an episode that thought past its budget (into the engine's grace)."""

    def validate(self, thinking: bool) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"budget.prob={self.prob} is the share of prompt groups run under a budget; give a "
                             f"value in [0, 1]")
        if self.prob == 0:
            return
        if not thinking:
            raise ValueError("budget.prob > 0 limits thinking, but rollout.thinking is off; turn it on "
                             "(--rollout.thinking) or set budget.prob 0")
        if self.tokens:
            if len(self.tokens) != 2 or not 0 <= self.tokens[0] <= self.tokens[1]:
                raise ValueError(f"budget.tokens={tuple(self.tokens)} must be two token counts lo hi with "
                                 f"0 <= lo <= hi (or empty: use budget.fractions)")
        elif not self.fractions or any(not 0.0 <= f <= 4.0 for f in self.fractions):
            raise ValueError(f"budget.fractions={tuple(self.fractions)} must be a non-empty list of fractions of the "
                             f"reference trace in [0, 4] (e.g. 0 0.25 0.5 1)")
        if not 0.0 <= self.over_penalty <= 1.0:
            raise ValueError(f"budget.over_penalty={self.over_penalty} must be in [0, 1] (rewards are in [0, 1])")


def reference_tokens(env: Env, tok, seed: int) -> int:
    """Thinking tokens of the solver's first turn on training problem ``seed``: the reference trace that
    ``budget.fractions`` scale."""
    env.reset(seed=seed, held_out=False)
    text = env.solve()
    return len(tok.encode(text.split("</think>", 1)[0])) if "</think>" in text else 0


def sample_budgets(opts: BudgetOptions, problems: list[tuple[str, int, bool]], envs: list[Env], tok, seed: int,
                   step: int, first: int = 0) -> list[int | None]:
    """One thinking budget (None: unbudgeted) per prompt group, a pure function of (seed, step, group) so that
    a resumed run draws the budgets the uninterrupted one drew; ``envs[i]`` serves group i's reference, and
    ``problems[0]`` is group ``first`` of the step (a data-parallel rank's share)."""
    out: list[int | None] = []
    for i, (_, env_seed, _) in enumerate(problems):
        rng = random.Random(f"{seed}/budget/{step}/{first + i}")
        if opts.prob == 0 or rng.random() >= opts.prob:
            out.append(None)
        elif opts.tokens:
            out.append(rng.randint(opts.tokens[0], opts.tokens[1]))
        else:
            out.append(round(rng.choice(opts.fractions) * reference_tokens(envs[i], tok, env_seed)))
    return out


@dataclass
class PostTrainRunConfig(RunSettings):
    name: str = "posttrain"
    log_every: int = 1
    ckpt_every: int = 10
    eval_every: int = 0
    """Held-out evaluation every this many steps (0: before the first step and at the end only)."""
    eval_problems: int = 16
    """Held-out problems per environment, answered greedily."""


@dataclass
class PostTrainConfig:
    """Post-train a hybrid LM with RL on several environments at once (chimera.posttrain)."""

    model: str = "tiny"
    """An HF NemotronH checkpoint directory (e.g. a train-lm run's model/); a named size starts from random weights."""
    envs: tuple[str, ...] = ("reasoning/add", "tools/calculator")
    """Environment ids (chimera.posttrain.envs.list_ids), trained on all at once."""
    env_weights: tuple[float, ...] = ()
    """Share of each step's prompts per environment (empty: equal)."""
    steps: int = 100
    """RL steps (one rollout batch and its update each)."""
    prompts_per_step: int = 8
    """Problems per step, split across environments by env_weights."""
    samples_per_prompt: int = 4
    """Episodes per problem: the group whose rewards make the advantages."""
    rollout: RolloutOptions = field(default_factory=RolloutOptions)
    objective: Objective = field(default_factory=Objective)
    optim: OptimOptions = field(default_factory=OptimOptions)
    curriculum: CurriculumOptions = field(default_factory=CurriculumOptions)
    sft: SFTOptions = field(default_factory=SFTOptions)
    budget: BudgetOptions = field(default_factory=BudgetOptions)
    envs_backend: Literal["inprocess", "ray"] = "inprocess"
    """inprocess: the environments live in this process and answer in turn; ray: each lives in a Ray actor
    (pip install -e '.[dist]'), routed by environment id, so slow games and tools answer side by side beside
    the trainer (the same episodes and metrics as inprocess)."""
    workers: int = 1
    """With --envs-backend ray: Ray actors per environment id, one CPU each (an actor holds several instances)."""
    ray_address: str = ""
    """With --envs-backend ray: the Ray cluster to join (e.g. auto, or ray://host:10001); empty: start Ray here
    with as many CPUs as the actors ask for (under torchrun: each rank its own Ray and actors)."""
    run: PostTrainRunConfig = field(default_factory=PostTrainRunConfig)

    def validate(self) -> None:
        if self.model not in SIZES and not (Path(self.model) / "config.json").exists():
            raise ValueError(f"model={self.model!r} is neither a checkpoint directory with config.json nor a named "
                             f"size ({', '.join(SIZES)})")
        known = list_ids()
        for e in self.envs:
            if e not in known:
                raise ValueError(f"envs has unknown id {e!r}; known ids: {', '.join(known)}")
        if not self.envs:
            raise ValueError("envs is empty; pick from " + ", ".join(known))
        if self.env_weights and (len(self.env_weights) != len(self.envs) or min(self.env_weights) < 0
                                 or sum(self.env_weights) <= 0):
            raise ValueError(f"env_weights={self.env_weights} needs one non-negative weight per environment "
                             f"({len(self.envs)}) with a positive sum")
        for name in ("steps", "prompts_per_step", "samples_per_prompt"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.objective.epochs <= 0 or self.objective.minibatches <= 0:
            raise ValueError("objective.epochs and objective.minibatches must be positive")
        if self.rollout.temperature <= 0:
            raise ValueError(f"rollout.temperature={self.rollout.temperature} must be positive for RL "
                             f"(greedy rollouts give every sample of a group the same reward)")
        if self.envs_backend == "ray":
            if self.workers < 1:
                raise ValueError(f"workers={self.workers} must be at least 1 (Ray actors per environment id)")
            require_ray()
        self.objective.validate()
        self.budget.validate(self.rollout.thinking)
        check_budget_shares(self.sft.thinking_off, self.sft.thinking_cut)
        w = self.sft.env_weights
        if w and (len(w) != len(self.envs) or min(w) < 0 or sum(w) <= 0):
            raise ValueError(f"sft.env_weights={w} needs one non-negative weight per environment "
                             f"({len(self.envs)}: {', '.join(self.envs)}) with a positive sum")
        if self.sft.warmup_steps < 0 or not 0.0 <= self.sft.min_lr_ratio <= 1.0:
            raise ValueError(f"sft.warmup_steps={self.sft.warmup_steps} must be >= 0 and sft.min_lr_ratio="
                             f"{self.sft.min_lr_ratio} in [0, 1]")


class Curriculum:
    """Pass rates of the problems seen so far, per environment, and a seeded choice weighted by them."""

    def __init__(self, cfg: CurriculumOptions, envs: tuple[str, ...]):
        self.cfg = cfg
        self.stats: dict[str, dict[int, list[int]]] = {e: {} for e in envs}  # env -> seed -> [passes, trials]

    def weight(self, env: str, seed: int) -> float:
        s = self.stats[env].get(seed)
        if s is None or not self.cfg.enabled:
            return 1.0
        p = s[0] / s[1]
        return max(self.cfg.floor, 4 * p * (1 - p))

    def choose(self, env: str, k: int, rng: random.Random) -> list[int]:
        seeds = list(range(self.cfg.pool_size))
        return rng.choices(seeds, weights=[self.weight(env, s) for s in seeds], k=k)

    def record(self, env: str, seed: int, passes: int, trials: int) -> None:
        s = self.stats[env].setdefault(seed, [0, 0])
        s[0] += passes
        s[1] += trials

    def pass_rate(self, env: str) -> float:
        got = self.stats[env].values()
        return sum(p for p, _ in got) / max(1, sum(t for _, t in got))

    def state_dict(self) -> dict:
        return {e: {int(k): list(v) for k, v in d.items()} for e, d in self.stats.items()}

    def load_state_dict(self, state: dict) -> None:
        for e, d in state.items():
            if e in self.stats:
                self.stats[e] = {int(k): list(v) for k, v in d.items()}


class EnvPool:
    """Environment instances per id, reused across steps (an NLE game is costly to start); with ``hosts`` they
    live in its Ray actors (``RemoteEnv`` proxies), else in this process."""

    def __init__(self, hosts: EnvHosts | None = None) -> None:
        self.made: dict[str, list[Env]] = {}  # every instance, by id
        self.hosts = hosts

    def take(self, env_ids: list[str]) -> list[Env]:
        """One distinct instance per entry of ``env_ids``; every instance made is kept (and closed at the end),
        so none is left open in this process or in an actor."""
        used: dict[str, int] = {}
        out = []
        for e in env_ids:
            have, k = self.made.setdefault(e, []), used.get(e, 0)
            if k == len(have):
                have.append(self.hosts.make(e) if self.hosts else make(e))
            out.append(have[k])
            used[e] = k + 1
        return out

    def close(self) -> None:
        for envs in self.made.values():
            for env in envs:
                if hasattr(env, "close"):
                    env.close()
        if self.hosts is not None:
            self.hosts.close()


def build_model(spec: str) -> HybridLM:
    if spec in SIZES:
        return HybridLM(get_config(spec))
    return HybridLM.from_pretrained(spec, dtype=torch.float32)


def choose_problems(cfg: PostTrainConfig, curriculum: Curriculum, step: int) -> list[tuple[str, int, bool]]:
    """This step's (env id, seed, held_out=False) problems: environments by weight, problems by curriculum."""
    rng = random.Random(f"{cfg.run.seed}/problems/{step}")
    weights = cfg.env_weights or (1.0,) * len(cfg.envs)
    envs = sorted(rng.choices(range(len(cfg.envs)), weights=weights, k=cfg.prompts_per_step))
    counts = {i: envs.count(i) for i in set(envs)}
    return [(cfg.envs[i], s, False) for i in sorted(counts) for s in curriculum.choose(cfg.envs[i], counts[i], rng)]


def env_metrics(episodes: list[Episode], prefix: str) -> dict[str, float]:
    """Per environment: reward, pass rate, response length, truncation rate, turns and tool calls per episode,
    and the mean of every other reward component the environment reports (``info/<key>``)."""
    out: dict[str, float] = {}
    for env in sorted({ep.env_id for ep in episodes}):
        eps = [ep for ep in episodes if ep.env_id == env]

        def mean(xs):
            return sum(xs) / len(xs)

        out[f"{prefix}/reward/{env}"] = mean([ep.reward for ep in eps])
        out[f"{prefix}/pass_rate/{env}"] = mean([ep.info.get("correct", 0.0) for ep in eps])
        out[f"{prefix}/response_tokens/{env}"] = mean([ep.response_tokens for ep in eps])
        out[f"{prefix}/truncated/{env}"] = mean([float(ep.truncated) for ep in eps])
        out[f"{prefix}/thinking_tokens/{env}"] = mean([ep.thinking_tokens for ep in eps])
        out[f"{prefix}/turns/{env}"] = mean([len(ep.turns) for ep in eps])
        if any("tool_calls" in ep.info for ep in eps):
            out[f"{prefix}/tool_calls/{env}"] = mean([ep.info.get("tool_calls", 0.0) for ep in eps])
        for key in sorted({k for ep in eps for k in ep.info} - {"correct", "tool_calls", "turns"}):
            out[f"{prefix}/info/{key}/{env}"] = mean([float(ep.info.get(key, 0.0)) for ep in eps])
    return out


@torch.no_grad()
def evaluate(model: HybridLM, tok, cfg: PostTrainConfig, pool: EnvPool,
             world: distributed.World = distributed.ALONE) -> dict[str, float]:
    """Held-out pass rate per environment (greedy episodes on problems never trained on), and for games the
    random policy's success rate on the same levels (on rank 0; each rank plays its block of the problems)."""
    problems = [(e, s, True) for e in cfg.envs for s in range(cfg.run.eval_problems)]
    baselines = {f"eval/random_policy/{e}": random_policy_rate(env, cfg.run.eval_problems)
                 for e, env in zip(cfg.envs, pool.take(list(cfg.envs))) if isinstance(env, GameEnv) and world.main}
    r = cfg.rollout
    rc = RolloutConfig(r.max_new_tokens, r.max_len, r.max_turns, r.thinking, compile=r.compile)
    mine = distributed.block(len(problems), world)
    share = problems[mine.start:mine.stop]
    eps = rollout(model, tok, pool.take([p[0] for p in share]), share, 1, Sampler(), rc, seed=0, first=mine.start)
    eps = [ep for part in distributed.all_gather_objects(eps, world) for ep in part]
    got = {k: v for k, v in env_metrics(eps, "eval").items() if "/pass_rate/" in k or "/tool_calls/" in k}
    return {**got, **baselines}


def budget_metrics(episodes: list[Episode]) -> dict[str, float]:
    """``env_metrics`` split into budgeted and unbudgeted episodes, with the budgeted ones' mean budget and
    share over budget."""
    budgeted = [ep for ep in episodes if ep.budget is not None]
    free = [ep for ep in episodes if ep.budget is None]
    out = {**(env_metrics(budgeted, "budget/budgeted") if budgeted else {}),
           **(env_metrics(free, "budget/unbudgeted") if free else {})}
    for env in sorted({ep.env_id for ep in budgeted}):
        eps = [ep for ep in budgeted if ep.env_id == env]
        out[f"budget/budgeted/budget_tokens/{env}"] = sum(ep.budget for ep in eps) / len(eps)
        out[f"budget/budgeted/over_budget/{env}"] = sum(ep.over_budget for ep in eps) / len(eps)
    out["budget/share_budgeted"] = len(budgeted) / len(episodes)
    return out


def shaped_rewards(episodes: list[Episode], cfg: PostTrainConfig) -> torch.Tensor:
    """(G, n) rewards, with DAPO's soft overlong penalty on the longest turn and the budget's over-budget
    penalty where asked."""
    r = torch.tensor([ep.reward for ep in episodes])
    if cfg.budget.over_penalty:
        r = r - cfg.budget.over_penalty * torch.tensor([float(ep.over_budget) for ep in episodes])
    if cfg.objective.overlong == "soft":
        longest = torch.tensor([max(map(len, ep.turns)) for ep in episodes])
        r = r + overlong_penalty(longest, cfg.rollout.max_new_tokens,
                                 min(cfg.objective.overlong_cache, cfg.rollout.max_new_tokens))
    return r.view(-1, cfg.samples_per_prompt)


def update(model: HybridLM, opt: torch.optim.Optimizer, episodes: list[Episode], adv: torch.Tensor,
           keep: torch.Tensor, cfg: PostTrainConfig, tok, step: int, ref: HybridLM | None,
           world: distributed.World = distributed.ALONE) -> dict[str, float]:
    """Minibatch epochs of the objective on one step's episodes; ESPO's drift is checked on each next
    minibatch before it is used, so no step is taken once it passes delta. Under torchrun every rank holds
    all the episodes and scores and trains on the groups it rolled out (the minibatches are the one-process
    ones, each rank taking its rows of each); normalisers, statistics, gradients and MoE loads are summed."""
    lc = ob = cfg.objective
    b = batch_tensors(episodes, tok.pad_id)
    n = cfg.samples_per_prompt
    groups = distributed.block(len(episodes) // n, world)
    own = torch.zeros(len(episodes), dtype=torch.bool)
    own[groups.start * n:groups.stop * n] = True

    def total(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return distributed.total(t, world, op)

    mask = b["mask"] * keep[:, None]
    if ob.overlong == "filter":
        mask = mask * torch.tensor([0.0 if ep.truncated else 1.0 for ep in episodes])[:, None]
    T = cfg.rollout.temperature
    seg = (tok.token_id("<think>"), tok.token_id("</think>"))
    model.eval()
    here = torch.nonzero(own).flatten()
    old, ref_lp = torch.zeros_like(mask), None if ref is None else torch.zeros_like(mask)
    with torch.no_grad():
        if len(here):
            old[here] = token_logprobs(model, b["inputs"][here], b["targets"][here], T, b["closed"][here], seg)
        if ref is not None and len(here):
            ref_lp[here] = token_logprobs(ref, b["inputs"][here], b["targets"][here], T, b["closed"][here], seg)
    model.train()
    rows = torch.nonzero(mask.sum(1) > 0).flatten()
    stats: dict[str, list[float]] = {}
    steps, stopped, tokens = 0, False, 0
    if len(rows) == 0:  # every episode filtered out (overlong filtering, dynamic sampling)
        return {"losses/grad_steps": 0.0, "losses/epochs_used": 0.0, "_trainer_tokens": 0.0}
    g = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + step)
    for _epoch in range(ob.epochs):
        for mb in rows[torch.randperm(len(rows), generator=g)].chunk(ob.minibatches):
            mine = mb[own[mb]]  # this rank's rows of the minibatch (all of them in one process)
            logp = (token_logprobs(model, b["inputs"][mine], b["targets"][mine], T, b["closed"][mine], seg)
                    if len(mine) else old[mine])
            loss, m = policy_loss(logp, old[mine], mask[mine], adv[mine], lc, b["rollout_logp"][mine],
                                  None if ref_lp is None else ref_lp[mine], total=total)
            if steps and stop_epochs(lc, m["losses/ratio_dev"]):
                stats.setdefault("losses/ratio_dev_at_stop", []).append(m["losses/ratio_dev"])
                stopped = True
                break
            aux = model.moe_aux_loss() if len(mine) else None
            if aux is not None and len(mine) < len(mb):  # a mean over the minibatch's rows: this rank's share
                aux = aux * (len(mine) / len(mb))
            if len(mine):
                (loss if aux is None else loss + aux).backward()
            distributed.sum_gradients(model, world)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf"))
            opt.step()
            opt.zero_grad(set_to_none=True)
            distributed.all_reduce_many([moe.expert_load for moe in model.moe_layers()], world)
            model.update_moe_bias()
            steps += 1
            tokens += int(b["inputs"][mb].numel())
            policy = float(total(loss.detach()))
            for k, v in {**m, "losses/policy_loss": policy, "losses/grad_norm": float(grad_norm)}.items():
                stats.setdefault(k, []).append(v)
        if stopped:
            break
    out = {k: sum(v) / len(v) for k, v in stats.items()}
    out["losses/grad_steps"] = float(steps)
    out["losses/epochs_used"] = steps / ob.minibatches
    out["_trainer_tokens"] = float(tokens)
    return out


def train(cfg: PostTrainConfig, resume: str | None = None, log=print) -> Run | None:
    """Run (or resume) post-training; writes the run directory and ``model/`` at the end (returns None on
    ranks other than 0 under torchrun)."""
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    with distributed.session("ddp") as world, closing(EnvPool(
            EnvHosts(cfg.envs, cfg.workers, cfg.ray_address) if cfg.envs_backend == "ray" else None)) as pool:
        return _train(cfg, resume, log if world.main else _silent, world, pool)


def _silent(*args, **kwargs) -> None:
    """The log of ranks other than 0."""


def _train(cfg: PostTrainConfig, resume: str | None, log, world: distributed.World, pool: EnvPool) -> Run | None:
    seed_everything(cfg.run.seed)
    model = build_model(cfg.model).train()
    tok = load_tokenizer(cfg.model if cfg.model not in SIZES else None)
    ref = None
    if cfg.objective.kl_beta > 0:
        ref = build_model(cfg.model).eval().requires_grad_(False)
        ref.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.param_groups(cfg.optim.weight_decay), lr=cfg.optim.lr,
                            betas=(cfg.optim.beta1, cfg.optim.beta2))
    curriculum = Curriculum(cfg.curriculum, cfg.envs)
    run, ckpt = distributed.start_run(world, cfg.run, to_dict(cfg), resume)
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        curriculum.load_state_dict(ckpt["curriculum"])
        set_rng_state(ckpt["rng"])
        if ref is not None and "reference" in ckpt:
            ref.load_state_dict(ckpt["reference"])
        start = ckpt["step"]
        log(f"resumed {run.path if run else resume} at step {start}")
    if resume and world.main:
        run.truncate_metrics(start)
    r = cfg.rollout
    rc = RolloutConfig(r.max_new_tokens, r.max_len, r.max_turns, r.thinking, compile=r.compile)
    sampler = Sampler(temperature=r.temperature)
    log(f"run {run.path if run else ''}: {cfg.objective.algo} on {', '.join(cfg.envs)} from {cfg.model} "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), {cfg.steps} steps of "
        f"{cfg.prompts_per_step} prompts x {cfg.samples_per_prompt} samples"
        + (f", {world.size} processes (each rolls out its block of the groups)" if world.distributed else ""))

    def evaluate_now(step: int) -> None:
        metrics = evaluate(model, tok, cfg, pool, world)
        if world.main:
            run.log(step, metrics)
        log(f"eval  step {step}  " + "  ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in metrics.items()))

    for env_id, env in zip(cfg.envs, pool.take(list(cfg.envs))):
        turn, episode = solver_needs(env, tok, thinking=r.thinking)
        if turn > r.max_new_tokens or episode > r.max_len:
            log(f"warning: {env_id}'s solver needs {turn} tokens per turn and {episode} per episode; with "
                f"rollout.max_new_tokens={r.max_new_tokens} and rollout.max_len={r.max_len} the model cannot solve "
                f"it (raise them)")
    if start == 0 and cfg.sft.steps > 0:
        demo_envs = dict(zip(cfg.envs, pool.take(list(cfg.envs))))
        losses = sft(model, demo_envs, cfg.sft.env_weights or cfg.env_weights or (1.0,) * len(cfg.envs), tok,
                     cfg.sft.steps, cfg.sft.batch_size, cfg.sft.lr, cfg.curriculum.pool_size, cfg.run.seed,
                     cfg.rollout.thinking, log, thinking_off=cfg.sft.thinking_off, thinking_cut=cfg.sft.thinking_cut,
                     warmup_steps=cfg.sft.warmup_steps, min_lr_ratio=cfg.sft.min_lr_ratio, world=world)
        if world.main:
            run.log(0, {"sft/loss_first": losses[0], "sft/loss_last": losses[-1]})
        if ref is not None:  # the KL holds the policy near where RL starts: after the SFT stage
            ref.load_state_dict(model.state_dict())
    if start == 0:
        evaluate_now(0)
    t_start = time.time()
    for step in range(start, cfg.steps):
        t0 = time.time()
        problems = choose_problems(cfg, curriculum, step)
        mine = distributed.block(len(problems), world)  # the groups this rank rolls out (all in one process)
        share = problems[mine.start:mine.stop]
        envs = pool.take([e for e, _, _ in share for _ in range(cfg.samples_per_prompt)])
        budgets = sample_budgets(cfg.budget, share, envs[::cfg.samples_per_prompt], tok, cfg.run.seed, step,
                                 first=mine.start)
        episodes = rollout(model, tok, envs, share, cfg.samples_per_prompt, sampler, rc,
                           seed=cfg.run.seed * 1_000_003 + step,
                           budgets=[None if b is None else thinking_budget(tok, b) for b in budgets], first=mine.start)
        episodes = [ep for part in distributed.all_gather_objects(episodes, world) for ep in part]
        t_roll = time.time() - t0
        rewards = shaped_rewards(episodes, cfg)
        n = cfg.samples_per_prompt
        for i, (env, seed, _) in enumerate(problems):
            group = episodes[i * n:(i + 1) * n]
            curriculum.record(env, seed, int(sum(ep.info.get("correct", 0.0) for ep in group)), n)
        adv = group_advantages(rewards, cfg.objective.scales_rewards).flatten()
        groups_kept = keep_groups(rewards) if cfg.objective.dynamic_sampling else torch.ones(len(problems),
                                                                                                  dtype=torch.bool)
        keep = groups_kept.repeat_interleave(n).float()
        t1 = time.time()
        lr = cfg.optim.lr * min(1.0, (step + 1) / max(1, cfg.optim.warmup_steps))  # warmup, then constant
        for group in opt.param_groups:
            group["lr"] = lr
        metrics = update(model, opt, episodes, adv, keep, cfg, tok, step, ref, world) if keep.any() else \
            {"losses/grad_steps": 0.0, "_trainer_tokens": 0.0}
        t_train = time.time() - t1
        done = step + 1
        sampled = sum(ep.response_tokens for ep in episodes)
        metrics.update(env_metrics(episodes, "charts"))
        if cfg.budget.prob > 0:
            metrics.update(budget_metrics(episodes))
        metrics["charts/frac_reward_zero_std"] = float((~keep_groups(rewards)).float().mean())
        metrics["charts/groups_kept"] = float(groups_kept.float().mean())
        metrics["charts/rollout_tokens_per_sec"] = sampled / max(t_roll, 1e-9)
        metrics["charts/trainer_tokens_per_sec"] = metrics.pop("_trainer_tokens") / max(t_train, 1e-9)
        metrics["charts/learning_rate"] = lr
        for env in cfg.envs:
            metrics[f"curriculum/pass_rate/{env}"] = curriculum.pass_rate(env)
        if done % cfg.run.log_every == 0 or done == cfg.steps:
            if world.main:
                run.log(done, metrics)
            eta = (cfg.steps - done) * (time.time() - t_start) / max(1, done - start)
            per_env = "  ".join(f"{e} {metrics[f'charts/reward/{e}']:.2f}" for e in cfg.envs
                                if f"charts/reward/{e}" in metrics)
            log(f"step {done:>5}/{cfg.steps}  reward {per_env}  "
                f"rollout {metrics['charts/rollout_tokens_per_sec']:,.0f} tok/s  "
                f"train {metrics['charts/trainer_tokens_per_sec']:,.0f} tok/s  "
                f"|r-1| {metrics.get('losses/ratio_dev', 0.0):.3f}  "
                f"mismatch {metrics.get('mismatch/token_mult_prob_error', 1.0):.4f}  eta {eta / 60:.1f} min")
        if cfg.run.eval_every and done % cfg.run.eval_every == 0 and done != cfg.steps:
            evaluate_now(done)
        if done == cfg.steps:
            evaluate_now(done)
        if (done % cfg.run.ckpt_every == 0 or done == cfg.steps) and world.main:
            run.checkpoints.save(done, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                        "curriculum": curriculum.state_dict(),
                                        "rng": rng_state(), "config": to_dict(cfg),
                                        **({"reference": ref.state_dict()} if ref is not None else {})})
    if not world.main:
        return None
    model.save_pretrained(run.path / "model")
    plots = plot_metrics(run.metrics_path, run.path / "plots") if cfg.run.plots else []
    log(f"model saved to {run.path / 'model'}" + (f"; {len(plots)} plots in {run.path / 'plots'}" if plots else ""))
    run.close()
    return run

