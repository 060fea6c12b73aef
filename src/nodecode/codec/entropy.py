"""Histogram entropy H(q), the rate term of Eq. 1, and the integer frequency tables used for coding."""
from __future__ import annotations

import numpy as np
import torch

TABLE_PRECISION = 16  # frequencies sum to 2**16; every symbol keeps frequency >= 1


def histogram(assign: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """Symbol probabilities from (N, C, H, W, L) assignments: (C, L) per channel or (L,) overall."""
    if per_channel:
        return assign.mean(dim=(0, 2, 3))
    return assign.reshape(-1, assign.shape[-1]).mean(0)


def entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """H = -sum p log2 p along the last axis, averaged over any leading axes (bits per symbol)."""
    h = -(p * torch.log2(p.clamp_min(1e-12))).sum(-1)
    return h.mean()


def rate_loss(h: torch.Tensor, target_entropy: float, beta: float) -> torch.Tensor:
    """β·max(H(q) − Ht, 0), the rate term of Eq. 1."""
    return beta * torch.relu(h - target_entropy)


def frequency_table(counts: np.ndarray, precision: int = TABLE_PRECISION) -> np.ndarray:
    """Integer frequencies (rows summing to 2**precision, all >= 1) from symbol counts of shape (C, L)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = 1 << precision
    c, n = counts.shape
    out = np.ones((c, n), dtype=np.int64)
    for i in range(c):
        p = (counts[i] + 0.5) / (counts[i] + 0.5).sum()  # add-half smoothing: unseen symbols stay codable
        extra = np.floor(p * (total - n)).astype(np.int64)
        out[i] += extra
        rem = total - out[i].sum()
        order = np.argsort(-(p * (total - n) - extra), kind="stable")
        out[i, order[:rem]] += 1
    assert (out.sum(1) == total).all() and (out >= 1).all()
    return out.astype(np.int32)


def table_bits(freqs: np.ndarray, symbols: np.ndarray) -> float:
    """Ideal code length in bits of symbols (C, H, W) under integer tables (C, L)."""
    freqs = np.asarray(freqs, dtype=np.float64)
    logp = np.log2(freqs / freqs.sum(1, keepdims=True))
    c = np.arange(symbols.shape[0])[:, None, None]
    return float(-logp[c, symbols].sum())
