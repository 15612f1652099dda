"""The `chimera` command: one subcommand per job, each with its own --help."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from chimera.config import ConfigError, parse_cli


@dataclass
class GenerateArgs:
    """Generate text from a checkpoint directory (HF NemotronH format, e.g. runs/<run>/model)."""

    checkpoint: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    """Checkpoint directory with config.json and safetensors."""
    prompt: str = "12+34="
    """The user's message (with --chat) or raw text (with --no-chat)."""
    chat: bool = True
    """Wrap the prompt in the chat template and stop at <eos>."""
    thinking: bool = True
    """With --chat: let the model think inside <think>...</think> first."""
    max_new_tokens: int = 128
    """Tokens to generate at most (the thinking segment and the answer together)."""
    temperature: float = 0.0
    """0 means greedy."""
    top_k: int = 0
    """Sample only among the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Sample only among the most likely tokens whose probabilities sum to p (1: all)."""
    seed: int = 0
    """Fixes the sampled tokens (the same seed, the same output)."""
    show_special: bool = False
    """Print special tokens such as <think> in the output."""
    thinking_budget: int = -1
    """Close the thinking segment after this many tokens (at the next newline within a 10% grace, or
    forced at its end); -1: no limit."""
    answer_budget: int = -1
    """Tokens allowed after </think> (-1: up to --max-new-tokens); works with or without --thinking-budget."""
    speculative: bool = False
    """Self-speculative decoding with the checkpoint's MTP layers, greedy or sampled as --temperature / --top-k /
    --top-p say (speculative sampling: the same distribution as without), with --thinking-budget too; prints
    acceptance and speed."""
    compile: bool = False
    """Decode on the fast path: static caches and a torch.compile'd step, or with --speculative one compiled
    graph per round (the first run compiles, 1-2 min; later runs reuse PyTorch's on-disk cache)."""


@dataclass
class ModelsArgs:
    """List the named model sizes with their total and active parameter counts (built on the meta device)."""

    name: str = ""
    """Show one size in full (its HF config.json)."""


@dataclass
class CLRSSampleArgs:
    """Print one sampled problem of a CLRS algorithm: its inputs, hints (per step) and outputs."""

    algorithm: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="ALGORITHM")]
    """An official CLRS-30 name, e.g. insertion_sort, bfs, kmp_matcher (chimera clrs list)."""
    n: int = 8
    """Problem size (nodes)."""
    seed: int = 0


@dataclass
class EnvsArgs:
    """List environment ids, or step one and print its steps/s: `chimera envs`, `chimera envs check ID`."""

    action: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="[list|check]")] = "list"
    """list, or check"""
    env_id: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="[ENV_ID]")] = ""
    """The id to check, e.g. minihack/Room-5x5."""
    family: str = ""
    """With list: only this family (gym, mujoco, minihack, nethack)."""
    steps: int = 2000
    """With check: random-action steps to time."""


@dataclass
class EvalRLArgs:
    """Play episodes with a trained agent and report return and success per environment."""

    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """A train-rl run folder."""
    episodes: int = 10
    seed: int = 10_000
    greedy: bool = False
    """Take the most likely action instead of sampling."""
    render: bool = False
    """Print the first episode as text in the terminal (NetHack / MiniHack and gym text modes)."""
    record: str = ""
    """Folder for GIFs of the first episode of every MuJoCo environment (rendered headless with EGL)."""


@dataclass
class ReportArgs:
    """Plot a run's metrics to PNGs and print the last value of each metric."""

    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """A folder under runs/."""


@dataclass
class PruneArgs:
    """Prune an HF NemotronH checkpoint by Minitron activation importance (width axes and depth); writes a
    checkpoint that transformers loads. Unset targets keep their axis."""

    checkpoint: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    """Checkpoint directory with config.json and safetensors."""
    out: str
    """Directory for the pruned checkpoint (config.json, safetensors, tokenizer files, prune.json)."""
    hidden_size: int | None = None
    ffn_size: int | None = None
    """MLP (-) layers' intermediate size."""
    attention_heads: int | None = None
    """Query heads per attention layer (a multiple of num_key_value_heads; KV heads stay)."""
    mamba_heads: int | None = None
    """Mamba heads per layer (a multiple of n_groups)."""
    mamba_head_dim: int | None = None
    experts: int | None = None
    """Routed experts per MoE layer."""
    moe_ffn_size: int | None = None
    """Each routed expert's intermediate size."""
    shared_expert_size: int | None = None
    drop_layers: int = 0
    """Remove this many layers of the main stack, the least important by --depth-metric."""
    drop_mtp: bool = False
    """Remove the MTP layers instead of pruning them like the main stack."""
    depth_metric: Literal["cosine", "loss"] = "cosine"
    """cosine: 1 - cos(layer input, output); loss: calibration LM loss with the layer removed."""
    calib_task: str = ""
    """Synthetic task(s) for calibration, comma-separated (e.g. add,sort); packed chat examples."""
    calib_file: str = ""
    """A text file, tokenised with the checkpoint's tokenizer."""
    calib_ids: str = ""
    """A .npy array of token ids, (N, L) or flat."""
    calib_samples: int = 64
    """Calibration sequences."""
    calib_seq_len: int = 96
    """Tokens per calibration sequence (for --calib-task, --calib-file and flat --calib-ids)."""
    seed: int = 0


@dataclass
class CompressArgs:
    """MiniPuzzle-style search: enumerate pruned shapes of a checkpoint that fit a budget, score the largest
    few (one per depth first) by a short distillation, distil the winner; writes OUT/model (an HF NemotronH
    checkpoint) and OUT/search.{json,md} (every candidate's sizes and held-out scores)."""

    checkpoint: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    """The teacher: a checkpoint directory with config.json and safetensors."""
    out: str
    target_params: int | None = None
    """Total parameters at most."""
    target_active_params: int | None = None
    """Parameters per token (routed experts a token does not use left out) at most."""
    target_memory: float | None = None
    """GiB of weights plus one sequence's KV cache and Mamba state at --context tokens, in --dtype."""
    target_decode_ms: float | None = None
    """Milliseconds per greedy decode step of one sequence, timed here on the inference engine."""
    context: int = 4096
    dtype: Literal["fp32", "bf16", "fp16", "fp8"] = "bf16"
    keep: int = 4
    """Candidates scored."""
    score_steps: int = 50
    """Distillation steps per candidate."""
    distill_steps: int = 300
    """Distillation steps for the winner."""
    max_width_pruning: float = 0.5
    """Search widths down to this fraction pruned."""
    max_depth_pruning: float = 0.5
    """Search down to this fraction of the layers dropped."""
    depth_metric: Literal["cosine", "loss"] = "cosine"
    calib_task: str = "add,sort"
    calib_file: str = ""
    calib_ids: str = ""
    calib_samples: int = 64
    calib_seq_len: int = 96
    tasks: tuple[str, ...] = ("add", "sort")
    """Distillation data: synthetic tasks, as train-lm --data.tasks."""
    seq_len: int = 96
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 20
    eval_samples: int = 64
    """Held-out problems answered at each evaluation."""
    temperature: float = 1.0
    top_k: int = 0
    threads: int = 0
    seed: int = 0


def _run_resumable(cls, argv: list[str], prog: str, about: str, run) -> int:
    """The training commands: ``cls`` from flags (and ``--preset``), then ``run(cfg, resume=...)``."""
    cfg, flags = parse_cli(cls, argv, prog=prog, preset_flags=("--preset", "--resume"), description=about)
    run(cfg, resume=flags.get("--resume"))
    return 0


def cmd_train_lm(argv: list[str]) -> int:
    from chimera.train.lm import TrainLMConfig, train

    return _run_resumable(TrainLMConfig, argv, "chimera train-lm",
                          "Train a hybrid Mamba/attention/MoE language model on synthetic reasoning tasks.", train)


def cmd_post_train(argv: list[str]) -> int:
    from chimera.posttrain.train import PostTrainConfig, train

    return _run_resumable(PostTrainConfig, argv, "chimera post-train",
                          "Post-train a hybrid LM with RL on several environments at once (GRPO, Dr.GRPO, DAPO, "
                          "GSPO, ESPO; presets configs/posttrain*.json).", train)


def cmd_train_rl(argv: list[str]) -> int:
    from chimera.rl.train import TrainRLConfig, train_rl

    # ends with the per-environment table and the plot paths; a resumed run's episodes restart
    return _run_resumable(TrainRLConfig, argv, "chimera train-rl",
                          "Train one agent on a mix of environments with PPO or ESPO (losses summed across "
                          "environments).", train_rl)


def cmd_eval_rl(argv: list[str]) -> int:
    from chimera.rl.evaluate import evaluate_agent

    args = tyro.cli(EvalRLArgs, args=argv, prog="chimera eval-rl")
    results = evaluate_agent(args.run_dir, args.episodes, args.seed, args.greedy, args.render, args.record or None)
    print(f"{'environment':<32}{'episodes':>9}{'return':>10}{'success':>10}")
    for task, r in results.items():  # '-': the environment has no notion of success (as in training's table)
        success = "-" if math.isnan(r["success"]) else f"{r['success']:.2f}"
        print(f"{task:<32}{r['episodes']:>9}{r['return']:>10.2f}{success:>10}")
    for task, r in results.items():
        if "recording" in r:
            print(f"recorded {task}: {r['recording']}")
    return 0


def cmd_envs(argv: list[str]) -> int:
    import time

    from chimera.envs import list_ids, make

    args = tyro.cli(EnvsArgs, args=argv, prog="chimera envs")
    if args.action == "list":
        for env_id in list_ids(args.family or None):
            print(env_id)
        return 0
    if args.action != "check" or not args.env_id:
        raise ConfigError("usage: chimera envs [list] | chimera envs check ENV_ID")
    env = make(args.env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    t0, episodes = time.perf_counter(), 0
    for _ in range(args.steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            episodes += 1
            env.reset()
    dt = time.perf_counter() - t0
    print(f"{args.env_id}: {args.steps / dt:,.0f} steps/s with random actions ({episodes} episodes), "
          f"observation {env.observation_space}, actions {env.action_space}")
    env.close()
    return 0


CLRS_USAGE = """usage: chimera clrs {train,sample,list} [ARGS...]

CLRS-30 algorithmic reasoning: the 30 instrumented algorithms and encode-process-decode learners.
  chimera clrs list                      the 30 algorithms by family
  chimera clrs sample ALGO [--n N]       print one sampled problem with its hints and outputs
  chimera clrs train [OPTIONS]           train MPNN / PGN / Triplet-GMPNN on one or more algorithms
Run `chimera clrs train --help` or `chimera clrs sample --help` for options."""


def cmd_clrs(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(CLRS_USAGE)
        raise SystemExit(0)  # as argparse does for --help
    action, rest = argv[0], argv[1:]
    if action == "list":
        from chimera.clrs.specs import FAMILIES

        for family, algos in FAMILIES.items():
            print(f"{family:<22} {', '.join(algos)}")
        return 0
    if action == "sample":
        import numpy as np

        from chimera.clrs.samplers import Sampler

        args = tyro.cli(CLRSSampleArgs, args=rest, prog="chimera clrs sample")
        probes = Sampler(args.algorithm, args.n, 1, args.seed)._data[0]
        np.set_printoptions(precision=3, suppress=True, linewidth=120)
        for stage in ("input", "hint", "output"):
            for loc, feats in probes[stage].items():
                for name, f in feats.items():
                    shape = "x".join(map(str, f["data"].shape))
                    print(f"-- {stage} {loc} {name} ({f['type_']}, {shape})\n{f['data']}")
        return 0
    if action == "train":
        from chimera.clrs.train import TrainCLRSConfig, train_clrs

        return _run_resumable(TrainCLRSConfig, rest, "chimera clrs train",
                              "Train an encode-process-decode learner (MPNN, PGN or Triplet-GMPNN) on CLRS algorithms; "
                              "several algorithms share one processor. Ends with validation (n=16) and out-of-"
                              "distribution test (n=64) scores.", train_clrs)
    raise ConfigError(f"unknown clrs action {action!r}\n\n{CLRS_USAGE}")


def cmd_generate(argv: list[str]) -> int:
    import torch

    from chimera.inference import SamplingConfig, ThinkingBudget, generate, speculative_generate
    from chimera.tokenizer import Message

    args = tyro.cli(GenerateArgs, args=argv, prog="chimera generate")
    model, tok = _load_lm(args.checkpoint)
    if args.chat:
        text = tok.apply_chat_template([Message("user", args.prompt)], enable_thinking=args.thinking)
    else:
        text = args.prompt
    if not args.prompt.strip():
        raise ConfigError("--prompt is empty; give the text to answer (with --chat) or to continue (--no-chat)")
    torch.manual_seed(args.seed)
    stops = (tok.eos_id,) if args.chat else ()
    prompt = tok.encode(text)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, stop_tokens=stops, seed=args.seed)
    try:
        sampler = sampling.sampler()
    except ValueError as e:
        raise ConfigError(f"{e}: check --temperature, --top-k and --top-p") from None
    budget = None
    if args.thinking_budget >= 0 or args.answer_budget >= 0:
        budget = ThinkingBudget(args.thinking_budget if args.thinking_budget >= 0 else None, tok.token_id("<think>"),
                                tok.token_id("</think>"), tok.newline_ids,
                                max_answer_tokens=args.answer_budget if args.answer_budget >= 0 else None)
    if args.compile:
        print("compiling the decode step (the first time about 2 min; cached on disk after, 20-30 s to load)...",
              file=sys.stderr, flush=True)
    show = _Shower(tok, thinking=args.chat and args.thinking, show_special=args.show_special)
    if args.speculative:
        if not model.config.mtp_depths:
            raise ConfigError(f"{args.checkpoint} has no MTP layers (num_nextn_predict_layers=0); "
                              f"drop --speculative or train with an MTP pattern such as 'MEM*ME/*E/*E'")
        out, stats = speculative_generate(model, prompt, args.max_new_tokens, stops, compile=args.compile,
                                          sampler=sampler, seed=args.seed, budget=budget)
        show(out)
        print(f"[speculative: {stats.rounds} rounds, acceptance {stats.acceptance_rate:.2f}, "
              f"{len(out) / max(stats.seconds, 1e-9):.1f} tok/s{' including compilation' if args.compile else ''}]",
              file=sys.stderr)
        return 0
    out = generate(model, [prompt], sampling, budget=budget, compile=args.compile)[0]
    show(out)
    return 0


@dataclass
class _Shower:
    """Prints a generation: with thinking, the trace and the answer apart (labelled; the trace dimmed on a
    terminal), as chat front ends show them; with ``show_special``, every token as it came."""

    tok: object
    thinking: bool
    show_special: bool

    def __call__(self, out: list[int]) -> None:
        tok = self.tok
        if self.show_special:
            print(("<think>" if self.thinking else "") + tok.decode(out, skip_special=False))
            return
        if not self.thinking:
            print(tok.decode(out, skip_special=True))
            return
        end = tok.token_id("</think>")
        i = out.index(end) if end in out else len(out)
        trace, answer = tok.decode(out[:i], skip_special=True).strip(), tok.decode(out[i + 1:], skip_special=True)
        dim, reset = ("\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "")
        print(f"{dim}thinking: {trace}{reset}")
        print(f"answer: {answer.strip()}" if end in out else
              "answer: (none: the thinking did not end within --max-new-tokens; raise it or set --thinking-budget)")


def _load_lm(checkpoint: str, device: str = "cpu"):
    """A checkpoint directory's model and tokenizer, checked to belong together."""
    from chimera.models import HybridLM
    from chimera.tokenizer import load_tokenizer

    model = HybridLM.from_pretrained(checkpoint, device=device)
    tok = load_tokenizer(checkpoint)
    if model.config.vocab_size < tok.vocab_size:
        raise ConfigError(f"{checkpoint} has vocab_size={model.config.vocab_size}, smaller than its "
                          f"tokenizer's {tok.vocab_size}; the checkpoint and tokenizer do not belong together")
    return model, tok


def cmd_serve(argv: list[str]) -> int:
    from chimera.serve.config import ServeConfig

    cfg = tyro.cli(ServeConfig, args=argv, prog="chimera serve")
    try:
        from chimera.serve.app import serve
    except ImportError as e:
        raise ConfigError(f"chimera serve needs the serve extra ({e.name} is not installed): "
                          f"pip install 'chimera[serve]'") from None
    model, tok = _load_lm(cfg.checkpoint, cfg.torch_device())
    serve(model, tok, cfg)
    return 0


def cmd_models(argv: list[str]) -> int:
    import json

    from chimera.models import SIZES, count_parameters, get_config

    args = tyro.cli(ModelsArgs, args=argv, prog="chimera models")
    if args.name:
        print(json.dumps(get_config(args.name).to_hf_dict(), indent=2, sort_keys=True))
        return 0
    print(f"{'name':<26}{'layers':>7}{'attn %':>8}{'total':>12}{'active':>12}  pattern")
    for name in SIZES:
        cfg = get_config(name)
        n = count_parameters(cfg)
        pat = cfg.pattern if len(cfg.pattern) <= 40 else cfg.pattern[:37] + "..."
        print(f"{name:<26}{cfg.num_layers:>7}{100 * n['attention_fraction']:>7.1f}%"
              f"{_human(n['total']):>12}{_human(n['active']):>12}  {pat}")
    return 0


def cmd_report(argv: list[str]) -> int:
    from chimera.runs import plot_metrics, read_metrics

    args = tyro.cli(ReportArgs, args=argv, prog="chimera report")
    run = Path(args.run_dir)
    rows = read_metrics(run / "metrics.jsonl")
    if not rows:
        raise ConfigError(f"{run / 'metrics.jsonl'} is missing or empty; is {run} a run directory?")
    last: dict[str, tuple[int, float]] = {}
    for r in rows:
        for k, v in r.items():
            if k not in ("step", "time"):
                last[k] = (int(r["step"]), v)
    width = max(map(len, last)) + 2  # long metric names (charts/episodic_return/minihack/...) stay aligned
    for k in sorted(last):
        print(f"{k:<{width}} {last[k][1]:>12.4f}  (step {last[k][0]})")
    for p in plot_metrics(run / "metrics.jsonl", run / "plots"):
        print(f"wrote {p}")
    return 0


def cmd_prune(argv: list[str]) -> int:
    from chimera.compress.prune import Targets, prune_checkpoint

    args = tyro.cli(PruneArgs, args=argv, prog="chimera prune")
    targets = Targets(**{k: getattr(args, k) for k in Targets.__dataclass_fields__})
    calib = dict(task=args.calib_task, file=args.calib_file, ids=args.calib_ids, samples=args.calib_samples,
                 seq_len=args.calib_seq_len, seed=args.seed)
    prune_checkpoint(args.checkpoint, args.out, targets, calib=calib, depth_metric=args.depth_metric)
    return 0


def cmd_distill(argv: list[str]) -> int:
    from chimera.compress.distill import DistillConfig, distill

    return _run_resumable(DistillConfig, argv, "chimera distill",
                          "Distil --teacher CHECKPOINT into --student (a checkpoint, e.g. from chimera prune, or a "
                          "named size) by logit KL on the train-lm loop and data.", distill)


def cmd_flagship(argv: list[str]) -> int:
    from chimera.config import parse_cli
    from chimera.flagship import FlagshipConfig, run_flagship

    cfg, _ = parse_cli(FlagshipConfig, argv, prog="chimera flagship", description=FlagshipConfig.__doc__)
    run_flagship(cfg)
    return 0


def cmd_compress(argv: list[str]) -> int:
    from chimera.compress.search import Budget, SearchConfig, search

    a = tyro.cli(CompressArgs, args=argv, prog="chimera compress")
    budget = Budget(params=a.target_params, active_params=a.target_active_params, memory_gib=a.target_memory,
                    decode_ms=a.target_decode_ms, context=a.context, dtype=a.dtype)
    calib_given = a.calib_file or a.calib_ids
    calib = dict(task="" if calib_given else a.calib_task, file=a.calib_file, ids=a.calib_ids,
                 samples=a.calib_samples, seq_len=a.calib_seq_len, seed=a.seed)
    steps = max(a.score_steps, a.distill_steps)
    distill = {"temperature": a.temperature, "top_k": a.top_k,
               "optim": {"lr": a.lr, "warmup_steps": min(a.warmup_steps, steps)},
               "data": {"tasks": list(a.tasks), "seq_len": a.seq_len, "batch_size": a.batch_size},
               "run": {"eval_every": steps, "eval_samples": a.eval_samples, "ckpt_every": steps,
                       "log_every": 10, "threads": a.threads, "seed": a.seed}}
    search(a.checkpoint, a.out, budget, calib,
           SearchConfig(keep=a.keep, score_steps=a.score_steps, distill_steps=a.distill_steps,
                        max_width_pruning=a.max_width_pruning, max_depth_pruning=a.max_depth_pruning,
                        depth_metric=a.depth_metric, distill=distill))
    return 0


NETHACK_USAGE = """usage: chimera nethack ACTION [OPTIONS]

  chimera nethack eval [OPTIONS]   play games under the NetHack Challenge's rules; median score, depths, ends

Agents: random, symbolic (chimera.nethack: strategies with entry conditions and preemption).
Example: chimera nethack eval --agent symbolic --episodes 64 --workers 2 --out nethack.json
Run `chimera nethack eval --help` for options."""


def cmd_nethack(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(NETHACK_USAGE)
        raise SystemExit(0)
    action, rest = argv[0], argv[1:]
    if action == "eval":
        import json

        from chimera.nethack.evaluate import EvalArgs, evaluate

        args = tyro.cli(EvalArgs, args=rest, prog="chimera nethack eval")
        res = evaluate(args.agent, args.episodes, args.workers, args.env, args.seed, out=args.out or None,
                       log=lambda s, end="\n": print(s, end=end, file=sys.stderr, flush=True))
        print(json.dumps(res["summary"], indent=1))
        return 0
    raise ConfigError(f"unknown nethack action {action!r}\n\n{NETHACK_USAGE}")


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


COMMANDS = {
    "train-rl": (cmd_train_rl, "train one agent on a mix of environments with PPO or ESPO"),
    "eval-rl": (cmd_eval_rl, "play episodes with a trained agent; return and success per environment"),
    "envs": (cmd_envs, "list environment ids, or step one and print its steps/s"),
    "clrs": (cmd_clrs, "CLRS-30: list / sample algorithms, train MPNN / PGN / Triplet-GMPNN learners"),
    "train-lm": (cmd_train_lm, "train a hybrid LM on synthetic reasoning tasks (presets in configs/)"),
    "post-train": (cmd_post_train, "post-train an LM with multi-environment RL (GRPO / DAPO / GSPO / ESPO)"),
    "generate": (cmd_generate, "generate text from a checkpoint directory, with or without thinking"),
    "serve": (cmd_serve, "serve a checkpoint over an OpenAI-compatible API (chat, completions, streaming)"),
    "models": (cmd_models, "list named model sizes and their parameter counts"),
    "prune": (cmd_prune, "prune a checkpoint by Minitron activation importance (width, depth, experts)"),
    "distill": (cmd_distill, "distil a teacher checkpoint into a student by logit KL (train-lm loop)"),
    "compress": (cmd_compress, "search pruned shapes under a parameter / memory budget, distil the best"),
    "flagship": (cmd_flagship, "the whole recipe: pretrain, SFT, multi-env RL, prune + distil, serving checks"),
    "nethack": (cmd_nethack, "NetHack Challenge evaluation of the random / symbolic agents (median score)"),
    "report": (cmd_report, "plot a run's metrics and print their last values"),
}


def usage() -> str:
    lines = ["usage: chimera COMMAND [ARGS...]", "",
             "Hybrid Mamba-Transformer MoE models (HF NemotronH), training and inference at laptop scale.", "",
             "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "Run `chimera COMMAND --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"chimera: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[name][0](rest)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        rank = int(os.environ.get("RANK", "0"))  # under torchrun
        if rank == 0:
            print(f"chimera {name}: error: {e}", file=sys.stderr)
        elif not isinstance(e, ConfigError):  # a bad config fails alike on every rank: rank 0 said it
            print(f"chimera {name} (rank {rank}): error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"chimera {name}: {_interrupted(name, rest)}", file=sys.stderr)
        return 130


def _interrupted(name: str, rest: list[str]) -> str:
    """One line for Ctrl-C: the step reached, the last checkpoint and the command that resumes."""
    from chimera.runs import Run

    run = Run.active
    if run is None:
        return "interrupted"
    rows = run.metrics()
    ckpts = run.checkpoints.list()
    at = f" at step {int(rows[-1]['step'])}" if rows else ""
    if not ckpts:
        return f"interrupted{at}; {run.path} has no checkpoint yet, so a new run starts over"
    sub = rest[:1] if name == "clrs" else []  # clrs train
    command = " ".join(["chimera", name, *sub, "--resume", str(run.path)])
    return f"interrupted{at}; last checkpoint {ckpts[-1]}; continue with: {command}"


if __name__ == "__main__":
    sys.exit(main())
