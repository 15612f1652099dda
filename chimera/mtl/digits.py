"""Multi-digit: the Multi-MNIST construction (Sabour et al. 2017; Sener & Koltun 2018) at 8x8 scale,
from scikit-learn's bundled ``digits`` set (1,797 images, 16 grey levels; no download).

Each image overlays two digits on a ``(8 + offset)``-pixel square canvas: the left digit at the top
left, the right digit shifted by ``offset`` down and right, the pixel-wise maximum where they overlap.
The tasks are the left digit's class and the right digit's class. As Multi-MNIST keeps MNIST's test
images apart from its training images, the source digits are split first (seeded), so no source
image appears in two splits; within a split every source image is the left digit of
``pairs_per_image`` pairs, each with a right digit drawn from the same split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TASKS = ("left", "right")


@dataclass(frozen=True)
class MultiDigit:
    """One split: images (N, 1, S, S) in [0, 1], the two labels, and which source digits made each image."""

    images: torch.Tensor
    labels: dict[str, torch.Tensor]
    left_index: np.ndarray
    right_index: np.ndarray

    def __len__(self) -> int:
        return self.images.size(0)


def load_digits_array() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as (1797, 8, 8) floats in [0, 1] and their (1797,) labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - the dev extra installs it
        raise ImportError("the Multi-digit testbed needs scikit-learn (pip install scikit-learn, "
                          "or install chimera with the dev extra)") from e
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def overlay(left: np.ndarray, right: np.ndarray, offset: int) -> np.ndarray:
    """(..., 8, 8) left and right digits -> (..., 8 + offset, 8 + offset) canvas, maximum where they overlap."""
    h, w = left.shape[-2:]
    canvas = np.zeros((*left.shape[:-2], h + offset, w + offset), dtype=left.dtype)
    canvas[..., :h, :w] = left
    canvas[..., offset:, offset:] = np.maximum(canvas[..., offset:, offset:], right)
    return canvas


def build_multidigit(seed: int = 0, *, offset: int = 3, pairs_per_image: int = 4,
                     fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> dict[str, MultiDigit]:
    """Seeded train / val / test splits of Multi-digit (see the module docstring)."""
    if not 0 < offset < 8:
        raise ValueError(f"offset={offset}: the right digit must overlap the left one but not cover it; use 1..7")
    if pairs_per_image < 1:
        raise ValueError(f"pairs_per_image={pairs_per_image}: need at least one pair per source image")
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions={fractions}: need three positive train / val / test fractions summing to 1")
    images, labels = load_digits_array()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    n_train, n_val = int(fractions[0] * len(order)), int(fractions[1] * len(order))
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    out = {}
    for name, src in parts.items():
        left = np.repeat(src, pairs_per_image)
        right = rng.choice(src, size=left.size)
        x = overlay(images[left], images[right], offset)  # (N, S, S)
        y = {"left": torch.from_numpy(labels[left]), "right": torch.from_numpy(labels[right])}
        out[name] = MultiDigit(images=torch.from_numpy(x).unsqueeze(1), labels=y, left_index=left, right_index=right)
    return out
