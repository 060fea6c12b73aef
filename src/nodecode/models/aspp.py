"""DeepLab-v2 atrous spatial pyramid pooling head (Torfason et al. 2018, §5.1; Chen et al. 2016)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ASPP(nn.Module):
    """Four parallel 3x3 atrous convs (rates 6, 12, 18, 24) straight to class logits, outputs summed (DeepLab-v2 ASPP-L).

    Each branch has its own bias, as in DeepLab-v2's ``fc1_voc12_c0..c3``; weights are N(0, 0.01), biases 0.
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        self.rates = tuple(rates)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in self.rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize (N, K, h, w) logits to the label size (H, W) (align_corners=False)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
