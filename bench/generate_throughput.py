"""Prefill and batched sampling throughput: chimera's inference engine vs transformers' NemotronH, same
weights, side by side in one run (measurements interleaved, repeated, the spread reported).

(a) prefill of 512 and 4096 tokens (one forward, logits of the last position);
(b) sampled generation (temperature 1) at batch 1, 8, 32 and 64: prompts of mixed lengths (8-48 tokens),
    up to ``--new-tokens`` each, four stop tokens (a random model emits one with ~1.5% chance a step,
    so rows finish at different times): chimera's ``generate_batch`` eager and compiled vs
    transformers' ``generate`` (left-padded, ``do_sample``, the same stop tokens as ``eos_token_id``).
    Tokens/s count the tokens each implementation returned up to its stop token, prefill included;
(c) the batch-1 decode step against its memory-bandwidth limit: the bytes a step must read (the fp32
    weights, the Mamba state, the KV cache) over the matrix-vector read bandwidth measured here (a
    weight-sized matrix times a vector, the access pattern of a decode step).

The model is the 38M-parameter Nemotron-H-like hybrid of bench/decode_context.py (24 layers, 2 of
them attention). One torch thread by default (``--threads``): the machine these numbers come from
has two cores, shared.

    python bench/generate_throughput.py            # -> results/generate_throughput.json
    python bench/generate_throughput.py --quick    # small sizes, to check the script
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(pattern="M-M-M-M*-M-M-M-M-M*-M-M-", hidden_size=512, num_attention_heads=8, num_key_value_heads=2,
              head_dim=64, intermediate_size=1536, mamba_num_heads=16, mamba_head_dim=64, n_groups=2,
              ssm_state_size=64, chunk_size=128, vocab_size=272)
STOPS = (17, 101, 202, 250)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "all": xs}


@torch.no_grad()
def prefill(ours, hf, lengths: list[int], repeats: int) -> list[dict]:
    rows = []
    for T in lengths:
        ids = torch.randint(16, 272, (1, T))
        ours(ids, logits_to_keep=1), hf(ids, use_cache=False, logits_to_keep=1)  # warm-up
        t_ours, t_hf = [], []
        for _ in range(repeats):
            t_ours.append(timed(ours, ids, logits_to_keep=1)[0])
            t_hf.append(timed(hf, ids, use_cache=False, logits_to_keep=1)[0])
        ratios = [h / o for o, h in zip(t_ours, t_hf)]
        rows.append({"tokens": T, "chimera_tokens_per_s": spread([T / t for t in t_ours]),
                     "transformers_tokens_per_s": spread([T / t for t in t_hf]), "speedup": spread(ratios)})
        print(f"prefill {T:>5}: chimera / transformers = {', '.join(f'{r:.2f}' for r in ratios)}", flush=True)
    return rows


def until_stop(tokens: list[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in STOPS:
            return tokens[:i + 1]
    return tokens


@torch.no_grad()
def hf_generate(hf, prompts: list[list[int]], new_tokens: int, seed: int) -> int:
    """transformers' generate on left-padded prompts; returns the tokens generated up to each stop token."""
    L = max(map(len, prompts))
    ids = torch.zeros(len(prompts), L, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):], mask[i, L - len(p):] = torch.tensor(p), 1
    torch.manual_seed(seed)
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=True, temperature=1.0,
                      top_k=0, top_p=1.0, eos_token_id=list(STOPS), pad_token_id=0)
    return sum(len(until_stop(row.tolist())) for row in out[:, L:])


def run(ours, prompts: list[list[int]], new_tokens: int, compile: bool, seed: int) -> int:
    """chimera's generate_batch; returns the tokens generated (each row up to its stop token)."""
    from chimera.inference import Sampler, generate_batch

    out = generate_batch(ours, prompts, sampler=Sampler(temperature=1.0), max_new_tokens=new_tokens,
                         stop_tokens=STOPS, seed=seed, compile=compile)
    return sum(len(c.tokens) for c in out)


@torch.no_grad()
def sampling(ours, hf, batches: list[int], new_tokens: int, repeats: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for b in batches:
        prompts = [torch.randint(16, 272, (int(torch.randint(8, 49, (1,), generator=g)),), generator=g).tolist()
                   for _ in range(b)]

        run(ours, prompts, new_tokens, True, 0)  # compiles (the first time) outside the timing
        rates: dict[str, list[float]] = {"eager": [], "compiled": [], "transformers": []}
        for r in range(repeats):
            for name, fn, args in (("eager", run, (ours, prompts, new_tokens, False, r)),
                                   ("compiled", run, (ours, prompts, new_tokens, True, r)),
                                   ("transformers", hf_generate, (hf, prompts, new_tokens, r))):
                seconds, n = timed(fn, *args)
                rates[name].append(n / seconds)
        row = {"batch": b, **{f"{k}_tokens_per_s": spread(v) for k, v in rates.items()},
               "compiled_over_transformers": spread([c / t for c, t in zip(rates["compiled"], rates["transformers"])]),
               "eager_over_transformers": spread([e / t for e, t in zip(rates["eager"], rates["transformers"])])}
        rows.append(row)
        print(f"sampling batch {b:>3}: compiled / transformers = "
              f"{row['compiled_over_transformers']['median']:.2f}, eager / transformers = "
              f"{row['eager_over_transformers']['median']:.2f}", flush=True)
    return rows


def matvec_bandwidth(nbytes: int, repeats: int = 20) -> float:
    """Bytes/s read by a matrix (of ``nbytes``, fp32) times a vector, the best of ``repeats``."""
    n = 2048
    W = torch.randn(nbytes // (4 * n), n)
    v = torch.randn(n)
    W @ v
    best = min(timed(torch.mv, W, v)[0] for _ in range(repeats))
    return W.numel() * 4 / best


@torch.no_grad()
def decode_limit(ours, context: int, steps: int) -> dict:
    """The compiled batch-1 decode step against the time its bytes take at the measured bandwidth."""
    from chimera.inference import Decoder
    from chimera.inference.decoder import RowSampling

    dec = Decoder(ours, 1, context + steps + 2, compile=True)
    tok = dec.prefill([torch.randint(16, 272, (context,)).tolist()], [[0]]).argmax(-1)
    greedy = RowSampling(torch.zeros(1), torch.zeros(1, dtype=torch.long), torch.ones(1), torch.full((1,), -1),
                         torch.zeros(1, 272), filtered=False)
    u = torch.zeros(1)
    for _ in range(3):
        tok = dec.step(tok, u, greedy)[0]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        tok = dec.step(tok, u, greedy)[0]
        times.append(time.perf_counter() - t0)
    weights = sum(p.numel() * p.element_size() for p in ours.parameters())
    state = dec.cache.nbytes()
    read = weights + state["total"]
    bandwidth = matvec_bandwidth(weights)
    step = statistics.median(times)
    return {"context": context, "step_ms": 1000 * step, "bytes_read": read, "weight_bytes": weights,
            "state_bytes": state, "matvec_bandwidth_gb_s": bandwidth / 1e9,
            "bandwidth_limit_ms": 1000 * read / bandwidth, "step_over_limit": step / (read / bandwidth)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "results" / "generate_throughput.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import NemotronHForCausalLM

    from chimera.models import HybridConfig, HybridLM

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        HybridLM(HybridConfig(**CONFIG)).save_pretrained(d)
        ours, hf = HybridLM.from_pretrained(d).eval(), NemotronHForCausalLM.from_pretrained(d).eval()
    lengths, batches = ([128, 512], [1, 8]) if a.quick else ([512, 4096], [1, 8, 32, 64])
    new_tokens = 16 if a.quick else a.new_tokens
    result = {
        "meta": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                 "threads": a.threads, "machine": platform.machine(), "repeats": a.repeats, "config": CONFIG,
                 "parameters": sum(p.numel() for p in ours.parameters()), "new_tokens": new_tokens,
                 "stop_tokens": STOPS},
        "prefill": prefill(ours, hf, lengths, a.repeats),
        "sampling": sampling(ours, hf, batches, new_tokens, a.repeats),
        "decode_limit": decode_limit(ours, 128, 16 if a.quick else 64),
    }
    lim = result["decode_limit"]
    print(f"decode step {lim['step_ms']:.2f} ms vs bandwidth limit {lim['bandwidth_limit_ms']:.2f} ms "
          f"({lim['step_over_limit']:.2f}x; {lim['matvec_bandwidth_gb_s']:.1f} GB/s)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
