"""Self-speculative decoding with MTP on a tiny model trained with MTP on predictable tasks.

Trains a model with MTP depths (default ``tiny-mtp-deep``: ``MEM*MEMEM*ME/*E/*E`` with one MTP
block shared by both depths; ``tiny-mtp``: ``MEM*ME/*E/*E``) on the synthetic addition and
sorting tasks (their reasoning traces and answers are determined by the prompt), then answers
held-out prompts with plain greedy decoding and with speculative decoding (one torch thread by
default; after a warm-up pass, each prompt is run ``--repeats`` times by each method in turn
and its best time counts), and reports tokens/s, the acceptance rate and whether both produced the same tokens.
It also times both on the compiled static-cache fast path (``compile=True``: plain decoding one
compiled step per token, speculative decoding one compiled graph per round) and reports that
speedup too. Tokens/s are end to end (prefill included) and, as ``decode_*``, for the decoding
phase alone: each timed pass is followed by a pass of the same method over the same prompts up to
the first token (its prefill, plus for speculative decoding the MTP depths' prefill and first
drafts), and that time is subtracted.

With ``--temperature T`` (and ``--top-k`` / ``--top-p``) both methods sample: plain decoding with
``generate``, speculative decoding by speculative sampling (the drafts are drawn from the MTP
depths' distributions and kept or corrected so that every token follows the main model's). Each
prompt has its own seed, the same in every repeat, so a method's outputs and token count do not
change between repeats; the two methods draw different samples, so each one's tokens/s is over
its own tokens. Every method's answers are checked by the tasks' verifiers (``accuracy``).

    python experiments/speculative_decoding.py                 # configs/speculative.json: tiny-mtp-deep, 1200 steps
    python experiments/speculative_decoding.py --steps 100     # a quick check
    python experiments/speculative_decoding.py --model-dir runs/<run>/model --temperature 1.0
Writes results/speculative_decoding.json (greedy) or results/speculative_decoding_t<T>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from chimera.config import load_preset
from chimera.data.batching import TaskBatcher, parse_answer, prompt_tokens
from chimera.data.synthetic import make_task
from chimera.inference import SamplingConfig, generate, speculative_generate
from chimera.models import HybridLM
from chimera.train.lm import TrainLMConfig, train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=0, help="0: the preset's (configs/speculative.json)")
    ap.add_argument("--model", default="",
                    help="a named size with MTP layers (tiny-mtp-deep, tiny-mtp, small-mtp); default: the preset's")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--model-dir", default="", help="reuse a trained checkpoint instead of training")
    ap.add_argument("--train-threads", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for decoding (one is fastest for models this small: their steps are "
                         "chains of tiny kernels)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed runs of each method on each prompt, alternating; each prompt's best counts")
    ap.add_argument("--skip-compiled", action="store_true",
                    help="leave out the compiled fast path (plain and speculative)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy; else both methods sample")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--out", default="", help="default: results/speculative_decoding[_t<T>].json")
    a = ap.parse_args()
    sampling = SamplingConfig(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p)
    sampler = sampling.sampler()
    out_path = Path(a.out or ROOT / "results" / ("speculative_decoding.json" if sampler.greedy else
                                                 f"speculative_decoding_t{a.temperature:g}.json"))
    torch.set_num_threads(a.train_threads)
    if a.model_dir:
        model_dir = Path(a.model_dir)
    else:
        cfg = load_preset(TrainLMConfig, ROOT / "configs" / "speculative.json")  # what the README trains
        cfg = replace(cfg, model=a.model or cfg.model, steps=a.steps or cfg.steps,
                      run=replace(cfg.run, out_dir=str(ROOT / "runs"), eval_every=a.steps or cfg.steps,
                                  threads=a.train_threads))
        model_dir = train(cfg).path / "model"
    model = HybridLM.from_pretrained(model_dir)
    batcher = TaskBatcher(("add", "sort"), 96, 1, seed=0)
    tok = batcher.tok
    held_out = batcher.held_out(a.prompts)
    prompts = [prompt_tokens(tok, ex.prompt) for _, ex in held_out]
    new = 64
    torch.set_num_threads(a.threads)

    stats: dict[str, list] = {}

    def run(name: str, i: int, max_new: int, record: bool = False) -> list[int]:
        """Prompt i by one method; prompt i's seed is i."""
        if name.startswith("speculative"):
            out, st = speculative_generate(model, prompts[i], max_new, (tok.eos_id,), compile=name.endswith("compiled"),
                                           sampler=sampler, seed=i)
            if record:
                stats.setdefault(name, []).append(st)
            return out
        cfg = SamplingConfig(max_new, a.temperature, a.top_k, a.top_p, stop_tokens=(tok.eos_id,), seed=i)
        return generate(model, [prompts[i]], cfg, compile=name.endswith("compiled"))[0]

    names = ["plain", "speculative"] + ([] if a.skip_compiled else ["plain_compiled", "speculative_compiled"])
    # warm-up (allocations, compiling the fast path) and the outputs compared
    outputs = {name: [run(name, i, new, record=True) for i in range(len(prompts))] for name in names}
    # per prompt, the methods in turn, each run in full and up to its first token (its prefill);
    # each prompt's best time over the repeats counts, which keeps a noisy machine's pauses out
    best = {(name, full): [float("inf")] * len(prompts) for name in names for full in (True, False)}
    for _ in range(a.repeats):
        for i in range(len(prompts)):
            for name in names:
                for full in (True, False):
                    t0 = time.perf_counter()
                    run(name, i, new if full else 1)
                    best[name, full][i] = min(best[name, full][i], time.perf_counter() - t0)
    seconds = {name: sum(best[name, True]) for name in names}
    prefill = {name: sum(best[name, False]) for name in names}
    n_tokens = {name: sum(len(o) for o in outputs[name]) for name in names}
    rate = {name: n_tokens[name] / seconds[name] for name in names}
    decode_rate = {name: (n_tokens[name] - len(prompts)) / (seconds[name] - prefill[name]) for name in names}
    accuracy = {name: sum(make_task(task).verify(ex.prompt, parse_answer(tok.decode(out)))
                          for (task, ex), out in zip(held_out, outputs[name])) / len(prompts) for name in names}

    def acceptance(name: str) -> float:
        return sum(st.accepted for st in stats[name]) / max(1, sum(st.drafted for st in stats[name]))

    result = {
        "model": str(model_dir), "pattern": model.config.full_pattern, "prompts": len(prompts),
        "sampling": {"temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p},
        "tokens": n_tokens, "accuracy": accuracy, "threads": a.threads, "repeats": a.repeats, "seconds": seconds,
        "prefill_seconds": prefill, "tokens_per_s": rate, "decode_tokens_per_s": decode_rate,
        "plain_tokens_per_s": rate["plain"], "speculative_tokens_per_s": rate["speculative"],
        "speedup": rate["speculative"] / rate["plain"],
        "decode_speedup": decode_rate["speculative"] / decode_rate["plain"],
        "acceptance_rate": acceptance("speculative"),
        # greedy: the same tokens; sampled, the two methods draw different samples (None)
        "identical_outputs": outputs["speculative"] == outputs["plain"] if sampler.greedy else None,
        **({} if a.skip_compiled else {
            "compiled_speedup": rate["speculative_compiled"] / rate["plain_compiled"],
            "compiled_decode_speedup": decode_rate["speculative_compiled"] / decode_rate["plain_compiled"],
            "compiled_acceptance_rate": acceptance("speculative_compiled"),
            # each method's compiled path drew the same tokens as its plain path
            "compiled_identical_outputs": outputs["plain_compiled"] == outputs["plain"]
            and outputs["speculative_compiled"] == outputs["speculative"]}),
        "example": tok.decode(prompts[0]) + tok.decode(outputs["speculative"][0]),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
