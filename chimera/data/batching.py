"""Token batches for LM training from synthetic tasks: chat-formatted SFT examples with loss on the
assistant turn only, or packed pretraining sequences separated by <eos>. Every batch is a pure
function of (seed, step, micro-step), so a resumed run sees exactly the data it would have seen."""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence

import torch

from chimera.data.synthetic import Example, make_task, sample_split
from chimera.tokenizer import ByteTokenizer, Message

IGNORE = -100


def chat_tokens(tok: ByteTokenizer, ex: Example, thinking: bool = True,
                cut: int | None = None) -> tuple[list[int], int]:
    """The chat-formatted example and the index where the assistant's answer (the loss) starts.

    ``cut`` keeps only the first ``cut`` characters of the trace before ``</think>``: what a thinking
    budget that closes the segment early leaves, so the model learns to answer from there."""
    prompt = tok.apply_chat_template([Message("user", ex.prompt)], add_generation_prompt=True,
                                     enable_thinking=thinking)
    trace = ex.thinking if cut is None else ex.thinking[:cut]
    completion = (trace + "</think>" if thinking else "") + ex.answer + "<eos>"
    p = tok.encode(prompt)
    return p + tok.encode(completion), len(p)


def prompt_tokens(tok: ByteTokenizer, prompt: str, thinking: bool = True) -> list[int]:
    return tok.encode(tok.apply_chat_template([Message("user", prompt)], enable_thinking=thinking))


def parse_answer(text: str) -> str:
    """The answer after </think>, up to <eos>."""
    text = text.split("</think>", 1)[-1]
    return text.split("<eos>", 1)[0].strip()


LENGTH_PROBES = 2000
"""Examples per task sampled to find its longest (each task's sizes are bounded)."""


@functools.cache
def longest_example(task: str, thinking: bool = True) -> int:
    """Tokens (inputs) the longest of ``LENGTH_PROBES`` seeded SFT examples of ``task`` needs."""
    rng, t, tok = random.Random(f"lengths/{task}"), make_task(task), ByteTokenizer()
    return max(len(chat_tokens(tok, t.sample(rng), thinking)[0]) - 1 for _ in range(LENGTH_PROBES))


class TaskBatcher:
    """Deterministic batches over a mix of synthetic tasks."""

    def __init__(self, tasks: Sequence[str], seq_len: int, batch_size: int, seed: int,
                 mode: str = "sft", thinking: bool = True, thinking_off: float = 0.0, thinking_cut: float = 0.0):
        if mode not in ("sft", "pretrain"):
            raise ValueError(f"mode={mode!r} (expected 'sft' or 'pretrain')")
        for name, frac in (("thinking_off", thinking_off), ("thinking_cut", thinking_cut)):
            if not 0.0 <= frac <= 1.0:
                raise ValueError(f"data.{name}={frac} is a fraction of the examples; give a value in [0, 1]")
        if thinking_off + thinking_cut > 1.0:
            raise ValueError(f"data.thinking_off + data.thinking_cut = {thinking_off + thinking_cut:g} > 1; "
                             "they are fractions of the same examples")
        if not thinking and (thinking_off or thinking_cut):
            raise ValueError("data.thinking_off / data.thinking_cut mix thinking-off or cut traces into thinking-on "
                             "data; with --data.no-thinking every example is already thinking-off")
        self.tok = ByteTokenizer()
        self.tasks = [make_task(t) for t in tasks]
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.mode, self.thinking = mode, thinking
        self.thinking_off, self.thinking_cut = thinking_off, thinking_cut
        if mode == "sft":
            self._check_seq_len()

    def _check_seq_len(self) -> None:
        """Refuse a seq_len that some examples of a task do not fit, before the first step (not mid-run)."""
        for task in self.tasks:
            need = longest_example(task.name, self.thinking)
            if need > self.seq_len:
                raise ValueError(f"data.seq_len={self.seq_len} is too short for task {task.name!r}: its examples "
                                 f"need up to {need} tokens; set --data.seq-len {need} or more")

    def _example_tokens(self, ex: Example, rng: random.Random) -> tuple[list[int], int]:
        """The example with thinking on, off (a ``thinking_off`` fraction) or cut short (``thinking_cut``).
        No extra random draw when both fractions are 0, so such runs see the data they always saw."""
        if not (self.thinking_off or self.thinking_cut):
            return chat_tokens(self.tok, ex, self.thinking)
        r = rng.random()
        if r < self.thinking_off:
            return chat_tokens(self.tok, ex, thinking=False)
        if r < self.thinking_off + self.thinking_cut:
            return chat_tokens(self.tok, ex, cut=rng.randrange(len(ex.thinking) + 1))
        return chat_tokens(self.tok, ex)

    def _rng(self, step: int, micro: int, split: int = 0) -> random.Random:
        return random.Random(f"{self.seed}/{split}/{step}/{micro}")

    def batch(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs (b, T) and targets (b, T) with IGNORE where no loss applies."""
        rng = self._rng(step, micro)
        T = self.seq_len
        x = torch.full((self.batch_size, T), self.tok.pad_id, dtype=torch.long)
        y = torch.full((self.batch_size, T), IGNORE, dtype=torch.long)
        for i in range(self.batch_size):
            if self.mode == "sft":
                ex = sample_split(rng.choice(self.tasks), rng, held_out=False)
                ids, start = self._example_tokens(ex, rng)
                if len(ids) > T + 1:
                    raise ValueError(f"the example {ex.prompt!r} needs {len(ids) - 1} tokens; "
                                     f"raise data.seq_len above {T}")
                n = len(ids) - 1
                x[i, :n] = torch.tensor(ids[:-1])
                tgt = torch.tensor(ids[1:])
                tgt[: start - 1] = IGNORE
                y[i, :n] = tgt
            else:
                stream: list[int] = []
                while len(stream) < T + 1:
                    ex = sample_split(rng.choice(self.tasks), rng, held_out=False)
                    stream += self._example_tokens(ex, rng)[0]
                x[i] = torch.tensor(stream[:T])
                y[i] = torch.tensor(stream[1:T + 1])
        return x, y

    def held_out(self, n: int) -> list[tuple[str, Example]]:
        """n held-out (task name, example) pairs, the same for every call."""
        rng = random.Random(f"{self.seed}/held-out")
        out = []
        for i in range(n):
            task = self.tasks[i % len(self.tasks)]
            out.append((task.name, sample_split(task, rng, held_out=True)))
        return out
