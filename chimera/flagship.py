"""The flagship pipeline: the Nemotron 3 recipe in miniature on one small hybrid Mamba-Transformer MoE model.

Stages, each in its own subdirectory of one pipeline directory, each calling the library (not the CLI):

  pretrain  chimera.train.lm on packed synthetic corpora (loss on every token)
  sft       chimera.train.lm on reasoning traces with budget-control data (thinking off, traces cut short)
  rl        chimera.posttrain: SFT on solver demonstrations of the environments new to the model, then
            multi-environment RL (reasoning, CLRS as text, calculator tool use, a MiniHack game, JSON)
  compress  chimera.compress.prune (Minitron importance) to a smaller student, then logit-KL distillation
            from the RL model on the environments' demonstrations (MTP layers trained alongside)
  serve     decoding with a thinking budget (accuracy at 0/25/50/100% of each problem's natural trace
            length) and speculative decoding on the student's MTP layers (decode tokens/s, plain vs speculative)

A stage writes ``stage.json`` when it is complete; a rerun reuses it. A stage interrupted mid-way resumes
from its last checkpoint where the library can (train-lm, post-train, distillation); the others restart.
After each stage one line per environment gives the held-out success (chimera.posttrain.train.evaluate:
greedy episodes on held-out problems); at the end one table, stage x environment, with parameters and
decode speed, written to ``<dir>/flagship.json`` (and ``run.results``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from chimera.compress.prune import Targets
from chimera.config import to_dict
from chimera.posttrain.train import PostTrainConfig
from chimera.train.lm import DataConfig, TrainLMConfig
from chimera.train.lm import RunConfig as LMRunConfig

STAGES = ("pretrain", "sft", "rl", "compress", "serve")
ENVS = ("reasoning/add", "clrs/insertion_sort", "tools/calculator", "game/Room-5x5", "json/sort")


def _lm(steps: int, mode: str, **data) -> TrainLMConfig:
    return TrainLMConfig(model="tiny-mtp", steps=steps, data=DataConfig(mode=mode, **data),
                         run=LMRunConfig(name=mode, eval_every=steps, eval_samples=32, ckpt_every=50, log_every=25))


@dataclass
class CompressOptions:
    """Pruning targets and the distillation that follows (chimera.compress)."""

    targets: Targets = field(default_factory=lambda: Targets(hidden_size=48, experts=4, moe_ffn_size=24))
    """Pruned sizes (chimera prune's axes); unset axes stay."""
    calib_task: str = "add,sort"
    """Synthetic tasks whose packed examples rank the channels, heads, experts and layers."""
    calib_samples: int = 64
    distill_steps: int = 300
    """Distillation steps (logit KL to the RL model on demonstrations of every environment)."""
    batch_size: int = 16
    lr: float = 2e-3
    temperature: float = 1.0
    mtp_weight: float = 0.5
    """Weight of the MTP layers' next-tokens cross-entropy (they draft for speculative decoding)."""
    log_every: int = 25
    ckpt_every: int = 50


@dataclass
class ServeOptions:
    """The serving checks on the student (and the RL model, for reference)."""

    budget_problems: int = 32
    """Held-out reasoning problems for accuracy vs thinking budget."""
    budget_fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    """Thinking budgets as fractions of each problem's natural (reference) trace length."""
    speed_prompts: int = 8
    """Held-out prompts decoded one at a time, greedy, plain and speculative."""
    max_new_tokens: int = 64


@dataclass
class FlagshipRunOptions:
    out_dir: str = "runs/flagship"
    """The pipeline directory: one subdirectory per stage; an existing one is resumed."""
    results: str = ""
    """Also write the final table here (e.g. results/demo.json)."""
    threads: int = 1
    """torch CPU threads for every stage (tiny models gain nothing from more)."""
    eval_problems: int = 16
    """Held-out problems per environment in each stage's evaluation."""
    seed: int = 0
    plots: bool = True


@dataclass
class FlagshipConfig:
    """Run the Nemotron 3 recipe in miniature end to end: pretrain -> SFT (reasoning traces, budget control)
    -> multi-environment RL -> prune + distil -> serving checks (thinking budget, speculative decoding).
    Each stage writes into its own subdirectory of --run.out-dir; rerunning with the same directory
    reuses finished stages and resumes an interrupted one from its last checkpoint."""

    model: str = "tiny-mtp"
    """A named size with MTP layers (speculative decoding drafts with them): see `chimera models`."""
    envs: tuple[str, ...] = ENVS
    """Post-training environments (chimera.posttrain.envs.list_ids), evaluated after every stage."""
    pretrain: TrainLMConfig = field(default_factory=lambda: _lm(400, "pretrain", tasks=("add", "sort", "isort")))
    sft: TrainLMConfig = field(default_factory=lambda: _lm(300, "sft", tasks=("add", "sort"), thinking_off=0.2,
                                                            thinking_cut=0.2))
    rl: PostTrainConfig = field(default_factory=PostTrainConfig)
    """post-train's options; its model and envs are set by the pipeline."""
    compress: CompressOptions = field(default_factory=CompressOptions)
    serve: ServeOptions = field(default_factory=ServeOptions)
    run: FlagshipRunOptions = field(default_factory=FlagshipRunOptions)

    def validate(self) -> None:
        from chimera.models.config import SIZES
        from chimera.posttrain.envs import list_ids

        if self.model not in SIZES:
            raise ValueError(f"model={self.model!r} is not a named size ({', '.join(SIZES)})")
        if not SIZES[self.model]().mtp_depths:
            raise ValueError(f"model={self.model!r} has no MTP layers, so the serving stage cannot decode "
                             f"speculatively; pick one with MTP such as tiny-mtp or small-mtp")
        for e in self.envs:
            if e not in list_ids():
                raise ValueError(f"envs has unknown id {e!r}; known ids: {', '.join(list_ids())}")
        if not any(e.startswith("reasoning/") for e in self.envs):
            raise ValueError("envs needs a reasoning/* environment (the thinking-budget check uses its task)")
        for name in ("distill_steps", "batch_size"):
            if getattr(self.compress, name) <= 0:
                raise ValueError(f"compress.{name}={getattr(self.compress, name)} must be positive")
        if self.compress.targets.drop_mtp:
            raise ValueError("compress.targets.drop_mtp=True leaves the student without MTP layers; speculative "
                             "decoding in the serving stage needs them (set it False)")
        if self.run.eval_problems <= 0:
            raise ValueError(f"run.eval_problems={self.run.eval_problems} must be positive")
        bad = [f for f in self.serve.budget_fractions if f < 0]
        if bad:
            raise ValueError(f"serve.budget_fractions has negative fractions {bad}; use 0 (no thinking) to 1 (full)")


def _fmt_env_line(stage: str, acc: dict[str, float]) -> str:
    return f"[{stage}] held-out " + "  ".join(f"{e} {v:.3f}" for e, v in acc.items())


class Pipeline:
    """One pipeline directory and its stages; ``run()`` runs what is not finished yet."""

    def __init__(self, cfg: FlagshipConfig, log=print):
        self.cfg = cfg
        self.dir = Path(cfg.run.out_dir)
        self.log = log
        self.t0 = time.time()

    # ---- bookkeeping -------------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.dir / stage

    def options(self, stage: str) -> dict:
        """The options a stage's output depends on (besides the stages before it)."""
        c = self.cfg
        own = {"pretrain": {"model": c.model, **to_dict(c.pretrain)}, "sft": to_dict(c.sft),
               "rl": {"envs": list(c.envs), **to_dict(c.rl)}, "compress": to_dict(c.compress),
               "serve": to_dict(c.serve)}[stage]
        return json.loads(json.dumps({**own, "eval_problems": c.run.eval_problems, "seed": c.run.seed}))

    def effective_options(self) -> dict:
        """The options as the stages use them: the pipeline sets the stages' own model and envs fields."""
        d = to_dict(self.cfg)
        d["pretrain"]["model"] = self.cfg.model
        d["sft"]["model"] = f"the pretrain stage's model ({self.stage_dir('pretrain') / 'stage.json'}: model)"
        d["rl"]["model"] = f"the sft stage's model ({self.stage_dir('sft') / 'stage.json'}: model)"
        d["rl"]["envs"] = list(self.cfg.envs)
        return d

    def done(self, stage: str) -> dict | None:
        """A finished stage's summary (None if it has not finished); a stage finished with other options is refused."""
        p = self.stage_dir(stage) / "stage.json"
        if not p.exists():
            return None
        summary = json.loads(p.read_text())
        if summary.get("options") != self.options(stage):
            raise ValueError(f"stage {stage} in {self.dir} was finished with other options than these; reuse needs "
                             f"the same ones (see {p}): pick a new --run.out-dir, or delete {self.stage_dir(stage)} "
                             f"and the stages after it to redo them")
        return summary

    def _finish(self, stage: str, summary: dict, seconds: float) -> dict:
        summary = {"stage": stage, "seconds": round(seconds, 1), **summary, "options": self.options(stage)}
        p = self.stage_dir(stage) / "stage.json"
        p.write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _run_dir(self, stage: str) -> Path | None:
        """The library run folder inside a stage directory (Run.create names it <stage>-<time>)."""
        found = sorted(p for p in self.stage_dir(stage).glob(f"{stage}-*") if (p / "config.json").exists())
        return found[-1] if found else None

    # ---- evaluation --------------------------------------------------------------------------------
    def _eval_cfg(self) -> PostTrainConfig:
        c = self.cfg
        return replace(c.rl, envs=tuple(c.envs), run=replace(c.rl.run, eval_problems=c.run.eval_problems))

    def evaluate(self, model_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
        """Held-out success per environment of a checkpoint (post-train's evaluator), and the random policy's
        success on the game levels."""
        from chimera.models import HybridLM
        from chimera.posttrain.train import EnvPool
        from chimera.posttrain.train import evaluate as evaluate_envs
        from chimera.tokenizer import load_tokenizer

        model = HybridLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        tok = load_tokenizer(model_dir)
        pool = EnvPool()
        t = time.time()
        m = evaluate_envs(model, tok, self._eval_cfg(), pool)
        pool.close()
        self.log(f"evaluated {model_dir} on {len(self.cfg.envs)} x {self.cfg.run.eval_problems} held-out problems "
                 f"in {time.time() - t:.0f} s")
        return _split_eval(m, self.cfg.envs)

    @staticmethod
    def params(model_dir: Path) -> dict[str, int]:
        from chimera.models import count_parameters
        from chimera.models.config import HybridConfig

        c = count_parameters(HybridConfig.load(Path(model_dir) / "config.json"))
        return {"total": c["total"], "active": c["active"]}

    # ---- stages ------------------------------------------------------------------------------------
    def _train_lm(self, stage: str, cfg: TrainLMConfig) -> Path:
        from chimera.train.lm import train

        cfg = replace(cfg, run=replace(cfg.run, name=stage, out_dir=str(self.stage_dir(stage)),
                                       threads=self.cfg.run.threads, seed=self.cfg.run.seed,
                                       plots=self.cfg.run.plots))
        cfg.validate()
        prior = self._run_dir(stage)
        if prior is not None:
            self.log(f"[{stage}] resuming {prior} from its last checkpoint")
        run = train(cfg, resume=str(prior) if prior else None, log=self.log)
        return run.path

    def stage_pretrain(self) -> dict:
        path = self._train_lm("pretrain", replace(self.cfg.pretrain, model=self.cfg.model))
        return self._lm_summary(path)

    def stage_sft(self) -> dict:
        start = Path(self.done("pretrain")["model"])
        path = self._train_lm("sft", replace(self.cfg.sft, model=str(start)))
        return self._lm_summary(path)

    def _lm_summary(self, path: Path) -> dict:
        from chimera.runs import read_metrics

        rows = read_metrics(path / "metrics.jsonl")
        lm_eval = {k.removeprefix("eval/"): v for r in rows for k, v in r.items() if k.startswith("eval/")}
        acc, random_policy = self.evaluate(path / "model")
        return {"model": str(path / "model"), "run": str(path), "accuracy": acc, "random_policy": random_policy,
                "lm_eval": lm_eval, "params": self.params(path / "model"), "plots": _plots(path)}

    def stage_rl(self) -> dict:
        from chimera.posttrain.train import train
        from chimera.runs import read_metrics

        c = self.cfg
        start = self.done("sft")["model"]
        cfg = replace(c.rl, model=start, envs=tuple(c.envs),
                      run=replace(c.rl.run, name="rl", out_dir=str(self.stage_dir("rl")), threads=c.run.threads,
                                  seed=c.run.seed, eval_problems=c.run.eval_problems, plots=c.run.plots))
        cfg.validate()
        prior = self._run_dir("rl")
        if prior is not None:
            self.log(f"[rl] resuming {prior} from its last checkpoint")
        run = train(cfg, resume=str(prior) if prior else None, log=self.log)
        rows = read_metrics(run.path / "metrics.jsonl")
        evals = [r for r in rows if any(k.startswith("eval/pass_rate/") for k in r)]
        first = next(r for r in evals if r["step"] == 0)  # after the demonstrations' SFT, before RL
        last = evals[-1]
        start_acc, random_policy = _split_eval(first, c.envs)
        acc, _ = _split_eval(last, c.envs)
        return {"model": str(run.path / "model"), "run": str(run.path), "accuracy": acc,
                "accuracy_before_rl": start_acc, "random_policy": random_policy,
                "params": self.params(run.path / "model"), "plots": _plots(run.path)}

    def stage_compress(self) -> dict:
        from chimera.compress.prune import prune_checkpoint

        c, d = self.cfg.compress, self.stage_dir("compress")
        teacher = Path(self.done("rl")["model"])
        pruned = d / "pruned"
        if not (pruned / "prune.json").exists():
            calib = dict(task=c.calib_task, file="", ids="", samples=c.calib_samples, seq_len=96,
                         seed=self.cfg.run.seed)
            prune_checkpoint(teacher, pruned, c.targets, calib=calib, log=self.log)
        run_path = self._distill(teacher, pruned, d / "distill")
        acc, random_policy = self.evaluate(run_path / "model")
        return {"model": str(run_path / "model"), "run": str(run_path), "pruned": str(pruned),
                "accuracy": acc, "random_policy": random_policy, "params": self.params(run_path / "model"),
                "teacher_params": self.params(teacher), "plots": _plots(run_path)}

    def _distill(self, teacher_dir: Path, student_dir: Path, out: Path) -> Path:
        """Logit-KL distillation of the RL model into the pruned student on demonstrations of every environment
        (chimera.posttrain.sft's batches, chimera.compress.distill's loss), resumable from its checkpoints."""
        from chimera.compress.distill import LogitKL
        from chimera.models import HybridLM
        from chimera.posttrain.envs import make
        from chimera.posttrain.sft import sft_batch
        from chimera.runs import Run, plot_metrics, rng_state, seed_everything, set_rng_state
        from chimera.tokenizer import load_tokenizer
        from chimera.train.lm import mtp_loss

        c, rl = self.cfg.compress, self.cfg.rl
        seed_everything(self.cfg.run.seed)
        teacher = HybridLM.from_pretrained(teacher_dir, dtype=torch.float32).eval().requires_grad_(False)
        student = HybridLM.from_pretrained(student_dir, dtype=torch.float32).train()
        tok = load_tokenizer(student_dir)
        envs = {e: make(e) for e in self.cfg.envs}
        weights = rl.env_weights or (1.0,) * len(envs)
        objective = LogitKL(teacher, c.temperature)
        opt = torch.optim.AdamW(student.param_groups(0.0), lr=c.lr, betas=(0.9, 0.95))
        fresh = not (out / "config.json").exists()
        run = Run(out)
        if fresh:
            (out / "config.json").write_text(json.dumps({"teacher": str(teacher_dir), "student": str(student_dir),
                                                         **to_dict(c)}, indent=2) + "\n")
        state, _ = run.checkpoints.load_newest()
        start = 0
        if state is not None:
            student.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
            start = state["step"]
            self.log(f"[compress] resumed distillation at step {start}")
        run.truncate_metrics(start)
        t_start, t0, tokens = time.time(), time.time(), 0
        for step in range(start, c.distill_steps):
            lr = c.lr * 0.5 * (1 + math.cos(math.pi * step / c.distill_steps))
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = sft_batch(envs, weights, tok, c.batch_size, rl.curriculum.pool_size, self.cfg.run.seed,
                             step, rl.rollout.thinking)
            out_ = student(x, return_mtp=True)
            kl = objective(x, y, out_)
            loss = kl
            mtp = None
            if out_.mtp_logits:
                mtp = mtp_loss(out_.mtp_logits, y)
                loss = loss + c.mtp_weight * mtp
            if out_.aux_loss is not None:
                loss = loss + out_.aux_loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            student.update_moe_bias()
            tokens += int((y != -100).sum())
            done = step + 1
            if done % c.log_every == 0 or done == c.distill_steps:
                rate = tokens / max(time.time() - t0, 1e-9)
                eta = (c.distill_steps - done) * (time.time() - t_start) / max(1, done - start)
                row = {"losses/kl": kl.item(), "charts/learning_rate": lr, "charts/tokens_per_sec": rate}
                if mtp is not None:
                    row["losses/mtp_loss"] = mtp.item()
                run.log(done, row)
                self.log(f"distill {done:>5}/{c.distill_steps}  kl {kl.item():.4f}"
                         + (f"  mtp {mtp.item():.3f}" if mtp is not None else "")
                         + f"  {rate:,.0f} tok/s  eta {eta / 60:.1f} min")
                t0, tokens = time.time(), 0
            if done % c.ckpt_every == 0 or done == c.distill_steps:
                run.checkpoints.save(done, {"model": student.state_dict(), "optimizer": opt.state_dict(),
                                            "rng": rng_state(), "step": done})
        student.save_pretrained(out / "model")
        for f in Path(student_dir).iterdir():  # the tokenizer travels with the weights
            if f.name.startswith(("tokenizer", "special_tokens")) and f.is_file():
                (out / "model" / f.name).write_bytes(f.read_bytes())
        if self.cfg.run.plots:
            plot_metrics(run.metrics_path, out / "plots")
        for e in envs.values():
            if hasattr(e, "close"):
                e.close()
        return out

    def stage_serve(self) -> dict:
        from chimera.models import HybridLM
        from chimera.tokenizer import load_tokenizer

        s = self.cfg.serve
        models = {"student": Path(self.done("compress")["model"]), "rl": Path(self.done("rl")["model"])}
        out: dict = {"budget": {}, "decode": {}}
        task = next(e for e in self.cfg.envs if e.startswith("reasoning/")).removeprefix("reasoning/")
        for name, path in models.items():
            model = HybridLM.from_pretrained(path, dtype=torch.float32).eval()
            tok = load_tokenizer(path)
            out["budget"][name] = accuracy_vs_budget(model, tok, task, s.budget_problems, s.budget_fractions,
                                                     self.cfg.run.seed, log=self.log)
            self.log(f"[serve] {name} accuracy vs thinking budget ({task}): " + "  ".join(
                f"{k} {v['accuracy']:.3f}" for k, v in out["budget"][name].items()))
            out["decode"][name] = decode_speed(model, tok, task, s.speed_prompts, s.max_new_tokens,
                                               self.cfg.run.seed, log=self.log)
            d = out["decode"][name]
            self.log(f"[serve] {name} decode: plain {d['plain_tok_s']:.1f} tok/s, speculative "
                     f"{d['speculative_tok_s']:.1f} tok/s (x{d['speedup']:.2f}, acceptance {d['acceptance']:.2f}, "
                     f"same tokens: {d['same_tokens']})")
        plot = self.stage_dir("serve") / "accuracy_vs_budget.png"
        if self.cfg.run.plots:
            _plot_budget(out["budget"], task, plot)
            out["plots"] = [str(plot)]
        out["task"] = task
        out["try"] = [f"chimera generate {models['student']} --prompt \"{example_prompt(task, self.cfg.run.seed)}\" "
                      f"--thinking-budget 8", f"chimera generate {models['student']} --prompt "
                      f"\"{example_prompt(task, self.cfg.run.seed)}\" --speculative"]
        return out

    # ---- the whole run -----------------------------------------------------------------------------
    def run(self) -> dict:
        torch.set_num_threads(max(1, self.cfg.run.threads))
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.json").write_text(json.dumps(self.effective_options(), indent=2) + "\n")
        summaries = {}
        for i, stage in enumerate(STAGES, start=1):
            prior = self.done(stage)
            if prior is not None:
                self.log(f"== stage {i}/{len(STAGES)} {stage}: finished before ({self.stage_dir(stage)}/stage.json); "
                         f"reused")
                summaries[stage] = prior
            else:
                self.log(f"== stage {i}/{len(STAGES)} {stage} (pipeline {time.time() - self.t0:.0f} s so far) ==")
                self.stage_dir(stage).mkdir(parents=True, exist_ok=True)
                t = time.time()
                summaries[stage] = self._finish(stage, getattr(self, f"stage_{stage}")(), time.time() - t)
            if "accuracy" in summaries[stage]:
                if "accuracy_before_rl" in summaries[stage]:
                    self.log(_fmt_env_line("rl start (after demos SFT)", summaries[stage]["accuracy_before_rl"]))
                self.log(_fmt_env_line("student" if stage == "compress" else stage, summaries[stage]["accuracy"]))
        result = self.report(summaries)
        return result

    def report(self, summaries: dict) -> dict:
        """The stage x environment table, the goals checked, written to flagship.json (and run.results)."""
        envs = list(self.cfg.envs)
        rows = []
        for stage, label in (("pretrain", "pretrain"), ("sft", "sft"), ("rl", "rl start (demos SFT)"),
                             ("rl", "rl"), ("compress", "student")):
            s = summaries[stage]
            acc = s["accuracy_before_rl"] if label.startswith("rl start") else s["accuracy"]
            row = {"stage": label, "accuracy": acc, "params": s["params"]}
            if label in ("rl", "student"):
                d = summaries["serve"]["decode"]["rl" if label == "rl" else "student"]
                row["decode_tok_s"] = {"plain": d["plain_tok_s"], "speculative": d["speculative_tok_s"]}
            rows.append(row)
        rnd = summaries["rl"].get("random_policy", {})
        rl, before, student = summaries["rl"]["accuracy"], summaries["rl"]["accuracy_before_rl"], \
            summaries["compress"]["accuracy"]
        sft = summaries["sft"]["accuracy"]
        mean = lambda a: sum(a.values()) / len(a)  # noqa: E731
        p_student, p_rl = summaries["compress"]["params"]["total"], summaries["rl"]["params"]["total"]
        dec = summaries["serve"]["decode"]["student"]
        goals = {
            "rl_improves_every_env_over_rl_start": {e: rl[e] > before[e] for e in envs},
            "rl_improves_every_env_over_sft_stage": {e: rl[e] > sft[e] for e in envs},
            "student_keeps_90pct": {"student_mean": mean(student), "rl_mean": mean(rl),
                                    "kept": mean(student) / mean(rl) if mean(rl) > 0 else None,
                                    "met": mean(rl) > 0 and mean(student) >= 0.9 * mean(rl)},
            "student_params_le_60pct": {"ratio": p_student / p_rl, "met": p_student <= 0.6 * p_rl},
            "speculative_faster_on_student": {"speedup": dec["speedup"], "met": dec["speedup"] > 1.0},
        }
        trained = ("pretrain", "sft", "rl", "compress")
        plots = {"learning_curves": {st: summaries[st].get("plots", []) for st in trained},
                 "accuracy_vs_budget": summaries["serve"].get("plots", [])}
        if self.cfg.run.plots:
            p = self.dir / "accuracy_per_stage.png"
            _plot_stages(rows, envs, p)
            plots["accuracy_per_stage"] = [str(p)]
        result = {"model": self.cfg.model, "envs": envs, "eval_problems": self.cfg.run.eval_problems,
                  "pipeline_dir": str(self.dir), "table": rows, "random_policy": rnd,
                  "accuracy_vs_budget": summaries["serve"]["budget"], "budget_task": summaries["serve"]["task"],
                  "decode": summaries["serve"]["decode"], "goals": goals, "plots": plots,
                  "stage_seconds": {st: summaries[st]["seconds"] for st in STAGES},
                  "stages_total_s": round(sum(summaries[st]["seconds"] for st in STAGES), 1),
                  "this_invocation_s": round(time.time() - self.t0, 1),
                  "threads": self.cfg.run.threads, "config": to_dict(self.cfg)}
        text = json.dumps(result, indent=2) + "\n"
        (self.dir / "flagship.json").write_text(text)
        if self.cfg.run.results:
            Path(self.cfg.run.results).parent.mkdir(parents=True, exist_ok=True)
            Path(self.cfg.run.results).write_text(text)
        self.log(format_table(result))
        return result


def _split_eval(m: dict[str, float], envs) -> tuple[dict[str, float], dict[str, float]]:
    acc = {e: float(m.get(f"eval/pass_rate/{e}", 0.0)) for e in envs}
    rnd = {e: float(m[f"eval/random_policy/{e}"]) for e in envs if f"eval/random_policy/{e}" in m}
    return acc, rnd


def _plots(path: Path) -> list[str]:
    return sorted(str(p) for p in (path / "plots").glob("*.png"))


def example_prompt(task: str, seed: int) -> str:
    from chimera.data.batching import TaskBatcher

    return TaskBatcher((task,), 96, 1, seed).held_out(1)[0][1].prompt


@torch.no_grad()
def accuracy_vs_budget(model, tok, task: str, n: int, fractions, seed: int, log=print) -> dict[str, dict]:
    """Held-out accuracy of greedy answers when the thinking is capped at a fraction of each problem's natural
    (reference) trace length (chimera.inference.ThinkingBudget; problems that share a budget decode together)."""
    from chimera.data.batching import TaskBatcher, parse_answer, prompt_tokens
    from chimera.inference import SamplingConfig, ThinkingBudget, generate

    batcher = TaskBatcher((task,), 96, 1, seed)
    items = [ex for _, ex in batcher.held_out(n)]
    verify = batcher.tasks[0].verify
    out = {}
    t = time.time()
    for i, f in enumerate(fractions):
        by_budget: dict[int, list] = {}
        for ex in items:
            by_budget.setdefault(round(f * len(tok.encode(ex.thinking))), []).append(ex)
        correct, used = 0, []
        for budget, exs in sorted(by_budget.items()):
            b = ThinkingBudget(budget, tok.token_id("<think>"), tok.token_id("</think>"), tok.newline_ids)
            outs = generate(model, [prompt_tokens(tok, ex.prompt, True) for ex in exs],
                            SamplingConfig(max_new_tokens=160, stop_tokens=(tok.eos_id,)), budget=b)
            end = tok.token_id("</think>")
            for ex, o in zip(exs, outs):
                correct += verify(ex.prompt, parse_answer(tok.decode(o)))
                used.append(o.index(end) if end in o else len(o))
        out[f"{round(100 * f)}%"] = {"accuracy": correct / len(items), "mean_thinking_tokens": sum(used) / len(used)}
        done = i + 1
        log(f"budget {done}/{len(fractions)}  {round(100 * f)}% of the trace: accuracy {correct / len(items):.3f}  "
            f"eta {(len(fractions) - done) * (time.time() - t) / done:.0f} s")
    return out


@torch.no_grad()
def decode_speed(model, tok, task: str, n: int, max_new_tokens: int, seed: int, log=print) -> dict[str, float]:
    """Greedy decode tokens/s of one sequence at a time, plain (chimera.inference.generate) vs speculative on the
    MTP layers (speculative_generate), on the same held-out prompts; the first prompt warms both up untimed."""
    from chimera.data.batching import TaskBatcher, prompt_tokens
    from chimera.inference import SamplingConfig, generate, speculative_generate

    prompts = [prompt_tokens(tok, ex.prompt, True) for _, ex in TaskBatcher((task,), 96, 1, seed).held_out(n + 1)]
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, stop_tokens=(tok.eos_id,))
    generate(model, [prompts[0]], cfg)
    speculative_generate(model, prompts[0], max_new_tokens, (tok.eos_id,))
    plain_tokens = spec_tokens = 0
    plain_s = spec_s = 0.0
    same, accepted, drafted = 0, 0.0, 0
    for p in prompts[1:]:
        t = time.perf_counter()
        a = generate(model, [p], cfg)[0]
        plain_s += time.perf_counter() - t
        t = time.perf_counter()
        b, stats = speculative_generate(model, p, max_new_tokens, (tok.eos_id,))
        spec_s += time.perf_counter() - t
        plain_tokens, spec_tokens = plain_tokens + len(a), spec_tokens + len(b)
        same += a == b
        accepted += stats.acceptance_rate
        drafted += 1
    plain, spec = plain_tokens / plain_s, spec_tokens / spec_s
    log(f"decode {n} prompts: plain {plain_tokens} tokens in {plain_s:.2f} s, "
        f"speculative {spec_tokens} in {spec_s:.2f} s")
    return {"plain_tok_s": plain, "speculative_tok_s": spec, "speedup": spec / plain,
            "acceptance": accepted / max(1, drafted), "same_tokens": f"{same}/{n}", "prompts": n,
            "max_new_tokens": max_new_tokens}


def format_table(result: dict) -> str:
    """The final table as text: stage x environment, parameters, decode tokens/s, then the plots."""
    envs = result["envs"]
    short = [e.split("/", 1)[1] for e in envs]
    w = max(8, *(len(s) for s in short))
    head = (f"{'stage':<22}" + "".join(f"{s:>{w + 1}}" for s in short)
            + f"{'params total/active':>22}{'decode tok/s':>22}")
    lines = ["", f"== flagship: held-out success per environment ({result['eval_problems']} problems each) ==", head]
    for r in result["table"]:
        dec = r.get("decode_tok_s")
        d = f"{dec['plain']:.0f} / {dec['speculative']:.0f} spec" if dec else ""
        p = r["params"]
        lines.append(f"{r['stage']:<22}" + "".join(f"{r['accuracy'][e]:>{w + 1}.3f}" for e in envs)
                     + f"{p['total'] / 1e3:>12.1f}K/{p['active'] / 1e3:.1f}K" + f"{d:>22}")
    if result["random_policy"]:
        lines.append(f"{'random policy':<22}" + "".join(
            f"{result['random_policy'][e]:>{w + 1}.3f}" if e in result["random_policy"] else f"{'':>{w + 1}}"
            for e in envs))
    b = result["accuracy_vs_budget"]
    lines.append(f"accuracy vs thinking budget ({result['budget_task']}, share of the natural trace): " + "; ".join(
        f"{m}: " + " ".join(f"{k} {v['accuracy']:.2f}" for k, v in b[m].items()) for m in b))
    g = result["goals"]
    lines.append("goals: RL > RL start on every env: " + str(all(g["rl_improves_every_env_over_rl_start"].values()))
                 + f"; student keeps {g['student_keeps_90pct']['kept'] or 0:.0%} of RL accuracy (>= 90%: "
                 f"{g['student_keeps_90pct']['met']}) at {g['student_params_le_60pct']['ratio']:.0%} of its parameters"
                 f"; speculative x{g['speculative_faster_on_student']['speedup']:.2f} on the student")
    for k, v in result["plots"].items():
        paths = [p for ps in v.values() for p in ps] if isinstance(v, dict) else v
        lines.append(f"plots ({k}): " + (", ".join(paths) if paths else "none"))
    lines.append(f"stage seconds: {result['stage_seconds']} (total {result['stages_total_s']} s)")
    return "\n".join(lines)


def _plot_stages(rows: list[dict], envs: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    xs = list(range(len(rows)))
    for e in envs:
        ax.plot(xs, [r["accuracy"][e] for r in rows], marker="o", label=e)
    ax.set_xticks(xs, [r["stage"] for r in rows], rotation=15)
    ax.set_ylabel("held-out success")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    ax.set_title("accuracy per stage")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_budget(budget: dict[str, dict], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, by in budget.items():
        ax.plot([int(k.rstrip("%")) for k in by], [v["accuracy"] for v in by.values()], marker="o", label=name)
    ax.set_xlabel("thinking budget (% of the natural trace length)")
    ax.set_ylabel(f"held-out accuracy ({task})")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_flagship(cfg: FlagshipConfig, log=print) -> dict:
    """Run (or resume) the pipeline in cfg.run.out_dir; returns the final results."""
    cfg.validate()
    return Pipeline(cfg, log).run()

