"""The Multi-MNIST LeNet (Sener & Koltun 2018), sized for small canvases: a shared trunk, one head per task.

Trunk: conv 3x3 (1 -> 10), max-pool 2, ReLU, conv 3x3 (10 -> 20), channel dropout, max-pool 2, ReLU,
linear -> 50, ReLU. Head: linear 50 -> 50, ReLU, dropout, linear -> classes. The reference network
uses 5x5 kernels on 28x28 images and dropout 0.5 in both places; here the kernels are 3x3 (padded)
for 8x8-scale images, and dropout is an option (0 = none), so runs with and without it share a model.
"""

from __future__ import annotations

import torch
from torch import nn


class LeNetTrunk(nn.Module):
    def __init__(self, size: int, dropout: float = 0.0, width: int = 50):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 3, padding=1)
        self.conv2 = nn.Conv2d(10, 20, 3, padding=1)
        self.drop = nn.Dropout2d(dropout)
        self.fc = nn.Linear(20 * (size // 4) ** 2, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, S, S) -> (B, width)
        x = torch.relu(torch.max_pool2d(self.conv1(x), 2))  # (B, 10, S/2, S/2)
        x = torch.relu(torch.max_pool2d(self.drop(self.conv2(x)), 2))  # (B, 20, S/4, S/4)
        return torch.relu(self.fc(x.flatten(1)))


class LeNetHead(nn.Module):
    def __init__(self, classes: int = 10, dropout: float = 0.0, width: int = 50):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, classes)
        self.drop = nn.Dropout(dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, width) -> (B, classes) logits
        return self.fc2(self.drop(torch.relu(self.fc1(z))))


class MultiLeNet(nn.Module):
    """Shared trunk and one head per task; ``forward`` returns the shared representation and each task's logits."""

    def __init__(self, size: int, tasks: tuple[str, ...], classes: int = 10, dropout: float = 0.0):
        super().__init__()
        if size < 4:
            raise ValueError(f"MultiLeNet: image size {size} is below 4, too small for two 2x2 poolings")
        self.trunk = LeNetTrunk(size, dropout)
        self.heads = nn.ModuleDict({t: LeNetHead(classes, dropout) for t in tasks})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = self.trunk(x)
        return z, {t: head(z) for t, head in self.heads.items()}
