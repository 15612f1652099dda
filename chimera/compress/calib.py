"""Calibration batches for importance estimation: synthetic tasks, a text file, or token ids.

Every source yields ``(inputs, targets)`` pairs of shape (b, T), targets shifted by one (IGNORE where
no token follows), so the same batches serve activation statistics and the depth-by-loss metric.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from chimera.data.batching import IGNORE, TaskBatcher

Batch = tuple[torch.Tensor, torch.Tensor]


def _windows(ids: torch.Tensor, seq_len: int, samples: int, batch_size: int) -> list[Batch]:
    """(N, L) ids -> batches of next-token pairs (inputs ids[:, :-1], targets ids[:, 1:])."""
    ids = ids[:samples]
    return [(ids[i:i + batch_size, :-1], ids[i:i + batch_size, 1:]) for i in range(0, ids.size(0), batch_size)]


def calibration_batches(*, task: str = "", file: str = "", ids: str = "", samples: int = 64, seq_len: int = 96,
                        batch_size: int = 16, seed: int = 0, tokenizer=None, vocab_size: int | None = None
                        ) -> list[Batch]:
    """``samples`` calibration sequences from exactly one source: ``task`` (comma-separated synthetic task
    names, packed chat examples), ``file`` (a text file tokenised with ``tokenizer``) or ``ids`` (a .npy
    array of token ids, (N, L) or flat)."""
    given = [name for name, v in (("--calib-task", task), ("--calib-file", file), ("--calib-ids", ids)) if v]
    if len(given) != 1:
        raise ValueError(f"give exactly one calibration source (--calib-task TASK, --calib-file TEXT or "
                         f"--calib-ids FILE.npy); got {', '.join(given) or 'none'}")
    if samples <= 0 or seq_len <= 1:
        raise ValueError(f"--calib-samples={samples} must be positive and seq_len={seq_len} above 1")
    if task:
        batcher = TaskBatcher(task.split(","), seq_len, batch_size, seed, mode="pretrain")
        out, n = [], 0
        while n < samples:
            x, y = batcher.batch(step=len(out))
            take = min(batch_size, samples - n)
            out.append((x[:take], y[:take]))
            n += take
        return out
    if file:
        path = Path(file)
        if not path.exists():
            raise FileNotFoundError(f"--calib-file {path} does not exist")
        if tokenizer is None:
            raise ValueError("--calib-file needs the checkpoint's tokenizer")
        flat = torch.tensor(tokenizer.encode(path.read_text()), dtype=torch.long)
        n = min(samples, flat.numel() // (seq_len + 1))
        if n == 0:
            raise ValueError(f"--calib-file {path} has {flat.numel()} tokens, fewer than one sequence of "
                             f"{seq_len + 1}; give a longer text or a shorter --calib-seq-len")
        rows = flat[:n * (seq_len + 1)].view(n, seq_len + 1)
    else:
        path = Path(ids)
        if not path.exists():
            raise FileNotFoundError(f"--calib-ids {path} does not exist")
        arr = np.load(path)
        if not np.issubdtype(arr.dtype, np.integer) or arr.ndim not in (1, 2):
            raise ValueError(f"--calib-ids {path} holds a {arr.dtype} array of shape {arr.shape}; expected "
                             f"integer token ids, (N, L) or flat")
        if arr.ndim == 1:
            n = arr.size // (seq_len + 1)
            if n == 0:
                raise ValueError(f"--calib-ids {path} has {arr.size} ids, fewer than one sequence of {seq_len + 1}")
            arr = arr[:n * (seq_len + 1)].reshape(n, seq_len + 1)
        if arr.shape[1] < 2:
            raise ValueError(f"--calib-ids {path} has rows of length {arr.shape[1]}; need at least 2 tokens")
        rows = torch.from_numpy(arr.astype(np.int64))
    if vocab_size is not None and (rows.min() < 0 or rows.max() >= vocab_size):
        raise ValueError(f"calibration ids range over [{int(rows.min())}, {int(rows.max())}], outside the model's "
                         f"vocabulary [0, {vocab_size})")
    return _windows(rows, seq_len, samples, batch_size)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy and the number of scored tokens."""
    mask = targets != IGNORE
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                             reduction="sum")
    return float(loss), int(mask.sum())
