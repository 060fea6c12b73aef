"""Scalar quantizer with L learned centers: hard forward, soft backward (the paper's Q̄, App. A.1)."""
from __future__ import annotations

import torch
from torch import nn


class ScalarQuantizer(nn.Module):
    """Q̄: nearest-center assignment forward, softmax(-sigma * |y - c|^2) assignment backward (Agustsson et al. 2017)."""

    def __init__(self, num_centers: int = 6, sigma: float = 1.0, init_range: float = 2.0):
        super().__init__()
        self.centers = nn.Parameter(torch.linspace(-init_range, init_range, num_centers))
        self.sigma = sigma

    @property
    def num_centers(self) -> int:
        return self.centers.numel()

    def distances(self, y: torch.Tensor) -> torch.Tensor:
        """Squared distances (N, C, H, W, L) of every latent entry to every center."""
        return (y.unsqueeze(-1) - self.centers.to(y.dtype)) ** 2

    def forward(self, y: torch.Tensor):
        """Return (ŷ with Q̄ gradients, symbols, assignment probabilities with hard forward / soft backward)."""
        y = y.float()
        d = self.distances(y)
        soft = torch.softmax(-self.sigma * d, dim=-1)
        symbols = d.argmin(dim=-1)
        hard = nn.functional.one_hot(symbols, self.num_centers).to(soft.dtype)
        assign = hard + (soft - soft.detach())  # value: one-hot; gradient: soft
        y_soft = (soft * self.centers).sum(-1)
        # centers[symbols] written as a one-hot product: the same value and gradient, but its backward is a reduction
        # instead of an index_put that accumulates every latent entry into L slots (63% of a GPU step's time)
        y_hard = (hard * self.centers).sum(-1)
        y_hat = y_hard + (y_soft - y_soft.detach())  # exactly the centers forward
        return y_hat, symbols, assign

    @torch.no_grad()
    def quantize(self, y: torch.Tensor) -> torch.Tensor:
        """Hard symbols (int64) for a latent, as used by compress."""
        return self.distances(y.float()).argmin(dim=-1)

    def dequantize(self, symbols: torch.Tensor) -> torch.Tensor:
        return self.centers.detach()[symbols]
