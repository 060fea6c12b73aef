"""Augmentation through the codec (issue 12): every arm sees the same augmented RGB images, each through its own path.

Each training image (uint8 on the device) gets a random-resized crop (area fraction `scale`, aspect `ratio`, resized
back to the image size, bilinear) and a true horizontal mirror; then
  rgb      the augmented image itself;
  latent   its symbols z from the frozen encoder (the network sees ŷ = centers[z] through data.augment.InputPipeline),
           i.e. the latent of the mirrored image, not a mirrored latent;
  decoded  x̂ = g_s(ŷ) of those symbols, rounded to uint8 (what decoding its .ndc file would give).
The parameters come from one sampler seeded by (seed, step) that depends on the image size only, so every arm
draws exactly the same crops and mirrors per step. Encoding is batched, under no_grad, bf16 autocast on CUDA.

Two modes: on the fly (`variants` 0: new parameters every step), or K augmented variants per image computed once
(parameters seeded by (seed, variant)); each step then picks one stored variant per image.

CutMix (`cutmix`, on the fly only): after the crop, each image gets a box of its partner's augmented image pasted in,
in RGB, before the codec (so the latent arm sees the latent of the mixed image); the labels become soft, weighted by
the pixels each image keeps. Partners and boxes come from the seed and the step over the global batch, the same for
every arm and every number of processes.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from nodecode.data.augment import Batches, InputPipeline, generator
from nodecode.data.latents import exact_fp32

ARMS = ("rgb", "decoded", "latent")


def resized_crop_params(n: int, gen: torch.Generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """(n, 5) float boxes [mirror, y0, x0, h, w] as fractions of the image side (torchvision's RandomResizedCrop
    family, without its rejection loop: a box wider or taller than the image is clipped to it)."""
    area = torch.empty(n).uniform_(*scale, generator=gen)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    y0 = torch.rand(n, generator=gen) * (1 - h)
    x0 = torch.rand(n, generator=gen) * (1 - w)
    mirror = (torch.rand(n, generator=gen) < 0.5).float()
    return torch.stack([mirror, y0, x0, h, w], 1)


def cutmix_params(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019) for a batch of n: each image's partner (a permutation) and (n, 4) boxes [y0, x0, h, w]
    as fractions of the side: λ ~ U(0, 1) (Beta(1, 1), the paper's choice), side √(1 − λ), centre uniform, clipped."""
    perm = torch.randperm(n, generator=gen)
    side = (1 - torch.rand(n, generator=gen)).sqrt()
    cy, cx = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
    y0, y1 = (cy - side / 2).clamp(0, 1), (cy + side / 2).clamp(0, 1)
    x0, x1 = (cx - side / 2).clamp(0, 1), (cx + side / 2).clamp(0, 1)
    return perm, torch.stack([y0, x0, y1 - y0, x1 - x0], 1)


def paste_boxes(u8: torch.Tensor, partner: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, C, H, W) with each box (fractions, cutmix_params) taken from `partner`; and λ (B,), the fraction of
    pixels each image keeps (after rounding the box to pixels)."""
    b, _, h, w = u8.shape
    boxes = boxes.to(u8.device, torch.float32)
    y0, x0 = (boxes[:, 0] * h).round(), (boxes[:, 1] * w).round()
    y1, x1 = ((boxes[:, 0] + boxes[:, 2]) * h).round(), ((boxes[:, 1] + boxes[:, 3]) * w).round()
    rows, cols = torch.arange(h, device=u8.device), torch.arange(w, device=u8.device)
    inside = (((rows >= y0[:, None]) & (rows < y1[:, None]))[:, :, None]
              & ((cols >= x0[:, None]) & (cols < x1[:, None]))[:, None, :])                  # (B, H, W)
    return torch.where(inside[:, None], partner, u8), 1 - inside.float().mean((1, 2))


def resized_crops(u8: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> uint8 (B, C, H, W): each box resized to the whole image (bilinear), mirrored if asked.
    The full box unmirrored gives the image itself; mirrored, exactly image.flip(-1)."""
    b, _, h, w = u8.shape
    boxes = boxes.to(u8.device, torch.float32)
    mirror, y0, x0, bh, bw = boxes.unbind(1)
    # output pixel centres -> normalised coordinates in [-1, 1] of the input (align_corners=False)
    ty = (torch.arange(h, device=u8.device) + 0.5) / h
    tx = (torch.arange(w, device=u8.device) + 0.5) / w
    tx = torch.where(mirror[:, None] > 0, 1 - tx[None], tx[None])                  # (B, W)
    gy = 2 * (y0[:, None] + bh[:, None] * ty[None]) - 1                           # (B, H)
    gx = 2 * (x0[:, None] + bw[:, None] * tx) - 1                                  # (B, W)
    grid = torch.stack([gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)], -1)
    out = F.grid_sample(u8.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _precision(device: torch.device, amp: bool):
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return exact_fp32() if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def through_codec(u8: torch.Tensor, kind: str, codec=None, amp: bool = True, chunk: int = 256) -> torch.Tensor:
    """uint8 RGB (B, 3, H, W) on the codec's device -> the arm's uint8 input: the image (rgb), the symbols z
    (latent) or x̂ rounded to uint8 (decoded); in chunks, bf16 autocast on CUDA if `amp`."""
    if kind == "rgb":
        return u8
    if kind not in ARMS:
        raise ValueError(f"augmentation through the codec has no {kind!r} arm (choose from {', '.join(ARMS)})")
    out = []
    for c in u8.split(chunk):
        with _precision(c.device, amp):
            z = codec.encode_symbols(c.float().div_(255))
            if kind == "decoded":
                x = codec.decode_latent(codec.latent(z), tuple(c.shape[-2:]))
                out.append(x.float().mul_(255).round_().clamp_(0, 255).to(torch.uint8))
            else:
                out.append(z.to(torch.uint8))
    return torch.cat(out)


class CodecAugmentBatches(Batches):
    """batch_fn(step) -> (inputs, labels): RGB random-resized crop + mirror, then the arm's path (module doc).

    `data` are the uint8 RGB training images (on the device); `pipeline` is the arm's InputPipeline (centering,
    ŷ = centers[z] for the latent), used without its own crop. With `cutmix` (the number of classes), the labels are
    soft (B, classes) targets."""

    def __init__(self, data: torch.Tensor, labels: torch.Tensor, pipeline: InputPipeline, batch_size: int,
                 kind: str, codec=None, seed: int = 0, rank: int = 0, world: int = 1, scale=(0.35, 1.0),
                 ratio=(3 / 4, 4 / 3), variants: int = 0, amp: bool = True, chunk: int = 256, cutmix: int = 0):
        super().__init__(data, labels, pipeline, batch_size, seed, rank, world)
        if cutmix and variants:
            raise ValueError("CutMix draws partners every step: it needs the on-the-fly augmentation (variants 0)")
        self.kind, self.codec, self.scale, self.ratio, self.amp, self.chunk = kind, codec, scale, ratio, amp, chunk
        self.cutmix = cutmix
        self.variants = self._make_variants(variants) if variants else None

    def params(self, n: int, step: int) -> torch.Tensor:
        """The boxes of one step: the same for every arm (they depend on the seed, the step and n only)."""
        return resized_crop_params(n, generator(self.seed, 1, step), self.scale, self.ratio)

    def augment(self, u8: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """uint8 RGB rows -> the arm's uint8 inputs of their augmented versions."""
        return through_codec(resized_crops(u8, boxes), self.kind, self.codec, self.amp, self.chunk)

    def _make_variants(self, k: int) -> torch.Tensor:
        """(K, N, C, h, w) uint8: variant v of every image from boxes seeded by (seed, 2, v)."""
        out = []
        for v in range(k):
            boxes = resized_crop_params(len(self.data), generator(self.seed, 2, v), self.scale, self.ratio)
            out.append(torch.cat([self.augment(self.data[i: i + self.chunk], boxes[i: i + self.chunk])
                                  for i in range(0, len(self.data), self.chunk)]))
        return torch.stack(out)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.global_indices(step)
        n = self.batch_size // self.world
        mine = slice(self.rank * n, (self.rank + 1) * n)
        if self.variants is not None:
            pick = torch.randint(0, len(self.variants), (len(idx),), generator=generator(self.seed, 1, step))[mine]
            idx = idx[mine].to(self.data.device)
            x = self.variants[pick.to(self.data.device), idx]
            return self.pipeline(x), self.labels[idx]
        boxes = self.params(len(idx), step)
        here = idx[mine].to(self.data.device)
        x, y = resized_crops(self.data[here], boxes[mine]), self.labels[here]
        if self.cutmix:
            perm, cut = cutmix_params(len(idx), generator(self.seed, 3, step))
            there = idx[perm[mine]].to(self.data.device)
            x, lam = paste_boxes(x, resized_crops(self.data[there], boxes[perm[mine]]), cut[mine])
            lam = lam[:, None]
            y = lam * F.one_hot(y, self.cutmix) + (1 - lam) * F.one_hot(self.labels[there], self.cutmix)
        return self.pipeline(through_codec(x, self.kind, self.codec, self.amp, self.chunk)), y
