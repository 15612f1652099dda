"""Decode attention, side by side: chimera's C++ kernel (``chimera.models.decode_attention``) vs
torch's ``F.scaled_dot_product_attention`` on the same operands, in one process, interleaved.

Shapes are those of a decode step: the query heads of each KV group as rows (g = 4), against a KV
cache of T positions, for the head layout of bench/decode_context.py's models (2 KV heads of 64)
and of Nemotron-H-8B (8 KV heads of 128). Each cell reports the median of ``--repeats`` calls and
the rate at which the call gets through the cache's keys and values (GB/s). A second sweep varies
the query rows per KV head (a speculative block of n tokens has 4n) up to the kernel's
``MAX_ROWS``, past which ``attend`` hands over to SDPA, and a third the caches of a bf16 / fp16
model (the kernel widens them to float32 as it loads them).

    python bench/decode_attention.py            # -> results/decode_attention.json
    python bench/decode_attention.py --quick    # T = 1k / 4k, to check the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from chimera.models import decode_attention

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"bench-model (2 x 64)": (2, 64), "nemotron-h-8b (8 x 128)": (8, 128)}
GROUP = 4


def median_ms(fn, args: tuple, repeats: int) -> float:
    fn(*args)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def measure(layout: str, kv_heads: int, head_dim: int, batch: int, rows: int, ctx: int, repeats: int,
            dtype: torch.dtype = torch.float32) -> dict:
    torch.manual_seed(0)
    q = torch.randn(batch, kv_heads, rows, head_dim, dtype=dtype)
    k, v = (torch.randn(batch, kv_heads, ctx, head_dim, dtype=dtype) for _ in range(2))
    sdpa = median_ms(F.scaled_dot_product_attention, (q, k, v), repeats)
    ours = median_ms(decode_attention.attend, (q, k, v), repeats)
    gb = 2 * k.numel() * k.element_size() / 1e9
    name = str(dtype).removeprefix("torch.")
    row = {"layout": layout, "dtype": name, "batch": batch, "rows": rows, "context": ctx,
           "sdpa_ms": sdpa, "kernel_ms": ours, "speedup": sdpa / ours,
           "sdpa_gb_per_s": gb / sdpa * 1e3, "kernel_gb_per_s": gb / ours * 1e3}
    print(f"{layout:<24} {name:<8} b={batch} rows={rows:>3} T={ctx:>6}  "
          f"sdpa {sdpa:8.3f} ms ({row['sdpa_gb_per_s']:5.1f} GB/s)  "
          f"kernel {ours:8.3f} ms ({row['kernel_gb_per_s']:5.1f} GB/s)  {row['speedup']:.2f}x", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(ROOT / "results" / "decode_attention.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not decode_attention.build():
        raise SystemExit("the decode-attention kernel is not available here (see the warning above)")
    contexts = [1024, 4096] if a.quick else [1024, 4096, 16384, 32768]
    results = []
    for layout, (kv_heads, head_dim) in LAYOUTS.items():
        for batch in (1, 8):
            if batch * kv_heads * head_dim > 2 * 8 * 64 and not a.quick:
                continue  # batch 8 of the 8B layout at 32k is 4 GB of cache; batch 1 shows the same
            for ctx in contexts:
                results.append(measure(layout, kv_heads, head_dim, batch, GROUP, ctx, a.repeats))
    layout, (kv_heads, head_dim) = next(iter(LAYOUTS.items()))
    for n_rows in (16, 32, 64, decode_attention.MAX_ROWS):
        results.append(measure(layout, kv_heads, head_dim, 1, n_rows, contexts[1], a.repeats))
    for dtype in (torch.bfloat16, torch.float16):
        for ctx in contexts:
            results.append(measure(layout, kv_heads, head_dim, 1, GROUP, ctx, a.repeats, dtype))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"group": GROUP, "threads": a.threads, "repeats": a.repeats, "torch": torch.__version__}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
