"""A two-input network: a small 1-D CNN on the signal, joined with the meta features."""

from __future__ import annotations

import torch
from torch import nn


class TwoInputNet(nn.Module):
    def __init__(self, channels: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(1, channels, 5, padding=2), nn.ReLU(),
            nn.AdaptiveAvgPool1d(8), nn.Flatten(),
        )
        self.head = nn.Linear(channels * 8 + 2, classes)

    def forward(self, signal: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv(signal), meta], dim=1))


def build(channels: int = 8, classes: int = 4) -> nn.Module:
    return TwoInputNet(channels, classes)
