"""MiniPuzzle-style architecture search under a budget: enumerate pruned shapes of a teacher that fit
(total or active parameters, or memory: weights plus the KV cache and Mamba state at a context length),
score the largest few by a short distillation, and distil the winner fully.

Sizes are read from the model code itself: a layer's parameters and its inference state are counted on
the meta device (``Block`` and its mixer's ``new_state``), one build per distinct layer shape.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import torch

from chimera.compress.prune import Targets, _current, _new_config, check_targets
from chimera.models.block import Block
from chimera.models.config import HybridConfig

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


@dataclass
class Budget:
    """What a candidate must fit; None leaves a measure free."""

    params: int | None = None
    active_params: int | None = None
    memory_gib: float | None = None
    """Weights plus the decode state of one sequence at ``context`` tokens, in GiB."""
    decode_ms: float | None = None
    """Milliseconds per greedy decode step of one sequence on the inference engine, measured here."""
    context: int = 4096
    dtype: str = "bf16"

    def check(self) -> None:
        if all(getattr(self, k) is None for k in ("params", "active_params", "memory_gib", "decode_ms")):
            raise ValueError("give a budget: --target-params, --target-active-params, --target-memory or "
                             "--target-decode-ms")
        for name in ("params", "active_params", "memory_gib", "decode_ms"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"--target-{name.replace('_', '-').replace('-gib', '')}={v} must be positive")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"--dtype={self.dtype!r} (expected one of {', '.join(DTYPE_BYTES)})")
        if self.context <= 0:
            raise ValueError(f"--context={self.context} must be positive")


def _shape_key(cfg: HybridConfig) -> HybridConfig:
    return cfg.replace(pattern="M", mtp_pattern="", mtp_depths=0, mtp_share_block=False, extra={})


@lru_cache(maxsize=4096)
def _layer_sizes(key: str, kind: str, context: int, dtype_bytes: int) -> tuple[int, int, int]:
    """(parameters, parameters of one routed expert, decode-state bytes at ``context``) of one layer."""
    cfg = HybridConfig.from_hf_dict(json.loads(key))
    with torch.device("meta"):
        block = Block(cfg, kind)
    params = sum(p.numel() for p in block.parameters())
    expert = 0
    if kind == "E":
        expert = (block.mixer.experts.up_proj.numel() + block.mixer.experts.down_proj.numel()) // cfg.n_routed_experts
    dtype = {4: torch.float32, 2: torch.bfloat16, 1: torch.float8_e4m3fn}[dtype_bytes]
    state = block.new_state(1, context, torch.device("meta"), dtype)
    nbytes = 0
    if state is not None:
        nbytes = sum(t.numel() * t.element_size() for t in vars(state).values() if isinstance(t, torch.Tensor))
    return params, expert, nbytes


def sizes(cfg: HybridConfig, context: int = 4096, dtype: str = "bf16") -> dict[str, float]:
    """Total and active parameters, and the bytes of weights and decode state of one sequence at ``context``."""
    key = json.dumps(_shape_key(cfg).to_hf_dict(), sort_keys=True)
    b = DTYPE_BYTES[dtype]
    total = active = state = 0
    for kind in cfg.pattern:
        p, e, s = _layer_sizes(key, kind, context, b)
        total += p
        active += p - e * (cfg.n_routed_experts - cfg.num_experts_per_tok) if kind == "E" else p
        state += s
    d, V = cfg.hidden_size, cfg.vocab_size
    outer = V * d * (1 if cfg.tie_word_embeddings else 2) + d  # embeddings, lm_head, norm_f
    mtp = 0
    for _ in range(cfg.mtp_num_blocks):
        mtp += sum(_layer_sizes(key, kind, context, b)[0] for kind in cfg.mtp_pattern) + 3 * d + 2 * d * d
    total += outer + mtp
    active += outer + mtp
    return {"params": total, "active_params": active, "weight_bytes": total * b, "state_bytes": state,
            "memory_gib": (total * b + state) / 2**30}


def fits(cfg: HybridConfig, budget: Budget) -> bool:
    s = sizes(cfg, budget.context, budget.dtype)
    return all(getattr(budget, k) is None or s[k] <= getattr(budget, k) for k in ("params", "active_params",
                                                                                    "memory_gib"))


def _choices(now: int, step: int, max_prune: float) -> list[int]:
    """now, and multiples of ``step`` down to (1 - max_prune) * now."""
    low = max(step, math.ceil((1 - max_prune) * now))
    return sorted({now, *range(now - now % step, low - 1, -step)} - {0}, reverse=True)


def candidates(cfg: HybridConfig, budget: Budget, kept_layers: Callable[[int], list[int]],
               max_width_pruning: float = 0.5, max_depth_pruning: float = 0.5,
               divisor: int = 8) -> list[tuple[Targets, dict[str, float]]]:
    """Every shape on the search grid that fits the budget, largest first: hidden size, MLP width (FFN, expert
    and shared-expert sizes by one fraction), Mamba heads and attention heads in steps that keep the groups,
    and n layers dropped (``kept_layers(n)``: the layers that stay). Each is (targets, its sizes)."""
    kinds = set(cfg.pattern)
    hidden = _choices(cfg.hidden_size, divisor, max_width_pruning)
    fracs = [f for f in (1.0, 0.875, 0.75, 0.625, 0.5) if f >= 1 - max_width_pruning - 1e-9]
    if not ({"-", "E"} & kinds):
        fracs = [1.0]
    mamba = _choices(cfg.mamba_num_heads, cfg.n_groups, max_width_pruning) if "M" in kinds else [cfg.mamba_num_heads]
    heads = (_choices(cfg.num_attention_heads, cfg.num_key_value_heads, max_width_pruning) if "*" in kinds
             else [cfg.num_attention_heads])
    depth = range(0, min(int(max_depth_pruning * cfg.num_layers), cfg.num_layers - 1) + 1)
    now = _current(cfg)

    def width(name: str, f: float) -> int:
        return now[name] if f == 1.0 else max(divisor, round(now[name] * f / divisor) * divisor)

    out = []
    for d, f, mh, ah, drop in itertools.product(hidden, fracs, mamba, heads, depth):
        t = Targets(hidden_size=d, ffn_size=width("ffn_size", f), attention_heads=ah, mamba_heads=mh,
                    moe_ffn_size=width("moe_ffn_size", f),
                    shared_expert_size=width("shared_expert_size", f) if now["shared_expert_size"] else None,
                    drop_layers=drop)
        try:
            check_targets(cfg, t)
        except ValueError:
            continue
        new = _new_config(cfg, t, kept_layers(drop))
        if fits(new, budget):
            out.append((t, sizes(new, budget.context, budget.dtype)))
    out.sort(key=lambda c: -c[1]["params"])
    return out


def shortlist(cands: list[tuple[Targets, dict[str, float]]], keep: int,
              accept: Callable[[Targets], bool] | None = None) -> list[tuple[Targets, dict[str, float]]]:
    """``keep`` candidates that trade depth against width: the largest shape for each number of layers dropped
    (largest first), then the next largest overall; ``accept`` (asked in that order) can turn shapes down."""
    best: dict[int, tuple] = {}
    for c in cands:
        best.setdefault(c[0].drop_layers, c)
    firsts = sorted(best.values(), key=lambda c: -c[1]["params"])
    order = firsts + [c for c in cands if not any(c is p for p in firsts)]
    picked: list = []
    for c in order[:len(firsts) + 4 * keep]:  # at most this many are asked (each ask may time a decode)
        if len(picked) == keep:
            break
        if accept is None or accept(c[0]):
            picked.append(c)
    return picked


@torch.no_grad()
def decode_ms(model, new_tokens: int = 32, prompt_len: int = 16) -> float:
    """Milliseconds per greedy decode step of one sequence on the inference engine (prefill subtracted;
    best of three)."""
    from chimera.inference import SamplingConfig, generate

    prompt = [[3 + i % 200 for i in range(prompt_len)]]
    times = {}
    for n in (1, new_tokens):
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            generate(model, prompt, SamplingConfig(max_new_tokens=n))
            best = min(best, time.perf_counter() - t)
        times[n] = best
    return 1000 * (times[new_tokens] - times[1]) / (new_tokens - 1)


@dataclass
class SearchConfig:
    """How many shapes to score and how long to distil."""

    keep: int = 4
    """Score this many candidates (the largest that fit, one per depth first)."""
    score_steps: int = 50
    """Distillation steps per scored candidate."""
    distill_steps: int = 300
    """Distillation steps for the winner."""
    max_width_pruning: float = 0.5
    max_depth_pruning: float = 0.5
    depth_metric: str = "cosine"
    distill: dict = field(default_factory=dict)
    """DistillConfig fields for every distillation (data, optim, run settings)."""


def search(checkpoint: str | Path, out: str | Path, budget: Budget, calib: dict, sc: SearchConfig,
           log=print) -> dict:
    """The MiniPuzzle search; writes ``out``/model (the distilled winner), ``out``/search.{json,md}."""
    from chimera.compress.calib import calibration_batches
    from chimera.compress.distill import DistillConfig, distill
    from chimera.compress.importance import collect_importance
    from chimera.compress.prune import choose_layers, prune
    from chimera.config import from_dict
    from chimera.models import HybridLM
    from chimera.runs import read_metrics
    from chimera.tokenizer import load_tokenizer

    budget.check()
    checkpoint, out = Path(checkpoint), Path(out)
    teacher = HybridLM.from_pretrained(checkpoint, dtype=torch.float32)
    cfg = teacher.config
    weight = [sum(p.numel() for p in layer.parameters()) for layer in teacher.backbone.layers]

    def heaviest_gone(drop: int) -> list[int]:  # the most any drop can save: a bound checked before calibrating
        return sorted(sorted(range(cfg.num_layers), key=lambda i: weight[i])[:cfg.num_layers - drop])

    if not candidates(cfg, budget, heaviest_gone, sc.max_width_pruning, sc.max_depth_pruning):
        raise ValueError(f"no pruned shape of {checkpoint} fits the budget {budget} within "
                         f"--max-width-pruning={sc.max_width_pruning} and --max-depth-pruning={sc.max_depth_pruning}; "
                         f"loosen the budget or allow more pruning")
    batches = calibration_batches(**calib, tokenizer=load_tokenizer(checkpoint), vocab_size=teacher.config.vocab_size)
    imp = collect_importance(teacher, batches, depth_loss=sc.depth_metric == "loss")
    cands = candidates(teacher.config, budget, lambda drop: choose_layers(imp, drop, sc.depth_metric),
                       sc.max_width_pruning, sc.max_depth_pruning)
    if not cands:
        raise ValueError(f"no pruned shape of {checkpoint} fits the budget {budget} within "
                         f"--max-width-pruning={sc.max_width_pruning} and --max-depth-pruning={sc.max_depth_pruning}; "
                         f"loosen the budget or allow more pruning")
    base = sizes(teacher.config, budget.context, budget.dtype)
    measured: dict[int, float] = {}

    def fast_enough(t: Targets) -> bool:
        ms = decode_ms(prune(teacher, imp, t, sc.depth_metric).eval())  # type: ignore[arg-type]
        measured[id(t)] = ms
        log(f"  {ms:.2f} ms per decode step: hidden {t.hidden_size}, {t.drop_layers} layers dropped")
        return ms <= budget.decode_ms

    picked = shortlist(cands, sc.keep, fast_enough if budget.decode_ms is not None else None)
    if not picked:
        raise ValueError(f"no shape that fits the other budgets decodes within --target-decode-ms={budget.decode_ms}")
    log(f"teacher: {base['params']:,} params, {base['active_params']:,} active, {base['memory_gib']:.4f} GiB; "
        f"{len(cands)} shapes fit, scoring {len(picked)}")
    rows = []

    def run_distill(student: Path, steps: int, name: str) -> dict:
        cfg = from_dict(DistillConfig, {**sc.distill, "model": str(student), "teacher": str(checkpoint),
                                        "steps": steps})
        cfg.run = replace(cfg.run, name=name, out_dir=str(out / "runs"))
        cfg.validate()
        run = distill(cfg, log=log)
        last = {}
        for r in read_metrics(run.path / "metrics.jsonl"):
            last.update(r)
        return {"run": str(run.path), **{k: v for k, v in last.items() if k.startswith("eval/")}}

    for i, (t, size) in enumerate(picked):
        student = out / "candidates" / f"c{i}"
        pruned = prune(teacher, imp, t, sc.depth_metric)  # type: ignore[arg-type]
        pruned.save_pretrained(student)
        log(f"candidate {i}: {pruned.config.full_pattern} hidden {t.hidden_size} ({size['params']:,} params)")
        if id(t) in measured:
            size = {**size, "decode_ms": measured[id(t)]}
        rows.append({"candidate": i, "pattern": pruned.config.full_pattern, "targets": vars(t), **size,
                     **run_distill(student, sc.score_steps, f"score-c{i}")})
    best = min(rows, key=lambda r: r["eval/kl"])
    log(f"winner: candidate {best['candidate']} ({best['pattern']}, eval/kl {best['eval/kl']:.4f})")
    final = run_distill(out / "candidates" / f"c{best['candidate']}", sc.distill_steps, "winner")
    if (out / "model").exists():
        shutil.rmtree(out / "model")
    shutil.copytree(Path(final["run"]) / "model", out / "model")
    for f in checkpoint.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) and f.is_file():
            shutil.copy2(f, out / "model" / f.name)
    result = {"teacher": {"checkpoint": str(checkpoint), **base}, "budget": vars(budget),
              "search": {k: v for k, v in vars(sc).items()}, "fitting_shapes": len(cands),
              "candidates": rows, "winner": {**best, "final": final}}
    (out / "search.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "search.md").write_text(_table(result))
    log(f"wrote {out / 'model'} and {out / 'search.md'}")
    return result


def _table(result: dict) -> str:
    evals = sorted({k for r in result["candidates"] for k in r if k.startswith("eval/")})
    timed = any("decode_ms" in r for r in result["candidates"])
    head = ["candidate", "pattern", "hidden", "params", "active", "memory GiB", *(["decode ms"] if timed else []),
            *evals]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["candidates"]:
        cells = [str(r["candidate"]), f"`{r['pattern']}`", str(r["targets"]["hidden_size"]), f"{r['params']:,}",
                 f"{r['active_params']:,}", f"{r['memory_gib']:.4f}",
                 *([f"{r.get('decode_ms', float('nan')):.2f}"] if timed else []),
                 *(f"{r.get(k, float('nan')):.4f}" for k in evals)]
        lines.append("| " + " | ".join(cells) + " |")
    w = result["winner"]
    t = result["teacher"]
    return (f"# Compression search\n\nTeacher `{t['checkpoint']}`: {t['params']:,} params ({t['active_params']:,} "
            f"active). Budget: {json.dumps(result['budget'])}. {result['fitting_shapes']} shapes fit; scored by "
            f"eval/kl after {result['search']['score_steps']} distillation steps.\n\n" + "\n".join(lines)
            + f"\n\nWinner: candidate {w['candidate']} (`{w['pattern']}`), after {result['search']['distill_steps']} "
            f"steps: " + ", ".join(f"{k} {v:.4f}" for k, v in w["final"].items() if k.startswith("eval/")) + "\n")
