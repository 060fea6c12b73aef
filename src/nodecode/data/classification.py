"""Classification inputs of §4.4 / App. A.4: one image folder as rgb, decoded, latent or webp uint8 tensors, cached.

  rgb      the original pixels (data.folders: decoded once, evaluation crop);
  decoded, latent   through the frozen codec (data.latents);
  webp     the image stored as WebP at a target bpp (``match_bpp`` per image) and decoded by Pillow, the
           practitioner's baseline; cached as webp-<bpp>.npy / .json (the .json has the mean real WebP bpp).
"""
from __future__ import annotations

import json

import numpy as np
import torch

from nodecode.data.augment import generator
from nodecode.data.cache import cached_array, pool_map
from nodecode.data.folders import SIZE, ImageFolder, cache_folder, load_rgb
from nodecode.data.latents import codec_inputs
from nodecode.errors import NodecodeError
from nodecode.utils import write_json

KINDS = ("rgb", "decoded", "latent", "webp")


def _webp_one(args):
    from nodecode.codec.classical import decode, match_bpp
    chw, bpp = args
    data, real, _ = match_bpp(np.ascontiguousarray(chw.transpose(1, 2, 0)), "webp", bpp)
    return decode(data).transpose(2, 0, 1), real


def holdout_split(labels: np.ndarray, frac: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) row indices of a training set: round(frac * n_c) images of every class c held out, drawn
    by a generator seeded by (seed, 3); disjoint, sorted, the same for every arm and run of that seed."""
    if not 0 < frac < 1:
        raise NodecodeError(f"the held-out fraction must lie in (0, 1), not {frac}")
    labels = np.asarray(labels)
    gen = generator(seed, 3)
    held = []
    for c in np.unique(labels):
        rows = torch.from_numpy(np.flatnonzero(labels == c))
        held.append(rows[torch.randperm(len(rows), generator=gen)[: round(frac * len(rows))]].numpy())
    held = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held), held


def load_inputs(folder: ImageFolder, kind: str, codec=None, webp_bpp: float | None = None, cache_dir=None,
                workers: int | None = None, batch: int = 64, size: int = SIZE) -> tuple[torch.Tensor, dict]:
    """uint8 inputs (N, C, H, W) of one kind for the folder's images (CPU) at `size`² pixels (the latent: /8), and
    info (e.g. the mean real bpp)."""
    if kind not in KINDS:
        raise NodecodeError(f"unknown input kind {kind!r} (choose from {', '.join(KINDS)})")
    d = cache_folder(folder, cache_dir, size)
    rgb = load_rgb(folder, cache_dir, size, workers=workers)
    if kind == "rgb":
        return rgb, {}
    if kind == "webp":
        if not webp_bpp or webp_bpp <= 0:
            raise NodecodeError("the webp input kind needs a positive target bpp")
        tag = f"webp-{webp_bpp:.4f}"
        info_path = d / f"{tag}.json" if d else None
        if info_path is not None and info_path.exists() and (d / f"{tag}.npy").exists():
            return torch.from_numpy(np.load(d / f"{tag}.npy")), json.loads(info_path.read_text())
        parts = pool_map(_webp_one, [(x, webp_bpp) for x in rgb.numpy()], workers)
        arr = np.stack([p[0] for p in parts])
        info = {"bpp": float(np.mean([p[1] for p in parts])), "target_bpp": webp_bpp}
        if d is not None:
            cached_array(d / f"{tag}.npy", lambda: arr)
            write_json(info_path, info)
        return torch.from_numpy(arr), info
    return codec_inputs(rgb, kind, codec, d, batch)
