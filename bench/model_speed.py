"""Ours vs transformers' NemotronH on the CPU, same weights, side by side in one run.

Measures prefill tokens/s at 512 and 4096 tokens, decode tokens/s at contexts 512 and 4096, and
peak resident memory. Each measurement runs in its own subprocess so peak memory is its own.
Writes results/model_speed.json.

    python bench/model_speed.py            # full run (several minutes)
    python bench/model_speed.py --quick    # small sizes, to check the script
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# A Nemotron-H-like layout at laptop size: ~8% attention, MLP between mixers, MoE variant too.
CONFIGS = {
    "hybrid-dense": dict(pattern="M-M-M-M*-M-M-", hidden_size=512, num_attention_heads=8, num_key_value_heads=2,
                         head_dim=64, intermediate_size=1536, mamba_num_heads=16, mamba_head_dim=64, n_groups=2,
                         ssm_state_size=64, chunk_size=128, vocab_size=272),
    "hybrid-moe": dict(pattern="MEMEM*EMEME", hidden_size=512, num_attention_heads=8, num_key_value_heads=2,
                       head_dim=64, intermediate_size=1536, mamba_num_heads=16, mamba_head_dim=64, n_groups=2,
                       ssm_state_size=64, chunk_size=128, vocab_size=272, n_routed_experts=16,
                       num_experts_per_tok=4, moe_intermediate_size=384, moe_shared_expert_intermediate_size=768),
}


def make_checkpoint(name: str, path: Path) -> None:
    from chimera.models import HybridConfig, HybridLM

    torch.manual_seed(0)
    HybridLM(HybridConfig(**CONFIGS[name])).save_pretrained(path)


def load(impl: str, path: Path):
    if impl == "ours":
        from chimera.models import HybridLM

        return HybridLM.from_pretrained(path).eval()
    from transformers import NemotronHForCausalLM

    return NemotronHForCausalLM.from_pretrained(path).eval()


@torch.no_grad()
def measure(impl: str, path: Path, task: str, context: int, new_tokens: int, repeats: int) -> dict:
    """Run in a child process: time one task and report its peak RSS."""
    torch.manual_seed(0)
    model = load(impl, path)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ids = torch.randint(16, 272, (1, context))
    times = []
    for _ in range(repeats):
        if task == "prefill":
            t0 = time.perf_counter()
            if impl == "ours":
                model(ids, logits_to_keep=1)
            else:
                model(ids, use_cache=False, logits_to_keep=1)
            times.append(time.perf_counter() - t0)
            continue
        # decode: prefill the context into a cache (untimed), then time new_tokens single steps
        if impl == "ours":
            cache = model.new_cache(1, context + new_tokens)
            nxt = model(ids, cache=cache, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
            t0 = time.perf_counter()
            for _ in range(new_tokens):
                nxt = model(nxt, cache=cache, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        else:
            out = model(ids, use_cache=True, logits_to_keep=1)
            cache, nxt = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
            t0 = time.perf_counter()
            for _ in range(new_tokens):
                out = model(nxt, cache=cache, use_cache=True, logits_to_keep=1)
                cache, nxt = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        times.append(time.perf_counter() - t0)
    best = min(times)
    tokens = context if task == "prefill" else new_tokens
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"impl": impl, "task": task, "context": context, "tokens_per_s": tokens / best, "seconds": best,
            "peak_rss_mb": peak / 1024, "rss_over_model_mb": (peak - base_rss) / 1024}


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small contexts and one repeat")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "model_speed.json"))
    ap.add_argument("--child", nargs=6, metavar=("IMPL", "PATH", "TASK", "CTX", "NEW", "REPEATS"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.child:
        impl, path, task, ctx, new, reps = a.child
        print(json.dumps(measure(impl, Path(path), task, int(ctx), int(new), int(reps))))
        return
    contexts = [128, 256] if a.quick else [512, 4096]
    new_tokens, repeats = (8, 1) if a.quick else (64, 3)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.configs:
            path = Path(tmp) / name
            make_checkpoint(name, path)
            for task in ("prefill", "decode"):
                for ctx in contexts:
                    row = {}
                    for impl in ("ours", "hf"):
                        r = run_child([impl, str(path), task, str(ctx), str(new_tokens), str(repeats)])
                        row[impl] = r
                        results.append({"config": name, **r})
                    ratio = row["ours"]["tokens_per_s"] / row["hf"]["tokens_per_s"]
                    mem = row["ours"]["peak_rss_mb"] / row["hf"]["peak_rss_mb"]
                    results.append({"config": name, "task": task, "context": ctx, "speed_ratio_ours_over_hf": ratio,
                                    "peak_rss_ratio_ours_over_hf": mem})
                    print(f"{name:<13} {task:<8} ctx {ctx:>5}: ours {row['ours']['tokens_per_s']:>9.1f} tok/s  "
                          f"hf {row['hf']['tokens_per_s']:>9.1f} tok/s  ratio {ratio:5.2f}x  "
                          f"peak RSS {row['ours']['peak_rss_mb']:.0f} vs {row['hf']['peak_rss_mb']:.0f} MB",
                          flush=True)
    import transformers

    meta = {"torch": torch.__version__, "transformers": transformers.__version__, "threads": a.threads,
            "machine": platform.machine(), "new_tokens": new_tokens, "repeats": repeats, "configs": CONFIGS}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
