"""Image-quality metrics on 8-bit RGB (PSNR, SSIM, MS-SSIM) and task metrics (top-k accuracy, mIoU)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from pytorch_msssim import ms_ssim as _ms_ssim_full
from pytorch_msssim import ssim as _ssim_full
from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

from nodecode.errors import NodecodeError

PSNR_CAP_DB = 100.0  # psnr() never returns more; identical images give exactly this (finite, so means stay finite)
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, as in pytorch_msssim
WIN_SIZE, WIN_SIGMA = 11, 1.5


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    """Raise a NodecodeError unless a and b are uint8 (H, W, 3) arrays of one shape."""
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
            desc = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise NodecodeError(f"metric input {name} must be a uint8 HxWx3 array, got {desc}")
    if a.shape != b.shape:
        raise NodecodeError(f"metric inputs differ in shape: {a.shape} vs {b.shape}")


def _nchw(x: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (1, 3, H, W) on the 0..255 scale."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).unsqueeze(0).float()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all RGB values, 10 log10(255^2 / MSE), capped at PSNR_CAP_DB (identical images -> 100.0)."""
    _check_pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(255.0 ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (pytorch_msssim, data_range 255, Gaussian window 11 / sigma 1.5), averaged over R, G, B."""
    _check_pair(a, b)
    return float(_ssim_full(_nchw(a), _nchw(b), data_range=255, win_size=WIN_SIZE, win_sigma=WIN_SIGMA))


def ms_ssim_levels(height: int, width: int) -> int:
    """Scales MS-SSIM uses for an image: 5 when the smaller side > 160, else the most with side > 10 * 2**(levels-1)."""
    side = min(height, width)
    levels = len(MS_SSIM_WEIGHTS)
    while levels > 1 and side <= (WIN_SIZE - 1) * 2 ** (levels - 1):
        levels -= 1
    return levels


def _ms_ssim_levels(x: torch.Tensor, y: torch.Tensor, levels: int) -> float:
    """MS-SSIM over the first `levels` scales, weights renormalised to sum 1 (pytorch_msssim's loop)."""
    w = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=x.dtype)
    if levels < len(MS_SSIM_WEIGHTS):  # (the 5 standard weights sum to 1.0001; kept as the library has them)
        w = w / w.sum()
    win = _fspecial_gauss_1d(WIN_SIZE, WIN_SIGMA).repeat([x.shape[1], 1, 1, 1])
    mcs = []
    for i in range(levels):
        ssim_pc, cs = _ssim(x, y, win=win, data_range=255, size_average=False)
        if i < levels - 1:
            mcs.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[2:]]
            x = torch.nn.functional.avg_pool2d(x, kernel_size=2, padding=pad)
            y = torch.nn.functional.avg_pool2d(y, kernel_size=2, padding=pad)
    vals = torch.stack(mcs + [torch.relu(ssim_pc)], dim=0)
    return float(torch.prod(vals ** w.view(-1, 1, 1), dim=0).mean())


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (pytorch_msssim, data_range 255, window 11 / 1.5, RGB averaged); see ms_ssim_levels for small images."""
    # The standard 5 scales need the smaller side > 160. Smaller images use fewer scales (the first ones, their
    # weights renormalised to sum 1); at one scale this is SSIM clipped at 0. Sides <= 10 are smaller than the
    # window: pytorch_msssim then skips the smoothing along that side (with a warning) instead of failing.
    _check_pair(a, b)
    x, y = _nchw(a), _nchw(b)
    levels = ms_ssim_levels(a.shape[0], a.shape[1])
    if levels == len(MS_SSIM_WEIGHTS):
        return float(_ms_ssim_full(x, y, data_range=255, win_size=WIN_SIZE, win_sigma=WIN_SIGMA))
    return _ms_ssim_levels(x, y, levels)


def image_metrics(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """All three image metrics: {"psnr", "ssim", "ms_ssim"}."""
    return {"psnr": psnr(a, b), "ssim": ssim(a, b), "ms_ssim": ms_ssim(a, b)}


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows (N, C) whose target is among the k largest logits, for each k (k > C counts as C)."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"want logits (N, C) and targets (N,), got {tuple(logits.shape)} and {tuple(targets.shape)}")
    n, c = logits.shape
    if n == 0:
        raise ValueError("topk_accuracy of an empty batch")
    top = logits.topk(min(max(ks), c), dim=1).indices  # (N, kmax), sorted by descending logit
    hit = top == targets.view(-1, 1).to(top.device)
    return {k: hit[:, : min(k, c)].any(dim=1).float().mean().item() for k in ks}


class ConfusionMatrix:
    """Accumulated (num_classes x num_classes) counts, rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int | None = None):
        """Empty matrix; target pixels equal to ignore_index are skipped."""
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: pred is labels shaped like target, or scores (N, C, ...) for target (N, ...)."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} does not match target {tuple(target.shape)}")
        p, t = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
        k = self.num_classes
        for name, v in (("target", t), ("pred", p)):
            if v.numel() and (v.min() < 0 or v.max() >= k):
                raise ValueError(f"{name} label outside [0, {k}) (and not ignore_index): {int(v.min())}..{int(v.max())}")
        self.mat += torch.bincount(t * k + p, minlength=k * k).view(k, k)

    def iou(self) -> torch.Tensor:
        """Per-class IoU = TP / (TP + FP + FN), float64; NaN for a class in neither target nor prediction."""
        m = self.mat.double()
        tp = m.diagonal()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def miou(self) -> float:
        """Mean IoU over the classes present (in target or prediction); NaN if nothing was counted."""
        iou = self.iou()
        present = ~torch.isnan(iou)
        return float(iou[present].mean()) if present.any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels labelled correctly."""
        total = int(self.mat.sum())
        return float(self.mat.diagonal().sum()) / total if total else float("nan")


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> float:
    """One-shot mean IoU of a batch (see ConfusionMatrix)."""
    cm = ConfusionMatrix(num_classes, ignore_index)
    cm.update(pred, target)
    return cm.miou()
