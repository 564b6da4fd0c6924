"""The digits classifier: a small CNN over 8x8 images with pixel values 0..16 (sklearn's digits).

Shared by train.py (training) and predict.py (loading the state_dict variant in the server).
"""

from __future__ import annotations

import torch
from torch import nn


class DigitsNet(nn.Module):
    """(N, 8, 8) float32 in 0..16 -> (N, 10) logits for the digits 0..9."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16 x 4 x 4
            nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32 x 2 x 2
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.unsqueeze(1) / 16.0))
