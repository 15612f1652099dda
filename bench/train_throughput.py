"""Training tokens/s: chimera vs transformers' NemotronH on the same weights and batch, one run.

Times whole optimizer steps (forward, backward, AdamW) on the CPU for a dense and an MoE hybrid,
and ours under the FP8 and NVFP4 recipes (CPU emulation: this measures the cost of emulating,
not the speed of real low-precision GEMMs). Writes results/train_throughput.json.

    python bench/train_throughput.py
    python bench/train_throughput.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from model_speed import CONFIGS  # noqa: E402


def step_fn(impl: str, path: Path, precision: str):
    if impl == "hf":
        from transformers import NemotronHForCausalLM

        model = NemotronHForCausalLM.from_pretrained(path).train()

        def loss_of(x, y):
            return F.cross_entropy(model(x, use_cache=False).logits.flatten(0, 1), y.flatten())
    else:
        from chimera.models import HybridLM
        from chimera.precision import FP8Recipe, NVFP4Recipe, convert

        model = HybridLM.from_pretrained(path).train()
        if precision != "none":
            convert(model, FP8Recipe() if precision == "fp8" else NVFP4Recipe())

        def loss_of(x, y):
            return F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(x, y):
        loss = loss_of(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "train_throughput.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.quick:
        a.batch, a.seq, a.steps = 2, 64, 2
    from chimera.models import HybridConfig, HybridLM

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in CONFIGS.items():
            torch.manual_seed(0)
            path = Path(tmp) / name
            HybridLM(HybridConfig(**kw)).save_pretrained(path)
            for impl, precision in (("ours", "none"), ("hf", "none"), ("ours", "fp8"), ("ours", "nvfp4")):
                torch.manual_seed(0)
                step = step_fn(impl, path, precision)
                ids = torch.randint(16, 272, (a.batch, a.seq + 1))
                x, y = ids[:, :-1], ids[:, 1:]
                step(x, y)  # warm-up
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    step(x, y)
                dt = (time.perf_counter() - t0) / a.steps
                r = {"config": name, "impl": impl, "precision": precision,
                     "tokens_per_s": a.batch * a.seq / dt, "seconds_per_step": dt}
                rows.append(r)
                print(f"{name:<13} {impl:<5} {precision:<6} {r['tokens_per_s']:>9.1f} tok/s", flush=True)
    ratios = {}
    for name in CONFIGS:
        by = {(r["impl"], r["precision"]): r["tokens_per_s"] for r in rows if r["config"] == name}
        ratios[name] = {"ours_over_hf": by[("ours", "none")] / by[("hf", "none")],
                        "fp8_emulation_cost": by[("ours", "none")] / by[("ours", "fp8")],
                        "nvfp4_emulation_cost": by[("ours", "none")] / by[("ours", "nvfp4")]}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"batch": a.batch, "seq": a.seq, "threads": a.threads, "ratios": ratios,
                               "results": rows}, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
