"""Multi-environment on-policy training: one agent, many environments, PPO-clip or ESPO.

Each iteration collects ``num_steps`` steps from every task's vector env, computes GAE (with
truncated episodes bootstrapped from their final observation), then runs minibatch epochs over
whole per-env sequences (recurrent cores replay them from the state stored at the rollout's
start). The losses of all tasks are summed (unitary scalarization) or their gradients on the shared
core combined by a multi-task aggregator (``aggregator``, see ``chimera.rl.multitask``).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from chimera.config import to_dict
from chimera.envs import make, make_vector
from chimera.rl.agent import Agent, AgentConfig
from chimera.rl.multitask import Method, aggregate
from chimera.rl.normalize import RewardScaler
from chimera.rl.ppo import explained_variance, gae, policy_loss, value_loss
from chimera.runs import Run, RunSettings, plot_metrics, read_metrics, rng_state, seed_everything, set_rng_state


@dataclass
class PPOConfig:
    algo: Literal["ppo", "espo"] = "ppo"
    """ppo: clipped surrogate, fixed epochs; espo: unclipped surrogate, epochs stop at drift delta."""
    lr: float = 2.5e-4
    anneal_lr: bool = True
    num_steps: int = 128
    """Steps per env per iteration."""
    gamma: float = 0.99
    gae_lambda: float = 0.95
    minibatches: int = 4
    """Minibatches per epoch, split across envs (whole sequences)."""
    epochs: int = 4
    """PPO epochs; ESPO's cap is espo_max_epochs."""
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW) on every trained weight; 0: plain Adam, as CleanRL."""
    norm_adv: bool = True
    target_kl: float = 0.0
    """PPO: stop the epochs once the approximate KL, measured after every gradient step, exceeds this (0: off)."""
    espo_delta: float = 0.25
    """ESPO: stop the epochs once mean |ratio - 1|, measured after every gradient step, exceeds this."""
    espo_max_epochs: int = 16


@dataclass
class RLRunConfig(RunSettings):
    name: str = "rl"
    seed: int = 1
    log_every: int = 1
    """Iterations between log lines."""
    ckpt_every: int = 20
    """Iterations between checkpoints."""
    threads: int = 1
    """torch CPU threads; 1 is fastest for small networks stepped one env step at a time (0: torch's default)."""


@dataclass
class TrainRLConfig:
    """Train one agent on a mix of environments with PPO or ESPO."""

    tasks: tuple[str, ...] = ("gym/CartPole",)
    """Environment ids (chimera envs); several make a multi-environment run."""
    num_envs: int = 8
    """Envs per task."""
    vector: Literal["inprocess", "subprocess", "ray"] = "inprocess"
    """inprocess: a task's envs stepped in turn in this process (fastest on 2 cores); subprocess: worker
    processes writing observations to shared memory; ray: Ray actors (pip install -e '.[dist]'), here or on a
    cluster. Crashed or hung workers and actors are restarted."""
    workers: int = 0
    """Worker processes (or Ray actors) per task for the subprocess and ray backends (0: one per CPU core, at
    most num_envs)."""
    ray_address: str = ""
    """With --vector ray: the Ray cluster to join (e.g. auto, or ray://host:10001); empty: start Ray here with
    as many CPUs as the actors ask for."""
    total_steps: int = 100_000
    """Environment steps over all tasks."""
    max_episode_steps: int = 0
    """NLE / MiniHack step limit (0: the environment's default)."""
    crop_size: int = 9
    """NLE egocentric glyph crop (0: full map only)."""
    reward_norm: bool = False
    """Scale rewards by the running std of the discounted return (MuJoCo practice; kept in checkpoints)."""
    aggregator: Method = "sum"
    """How task gradients combine on the shared core: sum (unitary scalarization) or a multi-task optimizer."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    run: RLRunConfig = field(default_factory=RLRunConfig)

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot train."""
        if not self.tasks:
            raise ValueError("tasks is empty; give at least one environment id (chimera envs lists them)")
        for name, v in (("num_envs", self.num_envs), ("total_steps", self.total_steps),
                        ("ppo.num_steps", self.ppo.num_steps), ("ppo.minibatches", self.ppo.minibatches),
                        ("ppo.epochs", self.ppo.epochs), ("ppo.espo_max_epochs", self.ppo.espo_max_epochs),
                        ("agent.hidden", self.agent.hidden)):
            if v <= 0:
                raise ValueError(f"{name}={v} must be a positive integer")
        if not 0 < self.ppo.lr < math.inf:
            raise ValueError(f"ppo.lr={self.ppo.lr} must be a positive finite number")
        if self.aggregator == "mgda_ub":
            raise ValueError("aggregator=mgda_ub needs one shared representation of the same inputs for every task; "
                             "here each environment has its own batch, so use --aggregator mgda (the min-norm "
                             "point of the task gradients on the shared core)")
        for name, v in (("ppo.gamma", self.ppo.gamma), ("ppo.gae_lambda", self.ppo.gae_lambda)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name}={v} must lie in [0, 1]")
        if self.num_envs % self.ppo.minibatches:
            raise ValueError(f"num_envs={self.num_envs} is not divisible by ppo.minibatches={self.ppo.minibatches}")
        for t in self.tasks:
            if "/" not in t:
                raise ValueError(f"task {t!r} must be a chimera id such as gym/CartPole or minihack/Room-5x5")


def task_specs(cfg: TrainRLConfig) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any]]:
    """Observation / action spaces of every task, and the morphology graph of those that expose one."""
    spaces, graphs = {}, {}
    for t in cfg.tasks:
        env = make(t, **env_kwargs(t, cfg))
        spaces[t] = (env.observation_space, env.action_space)
        if getattr(env.unwrapped, "morphology", None) is not None:
            graphs[t] = env.unwrapped.morphology
        env.close()
    return spaces, graphs


def env_kwargs(task: str, cfg: TrainRLConfig) -> dict[str, Any]:
    if task.startswith(("minihack/", "nethack/")):
        kw: dict[str, Any] = {"observation_keys": ("glyphs", "blstats")}
        if cfg.crop_size:
            kw["crop_size"] = cfg.crop_size
        if cfg.max_episode_steps:
            kw["max_episode_steps"] = cfg.max_episode_steps
        return kw
    return {}


def clip_action(action: np.ndarray, space: Any) -> np.ndarray:
    """Gaussian samples clipped to a Box action space (the unclipped sample is what the policy is scored on)."""
    if hasattr(space, "low") and hasattr(space, "high"):
        return np.clip(action, space.low, space.high)
    return action


def to_tensor(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {k: torch.as_tensor(v) for k, v in obs.items()}
    return torch.as_tensor(obs, dtype=torch.float32)


def index_obs(obs: Any, idx) -> Any:
    return {k: v[idx] for k, v in obs.items()} if isinstance(obs, dict) else obs[idx]


class Rollout:
    """Preallocated (T, n, ...) buffers for one task."""

    def __init__(self, T: int, n: int, obs: Any):
        def buf(x):
            return torch.zeros((T, *x.shape), dtype=x.dtype)

        self.obs = {k: buf(v) for k, v in obs.items()} if isinstance(obs, dict) else buf(obs)
        self.actions: torch.Tensor | None = None
        self.logp = torch.zeros(T, n)
        self.values = torch.zeros(T, n)
        self.rewards = torch.zeros(T, n)
        self.dones = torch.zeros(T, n, dtype=torch.bool)
        self.starts = torch.zeros(T, n, dtype=torch.bool)

    def put_obs(self, t: int, obs: Any) -> None:
        if isinstance(obs, dict):
            for k, v in obs.items():
                self.obs[k][t] = v
        else:
            self.obs[t] = obs


def train_rl(cfg: TrainRLConfig, resume: str | None = None, log=print) -> Run:
    """Run (or resume) a PPO / ESPO training run; returns the run directory handle."""
    from chimera.train.distributed import refuse_torchrun

    refuse_torchrun("train-rl")
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.run.seed)
    spaces, graphs = task_specs(cfg)
    if cfg.vector == "ray":  # one CPU per actor, for all tasks' actors
        from chimera.envs.ray_vector import connect

        connect(cfg.ray_address, len(cfg.tasks) * min(cfg.num_envs, cfg.workers or os.cpu_count() or 1))
    venvs = {t: make_vector(lambda t=t: make(t, **env_kwargs(t, cfg)), cfg.num_envs, cfg.run.seed + 1000 * i,
                            cfg.vector, cfg.workers, log, cfg.ray_address) for i, t in enumerate(cfg.tasks)}
    agent = Agent(spaces, cfg.agent, graphs)
    trained = [p for p in agent.parameters() if p.requires_grad]
    opt = (torch.optim.AdamW(trained, lr=cfg.ppo.lr, eps=1e-5, weight_decay=cfg.ppo.weight_decay, fused=True)
           if cfg.ppo.weight_decay > 0 else torch.optim.Adam(trained, lr=cfg.ppo.lr, eps=1e-5, fused=True))
    scalers = {t: RewardScaler(cfg.num_envs, cfg.ppo.gamma) for t in cfg.tasks} if cfg.reward_norm else {}
    T, n = cfg.ppo.num_steps, cfg.num_envs
    iterations = max(1, cfg.total_steps // (T * n * len(cfg.tasks)))
    run, ckpt = Run.start(cfg.run, to_dict(cfg), resume)
    start_it, global_step = 0, 0
    if ckpt is not None:
        agent.load_state_dict(ckpt["agent"])
        opt.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        for t, sd in ckpt.get("reward_norm", {}).items():
            scalers[t].load_state_dict(sd)
        start_it, global_step = ckpt["step"], ckpt["global_step"]
        log(f"resumed {run.path} at iteration {start_it} ({global_step} steps); episodes restart")
    elif resume:
        log(f"no loadable checkpoint in {run.path}; starting from iteration 0")
    if resume:
        run.truncate_metrics(global_step)
    core = cfg.agent.core + (f" {cfg.agent.pattern}" if cfg.agent.core == "hybrid" else "")
    log(f"run {run.path}: {cfg.ppo.algo} on {', '.join(cfg.tasks)} ({n} envs each), core {core}, "
        f"{iterations} iterations")
    state = {t: agent.initial_state(n) for t in cfg.tasks}
    starts = {t: torch.ones(n, dtype=torch.bool) for t in cfg.tasks}
    recent: dict[str, dict[str, list[float]]] = {t: {"return": [], "length": [], "success": []} for t in cfg.tasks}
    t_start = time.time()
    for it in range(start_it, iterations):
        t0 = time.time()
        if cfg.ppo.anneal_lr:
            opt.param_groups[0]["lr"] = cfg.ppo.lr * (1 - it / iterations)
        rollouts, state0, last_values = {}, {}, {}
        agent.eval()
        with torch.no_grad():
            for task, venv in venvs.items():
                obs = to_tensor(venv.obs)
                ro = Rollout(T, n, obs)
                state0[task] = agent.clone_state(state[task])
                for t in range(T):
                    ro.put_obs(t, obs)
                    ro.starts[t] = starts[task]
                    dist, value, state[task] = agent.step(task, obs, state[task], starts[task])
                    action = dist.sample()
                    if ro.actions is None:
                        ro.actions = torch.zeros((T, *action.shape), dtype=action.dtype)
                    ro.actions[t], ro.logp[t], ro.values[t] = action, dist.log_prob(action), value
                    next_obs, rew, term, trunc, finals = venv.step(clip_action(action.numpy(), venv.action_space))
                    rew = torch.as_tensor(rew, dtype=torch.float32)
                    if scalers:
                        rew = scalers[task](rew, torch.as_tensor(term | trunc))
                    cut = [i for i in range(n) if trunc[i] and not term[i]]
                    if cut:  # bootstrap truncated episodes from the value of their final observation
                        idx = torch.tensor(cut)
                        fin = to_tensor(np.stack([finals[i] for i in cut]) if not isinstance(finals[cut[0]], dict)
                                        else {k: np.stack([finals[i][k] for i in cut]) for k in finals[cut[0]]})
                        side = agent.clone_state(agent.select_state(state[task], idx))
                        _, v_final, _ = agent.step(task, fin, side, torch.zeros(len(cut), dtype=torch.bool))
                        rew[idx] += cfg.ppo.gamma * v_final
                    ro.rewards[t] = rew
                    ro.dones[t] = torch.as_tensor(term | trunc)
                    starts[task] = ro.dones[t].clone()
                    obs = to_tensor(next_obs)
                _, last_values[task], _ = agent.step(task, obs, agent.clone_state(state[task]), starts[task])
                rollouts[task] = ro
                rets, lens, succ = venv.stats.drain()
                recent[task]["return"] = (recent[task]["return"] + rets)[-100:]
                recent[task]["length"] = (recent[task]["length"] + lens)[-100:]
                recent[task]["success"] = (recent[task]["success"] + succ)[-100:]
        global_step += T * n * len(cfg.tasks)
        adv, ret = {}, {}
        for task, ro in rollouts.items():
            adv[task], ret[task] = gae(ro.rewards, ro.values, ro.dones, last_values[task], cfg.ppo.gamma,
                                       cfg.ppo.gae_lambda)
        metrics = update(agent, opt, rollouts, state0, adv, ret, cfg.ppo, cfg.aggregator)
        for task, ro in rollouts.items():  # after the update, so collection and update saw the same statistics
            if not isinstance(ro.obs, dict):
                agent.update_obs_norm(task, ro.obs)
        sps = T * n * len(cfg.tasks) / (time.time() - t0)
        metrics["charts/SPS"] = sps
        metrics["charts/learning_rate"] = opt.param_groups[0]["lr"]
        if any(hasattr(v, "restarts") for v in venvs.values()):  # only backends that can restart a worker
            metrics["charts/worker_restarts"] = float(sum(getattr(v, "restarts", 0) for v in venvs.values()))
        for task in cfg.tasks:
            if recent[task]["return"]:
                metrics[f"charts/episodic_return/{task}"] = float(np.mean(recent[task]["return"]))
                metrics[f"charts/episodic_length/{task}"] = float(np.mean(recent[task]["length"]))
                succ = [s for s in recent[task]["success"] if not math.isnan(s)]
                if succ:
                    metrics[f"charts/success/{task}"] = float(np.mean(succ))
        if (it + 1) % cfg.run.log_every == 0 or it + 1 == iterations:
            run.log(global_step, metrics)
            eta = (iterations - it - 1) * (time.time() - t_start) / max(1, it + 1 - start_it)
            per_task = "  ".join(
                f"{task.split('/')[-1]} R {_fmt(metrics.get(f'charts/episodic_return/{task}'))}"
                + (f" S {metrics[f'charts/success/{task}']:.2f}" if f"charts/success/{task}" in metrics else "")
                for task in cfg.tasks)
            log(f"iter {it + 1:>5}/{iterations}  step {global_step:>8}  {sps:,.0f} sps  {per_task}  "
                f"epochs {metrics['losses/epochs_used']:.2f}  |r-1| {metrics['losses/ratio_dev_mean']:.3f}  "
                f"eta {eta / 60:.1f} min")
        if (it + 1) % cfg.run.ckpt_every == 0 or it + 1 == iterations:
            run.checkpoints.save(it + 1, {"agent": agent.state_dict(), "optimizer": opt.state_dict(),
                                          "rng": rng_state(), "global_step": global_step, "config": to_dict(cfg),
                                          "reward_norm": {t: sc.state_dict() for t, sc in scalers.items()}})
    log(learning_table(run.metrics_path, cfg.tasks))
    if cfg.run.plots:
        plots = plot_metrics(run.metrics_path, run.path / "plots")
        log(f"plots: {', '.join(str(p) for p in plots)}")
    for v in venvs.values():
        v.close()
    run.close()
    return run


def _fmt(value: float | None) -> str:
    """A mean that may not exist yet (no episode ended): '-', as the tables write a missing success."""
    return "-" if value is None else f"{value:.2f}"


def learning_table(metrics_path: Path, tasks: tuple[str, ...]) -> str:
    """Per environment: the first and the last logged mean return and success (over the last 100 episodes)."""
    rows = read_metrics(metrics_path)
    lines = [f"{'environment':<28} {'return: first -> last':>26} {'success: first -> last':>24}"]
    for t in tasks:
        got = [r for r in rows if f"charts/episodic_return/{t}" in r]
        if not got:
            lines.append(f"{t:<28} {'(no episode ended)':>26}")
            continue
        ret = f"{got[0][f'charts/episodic_return/{t}']:.2f} -> {got[-1][f'charts/episodic_return/{t}']:.2f}"
        key = f"charts/success/{t}"
        succ = f"{got[0][key]:.2f} -> {got[-1][key]:.2f}" if key in got[0] and key in got[-1] else "-"
        lines.append(f"{t:<28} {ret:>26} {succ:>24}")
    return "\n".join(lines)


def stop_early(p: PPOConfig, drift: float, approx_kl: float) -> bool:
    """Whether the policy has moved far enough from the rollout's to end the iteration's epochs.

    ESPO: mean |ratio - 1| above ``espo_delta``; PPO: approximate KL above ``target_kl`` (when set)."""
    if p.algo == "espo":
        return drift > p.espo_delta
    return p.target_kl > 0 and approx_kl > p.target_kl


def update(agent: Agent, opt: torch.optim.Optimizer, rollouts: dict[str, Rollout], state0: dict[str, Any],
           adv: dict[str, torch.Tensor], ret: dict[str, torch.Tensor], p: PPOConfig,
           aggregator: str = "sum") -> dict[str, float]:
    """Minibatch epochs over whole env sequences; task losses combined on the shared core by ``aggregator``
    (summed by default). Returns CleanRL-named diagnostics.

    After every gradient step the policy's drift from the rollout policy (mean |ratio - 1|, and the
    approximate KL) is measured on the next minibatch before it is used; once ``stop_early`` says so,
    no further step is taken (ESPO's rule; PPO's target-KL stop as in Stable-Baselines3)."""
    agent.train()
    params, shared = list(agent.parameters()), list(agent.core.parameters())
    n = next(iter(rollouts.values())).values.size(1)
    max_epochs = p.espo_max_epochs if p.algo == "espo" else p.epochs
    stats: dict[str, list[float]] = {k: [] for k in ("pg", "v", "ent", "kl", "clipfrac", "dev")}
    dev_max, steps, stopped = 0.0, 0, False
    for _epoch in range(max_epochs):
        for mb in torch.randperm(n).chunk(p.minibatches):
            losses, step_stats = {}, {k: [] for k in ("pg", "v", "ent", "kl", "clipfrac")}
            dev_sum, kl_sum, count = 0.0, 0.0, 0
            for task, ro in rollouts.items():
                obs = index_obs(ro.obs, (slice(None), mb))
                dist, values = agent.evaluate(task, obs, agent.select_state(agent.clone_state(state0[task]), mb),
                                              ro.starts[:, mb])
                a = ro.actions[:, mb].flatten(0, 1)
                logp = dist.log_prob(a)
                old_logp = ro.logp[:, mb].flatten()
                ratio = (logp - old_logp).exp()
                A = adv[task][:, mb].flatten()
                if p.norm_adv and A.numel() > 1:
                    A = (A - A.mean()) / (A.std() + 1e-8)
                pg = policy_loss(ratio, A, p.algo, p.clip_coef)
                vl = value_loss(values.flatten(), ro.values[:, mb].flatten(), ret[task][:, mb].flatten(),
                                p.clip_coef if p.clip_vloss else None)
                ent = dist.entropy().mean()
                losses[task] = pg + p.vf_coef * vl - p.ent_coef * ent
                with torch.no_grad():
                    dev = (ratio - 1).abs()
                    kl = (ratio - 1) - (logp - old_logp)
                    dev_sum, kl_sum, count = dev_sum + dev.sum().item(), kl_sum + kl.sum().item(), count + dev.numel()
                    dev_max = max(dev_max, dev.max().item())
                    step_stats["pg"].append(pg.item())
                    step_stats["v"].append(vl.item())
                    step_stats["ent"].append(ent.item())
                    step_stats["kl"].append(kl.mean().item())
                    step_stats["clipfrac"].append((dev > p.clip_coef).float().mean().item())
            stats["dev"].append(dev_sum / count)
            if steps and stop_early(p, dev_sum / count, kl_sum / count):
                stopped = True
                break
            for k, v in step_stats.items():
                stats[k] += v
            opt.zero_grad(set_to_none=True)
            for k, v in aggregate(losses, shared, aggregator).items():
                stats.setdefault(k, []).append(v)
            torch.nn.utils.clip_grad_norm_(params, p.max_grad_norm)
            opt.step()
            agent.balance_experts()
            steps += 1
        if stopped:
            break
    y_pred = torch.cat([ro.values.flatten() for ro in rollouts.values()])
    y_true = torch.cat([r.flatten() for r in ret.values()])
    return {"losses/policy_loss": float(np.mean(stats["pg"])), "losses/value_loss": float(np.mean(stats["v"])),
            "losses/entropy": float(np.mean(stats["ent"])), "losses/approx_kl": float(np.mean(stats["kl"])),
            "losses/clipfrac": float(np.mean(stats["clipfrac"])),
            "losses/explained_variance": explained_variance(y_pred, y_true),
            "losses/ratio_dev_mean": float(np.mean(stats["dev"])), "losses/ratio_dev_max": dev_max,
            "losses/ratio_dev_last": stats["dev"][-1], "losses/grad_steps": float(steps),
            "losses/epochs_used": steps / p.minibatches,
            **{f"multitask/{k}": float(np.mean(v)) for k, v in stats.items() if k.startswith(("weight/", "cosine"))}}


def load_agent(run_dir: str | Path) -> tuple[Agent, TrainRLConfig]:
    """The latest checkpointed agent of a run, with the run's config."""
    from chimera.config import load_preset

    run_dir = Path(run_dir)
    cfg = load_preset(TrainRLConfig, run_dir / "config.json")
    ckpt = Run.open(run_dir).checkpoints.load_latest()
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}/checkpoints has no loadable checkpoint")
    spaces, graphs = task_specs(cfg)
    agent = Agent(spaces, cfg.agent, graphs)
    agent.load_state_dict(ckpt["agent"])
    return agent.eval(), cfg
