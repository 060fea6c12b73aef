"""Image folders as one uint8 tensor of fixed-size tiles, decoded once and cached, for GPU-resident training."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from nodecode.data.cache import cached_array, pool_map
from nodecode.data.images import list_images, load_image


def _tiles_of(args) -> np.ndarray:
    path, tile = args
    img = load_image(path)
    h, w = img.shape[:2]
    if h < tile or w < tile:
        return np.empty((0, tile, tile, 3), np.uint8)
    ny, nx = h // tile, w // tile
    oy, ox = (h - ny * tile) // 2, (w - nx * tile) // 2
    return np.stack([img[oy + i * tile: oy + (i + 1) * tile, ox + j * tile: ox + (j + 1) * tile]
                     for i in range(ny) for j in range(nx)])


def load_tiles(root: str | os.PathLike, tile: int = 224, cache_dir: str | os.PathLike | None = None,
               limit: int | None = None, workers: int | None = None) -> torch.Tensor:
    """All non-overlapping centred tile x tile crops of every image under root: uint8 (N, 3, tile, tile)."""
    files = list_images(root)[:limit]
    key = hashlib.sha1(f"{Path(root).resolve()}|{tile}|{len(files)}|{files[-1].name}".encode()).hexdigest()[:12]
    cache = Path(cache_dir) / f"tiles-{key}.npy" if cache_dir else None
    arr = cached_array(cache, lambda: np.concatenate(pool_map(_tiles_of, [(str(f), tile) for f in files], workers, 64)))
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def random_crops(tiles: torch.Tensor, batch: int, crop: int, generator: torch.Generator,
                 part: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """A batch of random crops with random horizontal mirroring, float [0, 1], on the tiles' device.

    `part` = (rank, world): draw the whole batch of `batch` crops, keep this rank's contiguous share of it, so that
    data-parallel ranks with one seed see exactly the single-process batch between them."""
    n, _, h, w = tiles.shape
    rank, world = part
    keep = slice(rank * batch // world, (rank + 1) * batch // world)
    idx = torch.randint(n, (batch,), generator=generator)[keep]
    ys = torch.randint(h - crop + 1, (batch,), generator=generator)[keep]
    xs = torch.randint(w - crop + 1, (batch,), generator=generator)[keep]
    flip = (torch.rand(batch, generator=generator) < 0.5)[keep].to(tiles.device)
    iy = (ys[:, None] + torch.arange(crop)).to(tiles.device)          # (B, crop) rows
    ix = (xs[:, None] + torch.arange(crop)).to(tiles.device)          # (B, crop) columns
    ix = torch.where(flip[:, None], ix.flip(1), ix)
    out = tiles[idx.to(tiles.device)]                                  # (B, 3, h, w)
    out = out.gather(2, iy[:, None, :, None].expand(-1, out.shape[1], -1, w))
    out = out.gather(3, ix[:, None, None, :].expand(-1, out.shape[1], crop, -1))
    return out.float().div_(255.0)
