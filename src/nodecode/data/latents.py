"""Codec inputs of a set of images: the symbols z straight from the encoder, the decoded x̂, their real .ndc bpp,
and the training-set channel means (§4.4; the network sees float, the cache holds uint8).

  latent   the symbols z (N, C, 28, 28) directly from the encoder, mapped through ``codec.latent`` (ŷ = centers[z])
           on the fly; they equal the symbols a real .ndc file of the image entropy-decodes to (tested on the CPU;
           on an H200, TF32 off, 2 of 0.6 M (c8) and 2 of 2.4 M (c32) symbols of 96 images flipped vs the CPU);
  decoded  x̂ = g_s(ŷ) of the frozen codec, rounded to uint8 (what a decoded .ndc file gives).

Cached beside an image folder's rgb.npy (data.folders) as latent-<codec>-<fingerprint>.npy / .json (symbols; the
.json has the mean real .ndc bpp of the images) and decoded-<codec>-<fingerprint>.npy (x̂ from exactly those symbols).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from nodecode.data.cache import cached_array
from nodecode.errors import NodecodeError
from nodecode.utils import write_json


@contextmanager
def exact_fp32():
    """Switch TF32 off (convolutions and matmuls) so the encoder runs in true fp32 on the GPU too."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@torch.no_grad()
def encode_symbols(codec, rgb: torch.Tensor, batch: int = 64) -> np.ndarray:
    """Symbols z directly from the encoder (batched, fp32, on the codec's device): uint8 (N, C, h, w)."""
    dev = next(codec.parameters()).device
    with exact_fp32():
        return torch.cat([codec.encode_symbols(rgb[i: i + batch].to(dev).float().div_(255)).to(torch.uint8).cpu()
                          for i in range(0, len(rgb), batch)]).numpy()


@torch.no_grad()
def decode_symbols(codec, symbols: np.ndarray, size: tuple[int, int], batch: int = 64) -> np.ndarray:
    """x̂ = g_s(centers[z]) of symbols, rounded to uint8 (N, 3, H, W)."""
    dev = next(codec.parameters()).device
    out = []
    with exact_fp32():
        for i in range(0, len(symbols), batch):
            z = torch.from_numpy(symbols[i: i + batch]).to(dev)
            out.append(codec.decode_latent(codec.latent(z), size).mul_(255).round_().to(torch.uint8).cpu())
    return torch.cat(out).numpy()


def ndc_bpp(codec, symbols: np.ndarray, height: int, width: int) -> np.ndarray:
    """Real .ndc file size in bits per pixel of each image's symbols (header, ANS words and CRC included)."""
    return np.array([len(codec.pack(z, height, width)) * 8 / (height * width) for z in symbols])


def codec_inputs(rgb: torch.Tensor, kind: str, codec, d: Path | None, batch: int = 64) -> tuple[torch.Tensor, dict]:
    """The latent symbols (kind "latent") or decoded images ("decoded") of uint8 `rgb` through `codec`, cached in
    folder `d` per codec fingerprint, and info with the mean real .ndc bpp."""
    if codec is None:
        raise NodecodeError(f"the {kind} input kind needs a codec")
    tag = f"{codec.config.name}-{codec.fingerprint().hex()}"
    sym = cached_array(d / f"latent-{tag}.npy" if d else None, lambda: encode_symbols(codec, rgb, batch))
    info_path = d / f"latent-{tag}.json" if d else None
    if info_path is not None and info_path.exists():
        info = json.loads(info_path.read_text())
    else:
        info = {"bpp": float(ndc_bpp(codec, sym, *rgb.shape[2:]).mean()), "codec": codec.config.name}
        if info_path is not None:
            write_json(info_path, info)
    if kind == "latent":
        return torch.from_numpy(sym), info
    dec = cached_array(d / f"decoded-{tag}.npy" if d else None,
                       lambda: decode_symbols(codec, sym, tuple(rgb.shape[2:]), batch))
    return torch.from_numpy(dec), info


def channel_mean(data: torch.Tensor, kind: str, codec=None, chunk: int = 256) -> torch.Tensor:
    """Per-channel mean of the network input over a (training) set: pixels on the 0..255 scale, latents in ŷ units."""
    c = data.shape[1]
    if kind == "latent":  # exact: symbol counts per channel times the centers
        L = codec.config.num_centers
        offset = torch.arange(c, device=data.device).view(1, c, 1, 1) * L
        counts = sum(torch.bincount((data[i: i + chunk].long() + offset).flatten(), minlength=c * L)
                     for i in range(0, len(data), chunk)).view(c, L).double().cpu()
        return (counts @ codec.quantizer.centers.detach().double().cpu() / counts.sum(1)).float()
    total = sum(data[i: i + chunk].sum(dim=(0, 2, 3), dtype=torch.float64) for i in range(0, len(data), chunk))
    return (total.cpu() / (len(data) * data.shape[2] * data.shape[3])).float()
