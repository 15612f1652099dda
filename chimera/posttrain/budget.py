"""Accuracy against the thinking budget: how much of its own reasoning a model needs.

For every held-out problem of each environment, the natural trace length L is the number of thinking
tokens of its greedy episode with no thinking limit (``ThinkingBudget(None)``: the engine's segment rules,
no limit). The problem is then answered greedily again under budgets of ``round(f * L)`` thinking tokens
for each fraction f (``chimera.inference.budget``: after N thinking tokens the segment closes at the next
newline within a grace of ceil(10% of N), or ``</think>`` is forced; N = 0 closes it at once, which is
thinking off). At f = 1 the budget cannot bind, so that answer is the unbudgeted one token for token.
``budget_curve`` returns a plain dict (JSON-ready) for tables and plots.

    python -m chimera.posttrain.budget runs/x/model --envs reasoning/add reasoning/sort --out curve.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from chimera.inference import Sampler, ThinkingBudget
from chimera.posttrain.envs import list_ids, make
from chimera.posttrain.rollout import Episode, RolloutConfig, rollout, thinking_budget

FRACTIONS = (0.0, 0.25, 0.5, 1.0)
ONE_TURN = ("reasoning", "clrs", "json")
"""Environment families with one assistant turn: their whole reasoning is one thinking segment."""


def budget_tokens(fraction: float, natural: int) -> int:
    """The thinking budget at ``fraction`` of a natural trace of ``natural`` tokens."""
    return round(fraction * natural)


def grace(budget: int) -> int:
    """Thinking tokens the engine allows past a budget before it forces ``</think>`` (its default)."""
    return ThinkingBudget(budget, 0, 1, ()).grace


def _check(env_ids: Sequence[str], problems: int, fractions: Sequence[float]) -> None:
    if not env_ids:
        raise ValueError("budget_curve needs at least one environment id (e.g. reasoning/add)")
    known = list_ids()
    for e in env_ids:
        if e not in known:
            raise ValueError(f"unknown environment {e!r}; known ids: {', '.join(known)}")
    multi = [e for e in env_ids if e.partition("/")[0] not in ONE_TURN]
    if multi:
        raise ValueError(f"{', '.join(multi)} take several turns; the budget curve measures one-turn environments "
                         f"({', '.join(f + '/*' for f in ONE_TURN)})")
    if problems < 1:
        raise ValueError(f"problems={problems} must be at least 1 (held-out problems per environment)")
    if not fractions or any(not 0.0 <= f <= 1.0 for f in fractions):
        raise ValueError(f"fractions={tuple(fractions)} must be a non-empty list of fractions in [0, 1] of the "
                         f"natural trace length (e.g. 0 0.25 0.5 1)")


def budget_episodes(model, tok, env_ids: Sequence[str], problems: int = 16, fractions: Sequence[float] = FRACTIONS,
                    max_new_tokens: int = 128, max_len: int = 768,
                    max_rows: int = 256) -> tuple[list[Episode], dict[float, list[Episode]]]:
    """The greedy episodes behind ``budget_curve``: the unbudgeted ones (problems environment-major) and,
    per fraction, the same problems under that fraction of each one's natural trace length."""
    _check(env_ids, problems, fractions)
    cfg = RolloutConfig(max_new_tokens, max_len, 1, thinking=True, max_rows=max_rows)
    probs = [(e, s, True) for e in env_ids for s in range(problems)]

    def play(budgets) -> list[Episode]:
        return rollout(model, tok, [make(e) for e, _, _ in probs], probs, 1, Sampler(), cfg, seed=0, budgets=budgets)

    free = play([thinking_budget(tok, None)] * len(probs))
    return free, {f: play([thinking_budget(tok, budget_tokens(f, ep.thinking_tokens)) for ep in free])
                  for f in fractions}


def budget_curve(model, tok, env_ids: Sequence[str], problems: int = 16, fractions: Sequence[float] = FRACTIONS,
                 max_new_tokens: int = 128, max_len: int = 768, max_rows: int = 256) -> dict:
    """Held-out greedy accuracy per environment at each fraction of the natural trace length (see the module
    doc): ``envs[e]`` holds ``accuracy`` / ``thinking_tokens`` / ``budget_tokens`` per fraction (means over
    problems), ``unbudgeted_accuracy``, ``natural_tokens`` (mean L) and the per-problem ``natural`` lengths;
    ``mean_accuracy`` averages the environments per fraction."""
    free, runs = budget_episodes(model, tok, env_ids, problems, fractions, max_new_tokens, max_len, max_rows)
    natural = [ep.thinking_tokens for ep in free]
    probs = [(ep.env_id, ep.seed) for ep in free]

    def mean(xs) -> float:
        xs = list(xs)
        return sum(xs) / len(xs)

    envs = {}
    for e in env_ids:
        idx = [i for i, p in enumerate(probs) if p[0] == e]
        envs[e] = {
            "problems": len(idx),
            "natural": [natural[i] for i in idx],
            "natural_tokens": mean(natural[i] for i in idx),
            "unbudgeted_accuracy": mean(free[i].info.get("correct", 0.0) for i in idx),
            "accuracy": [mean(runs[f][i].info.get("correct", 0.0) for i in idx) for f in fractions],
            "thinking_tokens": [mean(runs[f][i].thinking_tokens for i in idx) for f in fractions],
            "budget_tokens": [mean(budget_tokens(f, natural[i]) for i in idx) for f in fractions],
            "forced_rate": [mean(float(runs[f][i].forced_tokens > 0) for i in idx) for f in fractions],
        }
    return {"fractions": list(fractions), "grace": "ceil(10% of the budget) thinking tokens past it",
            "max_new_tokens": max_new_tokens, "envs": envs,
            "mean_accuracy": [mean(envs[e]["accuracy"][k] for e in env_ids) for k in range(len(fractions))],
            "mean_unbudgeted_accuracy": mean(envs[e]["unbudgeted_accuracy"] for e in env_ids)}


def main(argv: Sequence[str] | None = None) -> None:
    from chimera.posttrain.train import build_model
    from chimera.tokenizer import load_tokenizer

    ap = argparse.ArgumentParser(description="Held-out accuracy against the thinking budget (fractions of each "
                                             "problem's natural trace length).")
    ap.add_argument("model", help="an HF NemotronH checkpoint directory (e.g. a post-train run's model/)")
    ap.add_argument("--envs", nargs="+", default=["reasoning/add"])
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", default="", help="write the curve as JSON here")
    a = ap.parse_args(argv)
    if not (Path(a.model) / "config.json").exists():
        raise SystemExit(f"{a.model} has no config.json; give a checkpoint directory (a run's model/)")
    curve = budget_curve(build_model(a.model).eval(), load_tokenizer(a.model), a.envs, a.problems, a.fractions,
                         a.max_new_tokens)
    for e, c in curve["envs"].items():
        cells = "  ".join(f"{f:.0%} {acc:.3f}" for f, acc in zip(curve["fractions"], c["accuracy"]))
        print(f"{e}: natural {c['natural_tokens']:.1f} tokens  unbudgeted {c['unbudgeted_accuracy']:.3f}  {cells}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(curve, indent=2) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
