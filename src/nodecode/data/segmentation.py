"""Segmentation inputs of §5 / App. A.5: CamVid-layout image + label folders as rgb, decoded or latent uint8 tensors.

Layout: ``root/images/{split}/*.jpg`` with ``root/labels/{split}/<same stem>.png`` (mode L, 0..K-1 classes,
IGNORE = 11 unlabelled) and class names in ``root/classes.tsv`` (``index<TAB>name``). Frames keep their full
size (CamVid: 480x360); all frames of a split must share it.

Input kinds (as data.classification): rgb pixels; decoded x̂ = g_s(ŷ) rounded to uint8; latent symbols z
(uint8, what the decoder would receive; ŷ = centers[z] is looked up on the device by InputPipeline). A 480x360
frame gives a 60x45 latent. Sides that are not multiples of 8 are replicate-padded first, exactly as the codec
does (CompressionModel.pad), so the latent is ceil(H/8) x ceil(W/8) and latent pixel (i, j) covers RGB pixels
[8i, 8i+8) x [8j, 8j+8).

Crops (App. A.5): 320x320 RGB <-> 40x40 latent windows at offsets on the 8-pixel grid, so both kinds see the same
scene region; labels are always cropped at full resolution at the same place (8 * latent offset), then a mirror
with probability 1/2 flips input and labels together. Draws are seeded by (seed, step) like data.augment.Batches.

Cache (``cache_dir/segfolder-<key>/``, key = sha1 of the resolved folder, split and file list): rgb.npy,
labels.npy, latent-<codec>-<fingerprint>.npy (+ .json with the mean real .ndc bpp), decoded-<codec>-<fp>.npy.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nodecode.data.augment import Batches, generator
from nodecode.data.cache import cached_array, pool_map
from nodecode.data.latents import codec_inputs
from nodecode.data.images import load_image
from nodecode.errors import NodecodeError
from nodecode.utils import write_json

KINDS = ("rgb", "decoded", "latent")
IGNORE = 11
GRID = 8                    # codec downsampling: one latent pixel per 8x8 RGB block
CROP_RGB = 320              # App. A.5 training crops; 40 latent pixels
CAMVID_NAMES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                "Bicyclist")
CAMVID_COLOURS = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                  (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))  # SegNet's palette


@dataclass
class SegFolder:
    """Image and label files of one split, with the class names."""
    root: Path
    split: str
    images: list[Path]
    labels: list[Path]
    names: list[str]

    def key(self) -> str:
        h = hashlib.sha1(f"seg1|{self.root.resolve()}|{self.split}|{len(self.images)}".encode())
        for f in self.images:
            h.update(f.name.encode() + b"\n")
        return h.hexdigest()[:16]


def class_names(root: Path) -> list[str]:
    """Names of classes 0..K-1 from classes.tsv (rows at or above IGNORE dropped); CamVid's when absent."""
    tsv = root / "classes.tsv"
    if not tsv.exists():
        return list(CAMVID_NAMES)
    rows = [l.split("\t", 1) for l in tsv.read_text().splitlines() if "\t" in l]
    return [n.strip() for i, n in sorted((int(i), n) for i, n in rows) if i < IGNORE]


def scan_segmentation(root: str | os.PathLike, split: str, limit: int | None = None) -> SegFolder:
    """Pair root/images/split/*.jpg|png with root/labels/split/<stem>.png (sorted; the first `limit`)."""
    root = Path(root)
    idir, ldir = root / "images" / split, root / "labels" / split
    if not idir.is_dir() or not ldir.is_dir():
        raise NodecodeError(f"{root} has no images/{split} and labels/{split} folders (CamVid layout)")
    images = sorted(p for p in idir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]
    if not images:
        raise NodecodeError(f"no images in {idir}")
    labels = [ldir / f"{p.stem}.png" for p in images]
    if missing := [p.name for p in labels if not p.exists()]:
        raise NodecodeError(f"label masks missing in {ldir}: {missing[:3]}")
    return SegFolder(root, split, images, labels, class_names(root))


def _load_pair(args) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    img, lab = args
    x = load_image(img)
    with Image.open(lab) as im:
        y = np.asarray(im.convert("L") if im.mode not in ("L", "P") else im, dtype=np.uint8)
    if y.shape != x.shape[:2]:
        raise NodecodeError(f"label {lab} is {y.shape[::-1]}, image is {x.shape[1::-1]}")
    return x.transpose(2, 0, 1), y


def load_segmentation(folder: SegFolder, kind: str, codec=None, cache_dir=None, workers: int | None = None,
                      batch: int = 32) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """uint8 inputs (N, C, H, W) of one kind, uint8 label masks (N, H, W) (CPU), and info (e.g. the mean real bpp)."""
    if kind not in KINDS:
        raise NodecodeError(f"unknown input kind {kind!r} (choose from {', '.join(KINDS)})")
    d = Path(cache_dir) / f"segfolder-{folder.key()}" if cache_dir else None
    if d is not None and (d / "rgb.npy").exists() and (d / "labels.npy").exists():
        rgb, lab = np.load(d / "rgb.npy"), np.load(d / "labels.npy")
    else:
        pairs = pool_map(_load_pair, list(zip(map(str, folder.images), map(str, folder.labels))), workers)
        if len({p[0].shape for p in pairs}) > 1:
            raise NodecodeError(f"frames of {folder.root}/images/{folder.split} differ in size")
        rgb, lab = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
        if d is not None:
            cached_array(d / "labels.npy", lambda: lab)
            cached_array(d / "rgb.npy", lambda: rgb)
            write_json(d / "folder.json", {"root": str(folder.root.resolve()), "split": folder.split,
                                           "files": [p.name for p in folder.images]})
    rgb_t, lab_t = torch.from_numpy(rgb), torch.from_numpy(lab)
    if kind == "rgb":
        return rgb_t, lab_t, {}
    x, info = codec_inputs(rgb_t, kind, codec, d, batch)
    return x, lab_t, info


class SegBatches(Batches):
    """batch_fn(step) -> (centred inputs, long labels): grid-aligned random crops and mirrors (App. A.5)."""

    def __init__(self, data, labels, pipeline, batch_size, crop: int = CROP_RGB, seed: int = 0, rank: int = 0,
                 world: int = 1, arm=None):
        """`arm`: None, or for augmentation through the codec (data: RGB) the map of the uint8 RGB crops to the
        arm's uint8 inputs (data.codec_augment.through_codec): the latent of a mirrored crop, not a mirrored latent."""
        super().__init__(data, labels, pipeline, batch_size, seed, rank, world)
        self.arm = arm
        self.scale = 1 if data.shape[-1] == labels.shape[-1] else GRID   # input pixels per label pixel: 1 or 1/8
        if crop % GRID or crop > labels.shape[-1] or crop > labels.shape[-2]:
            raise NodecodeError(f"crop {crop} must be a multiple of {GRID} and fit the {tuple(labels.shape[-2:])} frames")
        self.crop = crop

    def offsets(self, n: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mirror, y, x): offsets in grid cells (multiples of 8 RGB pixels), seeded by (seed, step)."""
        g = generator(self.seed, 1, step)
        h, w = self.labels.shape[-2:]
        cells_y, cells_x = (h - self.crop) // GRID, (w - self.crop) // GRID
        return (torch.rand(n, generator=g) < 0.5, torch.randint(0, cells_y + 1, (n,), generator=g),
                torch.randint(0, cells_x + 1, (n,), generator=g))

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.global_indices(step)
        flip, ys, xs = self.offsets(len(idx), step)
        n = self.batch_size // self.world
        mine = slice(self.rank * n, (self.rank + 1) * n)
        idx = idx[mine].to(self.data.device)
        c_in, s_in = self.crop // self.scale, GRID // self.scale
        xs_, ys_ = [], []
        for i, f, y, x in zip(idx.tolist(), flip[mine].tolist(), ys[mine].tolist(), xs[mine].tolist()):
            a = self.data[i, :, y * s_in: y * s_in + c_in, x * s_in: x * s_in + c_in]
            b = self.labels[i, y * GRID: y * GRID + self.crop, x * GRID: x * GRID + self.crop]
            xs_.append(a.flip(-1) if f else a)
            ys_.append(b.flip(-1) if f else b)
        x = torch.stack(xs_)
        return self.pipeline(self.arm(x) if self.arm is not None else x), torch.stack(ys_).long()
