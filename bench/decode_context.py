"""Decode speed and cache memory against context length: a Nemotron-H-like hybrid (~8% attention)
vs a pure Transformer with the same parameter count vs the same hybrid run by transformers.

For each context T in {1k, 4k, 16k, 32k} and batch {1, 8}, the cache is brought to length T and
then ``--new-tokens`` tokens are decoded one at a time; we report tokens/s (batch / the median
step time; the mean is kept as ``ms_per_step_mean``),
the cache's bytes and the process's peak RSS (each measurement in its own subprocess).

The cache is filled to length T with random keys / values rather than by a T-token prefill: the
time of a decode step does not depend on the values, prefill speed is measured in
bench/model_speed.py, and a 32k-token pure-PyTorch prefill of batch 8 would take most of an hour
on two cores. Mamba states are constant-size and are prefilled for real on a short prompt.

Our models decode on ``chimera.inference.Decoder`` (a fixed-capacity cache; each step one token per
row, sampled in the same call), eagerly and on the fast path (``*-compiled``: the step as one
``torch.compile``d graph, compiled once per model with dynamic shapes; the warm-up step that
compiles is not timed). At batch 1 a step of this 38M-parameter model reads its
151 MB of fp32 weights besides the cache, so the hybrid / Transformer ratio there follows the
ratio of bytes read per step, (weights + Transformer KV) / (weights + hybrid cache), which the
summary lists as ``bytes_per_step_transformer_over_hybrid``. It can end up above that ratio because
a CPU reads a long KV cache more slowly than a weight matrix: on one core of the 2-core machine
the results come from, decode attention (chimera's kernel, ``chimera.models.decode_attention``;
``F.scaled_dot_product_attention`` got 3-4 GB/s) gets through keys and values at about 5-6 GB/s, a
matrix-vector product through a weight matrix too large for the caches at about 10-14 GB/s.

The summary's ``cost_model`` fits each run's step time as fixed + per-token * context. The ratio of
the two models' per-token costs is set by their attention layers (17 vs 2) and the ratio of their
fixed costs by their matched sizes, so the hybrid's growth from 1k to 32k and its speed ratio at
16k are both functions of one number, its per-token / fixed cost: faster attention kernels lower
both. ``max_speed_ratio_at_16384_with_growth_1.3`` is the largest ratio at 16k that a growth of
at most 1.3x allows (about 2x here), which is why no kernel meets a 3x ratio and a 1.3x growth
at once at this model size.

    python bench/decode_context.py            # full run -> results/decode_context.{json,png}
    python bench/decode_context.py --quick    # contexts 256 / 1024, to check the script
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMMON = dict(hidden_size=512, num_attention_heads=8, num_key_value_heads=2, head_dim=64, intermediate_size=1536,
              mamba_num_heads=16, mamba_head_dim=64, n_groups=2, ssm_state_size=64, chunk_size=128, vocab_size=272)
HYBRID = "M-M-M-M*-M-M-M-M-M*-M-M-"  # 24 layers, 2 attention (8.3%), as Nemotron-H-8B's 4 of 52


def transformer_pattern(target_params: int) -> str:
    """Alternating attention / MLP layers, as many pairs as match ``target_params``."""
    from chimera.models import HybridConfig, count_parameters

    best = "*-"
    for pairs in range(1, 80):
        pat = "*-" * pairs
        if abs(count_parameters(HybridConfig(pattern=pat, **COMMON))["total"] - target_params) < abs(
                count_parameters(HybridConfig(pattern=best, **COMMON))["total"] - target_params):
            best = pat
    return best


def fill_ours(model, batch: int, context: int, new_tokens: int, compile: bool):
    """A Decoder whose rows hold a real 16-token prefill, then random keys / values up to ``context``."""
    from chimera.inference import Decoder
    from chimera.models.attention import KVCache

    dec = Decoder(model, batch, context + new_tokens + 2, compile=compile)
    dec.prefill([torch.randint(16, 272, (16,)).tolist()], [list(range(batch))])
    cache = dec.cache
    for s in cache.layers:
        if isinstance(s, KVCache):
            s.k[:, :, 16:context] = torch.randn_like(s.k[:, :, 16:context])
            s.v[:, :, 16:context] = torch.randn_like(s.v[:, :, 16:context])
            s.length = context
    cache.valid[:, :context] = True
    cache.pos.fill_(context)
    return dec


def fill_hf(model, batch: int, context: int):
    prompt = torch.randint(16, 272, (batch, 16))
    out = model(prompt, use_cache=True, logits_to_keep=1)
    cache = out.cache
    cfg = model.config
    for i, kind in enumerate(cfg.layers_block_type):
        if kind == "full_attention":
            k = torch.randn(batch, cfg.num_key_value_heads, context - 16, cfg.head_dim)
            cache.update(k, torch.randn_like(k), i)
    return cache


def hf_cache_bytes(cache) -> int:
    """Bytes of every tensor held by a transformers cache (KV, and Mamba conv / recurrent states in dicts)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for v in vars(layer).values():
            tensors = [v] if torch.is_tensor(v) else list(v.values()) if isinstance(v, dict) else []
            total += sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))
    return total


@torch.no_grad()
def measure(impl: str, path: Path, context: int, batch: int, new_tokens: int) -> dict:
    torch.manual_seed(0)
    if impl == "hf":
        from transformers import NemotronHForCausalLM

        model = NemotronHForCausalLM.from_pretrained(path).eval()
        cache = fill_hf(model, batch, context)
        step = lambda tok: model(tok, cache=cache, use_cache=True, logits_to_keep=1).logits  # noqa: E731
        cache_bytes = lambda: hf_cache_bytes(cache)  # noqa: E731
    else:
        from chimera.inference.decoder import RowSampling
        from chimera.models import HybridLM

        model = HybridLM.from_pretrained(path).eval()
        dec = fill_ours(model, batch, context, new_tokens, compile=impl == "static")  # static: compiled step
        cache_bytes = lambda: dec.cache.nbytes()["total"]  # noqa: E731
        greedy = RowSampling(torch.zeros(batch), torch.zeros(batch, dtype=torch.long), torch.ones(batch),
                             torch.full((batch,), -1), torch.zeros(1, 272), filtered=False)
        u = torch.zeros(batch)
        step = lambda tok: dec.step(tok, u, greedy)[0]  # noqa: E731
    tok = torch.randint(16, 272, (batch,))
    step(tok if impl != "hf" else tok[:, None])  # warm-up
    times = []
    for _ in range(new_tokens):
        t0 = time.perf_counter()
        if impl == "hf":
            tok = step(tok[:, None])[:, -1].argmax(-1)
        else:
            tok = step(tok)
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)  # a shared machine's pauses land in a few steps, not in the median
    return {"impl": impl, "context": context, "batch": batch, "tokens_per_s": batch / dt,
            "ms_per_step": 1000 * dt, "ms_per_step_mean": 1000 * statistics.fmean(times),
            "cache_mb": cache_bytes() / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for impl, style in (("hybrid", "-o"), ("transformer", "--s"), ("hf-hybrid", ":^"), ("hybrid-compiled", "-.o"),
                        ("transformer-compiled", "-.s")):
        for batch in sorted({r["batch"] for r in results}):
            rows = sorted((r for r in results if r["model"] == impl and r["batch"] == batch),
                          key=lambda r: r["context"])
            if not rows:
                continue
            xs = [r["context"] for r in rows]
            axes[0].plot(xs, [r["tokens_per_s"] for r in rows], style, label=f"{impl} b={batch}")
            axes[1].plot(xs, [r["ms_per_step"] for r in rows], style, label=f"{impl} b={batch}")
            axes[2].plot(xs, [r["cache_mb"] for r in rows], style, label=f"{impl} b={batch}")
    for ax, title in zip(axes, ("decode tokens/s", "ms per decode step", "cache MB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context tokens")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def line_fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y = a + b x."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - slope * mx, slope


def goal_tradeoff(hybrid: tuple[float, float], transformer: tuple[float, float], contexts: list[int],
                  growth: float = 1.3, at: int = 16384) -> dict:
    """What the fitted step times t(T) = fixed + per_token * T say about the two goals together.

    r = transformer per_token / hybrid per_token is set by the architectures (the ratio of their
    attention layers, 17 / 2 here) and alpha = transformer fixed / hybrid fixed by the matched parameter
    counts. Whatever the kernels cost, the hybrid's growth from the first to the last context is
    (1 + y T1) / (1 + y T0) with y = per_token / fixed, and the speed ratio at ``at`` is
    (alpha + r y at) / (1 + y at), which rises with y when r > alpha. So the largest ratio at ``at``
    that a growth of at most ``growth`` allows is the ratio at y = (growth - 1) / (T1 - growth T0)."""
    (a_h, c_h), (a_t, c_t) = hybrid, transformer
    r, alpha = c_t / c_h, a_t / a_h
    t0, t1 = contexts[0], contexts[-1]

    def speed_ratio(y: float) -> float:
        return (alpha + r * y * at) / (1 + y * at)

    y_fit, y_goal = c_h / a_h, (growth - 1) / (t1 - growth * t0)
    return {"per_token_ratio": r, "fixed_ratio": alpha,
            "fitted_growth": (1 + y_fit * t1) / (1 + y_fit * t0), f"fitted_speed_ratio_at_{at}": speed_ratio(y_fit),
            f"max_speed_ratio_at_{at}_with_growth_{growth}": speed_ratio(y_goal)}


def cost_model(by: dict, contexts: list[int]) -> dict:
    """Per run, the least-squares line through its step times, and for each hybrid / Transformer pair
    the trade-off between the two goals that the lines imply (``goal_tradeoff``)."""
    lines = {}
    for model in sorted({m for m, _ in by}):
        points = [(c, by[(model, c)]["ms_per_step"]) for c in contexts if (model, c) in by]
        if len(points) >= 2:
            lines[model] = line_fit(points)
    out = {"step_time_fit": {m: {"fixed_ms": a, "ms_per_1k_context": 1024 * b} for m, (a, b) in lines.items()}}
    for suffix in ("", "-compiled"):
        h, t = lines.get("hybrid" + suffix), lines.get("transformer" + suffix)
        if h and t and contexts[-1] >= 16384:
            out["tradeoff" + suffix.replace("-", "_")] = goal_tradeoff(h, t, contexts)
    return out


def summarize(results: list[dict], contexts: list[int], n_hybrid: int, n_tf: int) -> dict:
    """Per batch size: speed ratios between the runs at each context, the bytes-read ratio, and how
    much the hybrid's step time grows from the first context to the last (plain and compiled)."""
    summary = {}
    for batch in (1, 8):
        by = {(r["model"], r["context"]): r for r in results if r["batch"] == batch}

        def ratio(a: str, b: str, by=by) -> dict[int, float]:
            return {c: by[(a, c)]["tokens_per_s"] / by[(b, c)]["tokens_per_s"]
                    for c in contexts if (a, c) in by and (b, c) in by}

        def growth(model: str, by=by) -> float | None:
            first, last = (model, contexts[0]), (model, contexts[-1])
            return by[last]["ms_per_step"] / by[first]["ms_per_step"] if first in by and last in by else None

        summary[f"batch{batch}"] = {
            "hybrid_over_transformer_speed": ratio("hybrid", "transformer"),
            "hybrid_over_hf_speed": ratio("hybrid", "hf-hybrid"),
            "compiled_hybrid_over_compiled_transformer_speed": ratio("hybrid-compiled", "transformer-compiled"),
            "compiled_over_plain_hybrid_speed": ratio("hybrid-compiled", "hybrid"),
            "compiled_over_plain_transformer_speed": ratio("transformer-compiled", "transformer"),
            # bytes a step reads, weights (fp32) + cache: the ratio a purely bandwidth-bound step would show
            "bytes_per_step_transformer_over_hybrid": {
                c: (4 * n_tf + by[("transformer", c)]["cache_mb"] * 2**20)
                / (4 * n_hybrid + by[("hybrid", c)]["cache_mb"] * 2**20)
                for c in contexts if ("hybrid", c) in by and ("transformer", c) in by},
            "hybrid_step_time_growth": growth("hybrid"),
            "compiled_hybrid_step_time_growth": growth("hybrid-compiled"),
            "cost_model": cost_model(by, contexts),
        }
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-hf", action="store_true", help="leave out the transformers run")
    ap.add_argument("--skip-compiled", action="store_true", help="leave out the static-cache compiled runs")
    ap.add_argument("--out", default=str(ROOT / "results" / "decode_context.json"))
    ap.add_argument("--child", nargs=4, metavar=("IMPL", "PATH", "CTX", "BATCH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.child:
        impl, path, ctx, batch = a.child
        print(json.dumps(measure(impl, Path(path), int(ctx), int(batch), a.new_tokens)))
        return
    from chimera.models import HybridConfig, HybridLM, count_parameters

    hybrid_cfg = HybridConfig(pattern=HYBRID, **COMMON)
    n_hybrid = count_parameters(hybrid_cfg)["total"]
    tf_cfg = HybridConfig(pattern=transformer_pattern(n_hybrid), **COMMON)
    n_tf = count_parameters(tf_cfg)["total"]
    print(f"hybrid {HYBRID} ({n_hybrid / 1e6:.1f}M params) vs transformer {tf_cfg.pattern} ({n_tf / 1e6:.1f}M)")
    contexts = [256, 1024] if a.quick else [1024, 4096, 16384, 32768]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, cfg in (("hybrid", hybrid_cfg), ("transformer", tf_cfg)):
            torch.manual_seed(0)
            paths[name] = Path(tmp) / name
            HybridLM(cfg).save_pretrained(paths[name])
        runs = [("hybrid", "ours"), ("transformer", "ours")] + ([] if a.skip_hf else [("hf-hybrid", "hf")])
        if not a.skip_compiled:
            runs += [("hybrid-compiled", "static"), ("transformer-compiled", "static")]
        for batch in (1, 8):
            for ctx in contexts:
                for model, impl in runs:
                    path = paths["transformer" if model.startswith("transformer") else "hybrid"]
                    cmd = [sys.executable, __file__, "--new-tokens", str(a.new_tokens), "--threads", str(a.threads),
                           "--child", impl, str(path), str(ctx), str(batch)]
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode != 0:
                        print(f"{model} ctx {ctx} b {batch} failed: {out.stderr[-1500:]}")
                        continue
                    r = {"model": model, **json.loads(out.stdout.strip().splitlines()[-1])}
                    results.append(r)
                    print(f"b={batch} ctx={ctx:>6} {model:<12} {r['tokens_per_s']:>8.1f} tok/s "
                          f"{r['ms_per_step']:>8.1f} ms/step  cache {r['cache_mb']:>8.1f} MB  "
                          f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    summary = summarize(results, contexts, n_hybrid, n_tf)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"hybrid_pattern": HYBRID, "transformer_pattern": tf_cfg.pattern, "hybrid_params": n_hybrid,
            "transformer_params": n_tf, "sizes": COMMON, "new_tokens": a.new_tokens, "threads": a.threads,
            "torch": torch.__version__}
    out.write_text(json.dumps({"meta": meta, "summary": summary, "results": results}, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print(json.dumps(summary, indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
