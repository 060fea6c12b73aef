"""Classification inputs of §4.4 / App. A.4: one image folder as rgb, decoded, latent or webp uint8 tensors, cached.

Layout (torchvision ImageFolder): ``root/<class>/**/*.JPEG``; classes are the sorted folder names, with display
names from an optional ``classes.tsv`` (``wnid<TAB>name``) in root or its parent. Every image is decoded once into
uint8 (N, 3, 224, 224): a 224x224 image is taken as it is (all of Imagenette-224), any other size has its shorter
side resized to 256 (bilinear, antialiased) and the centre 224x224 cropped -- the usual ImageNet evaluation crop.

Input kinds of the same images (§4.4; the network sees float, the cache holds uint8):
  rgb      the original pixels;
  decoded  x̂ = g_s(ŷ) of the frozen codec, rounded to uint8 (what a decoded .ndc file gives);
  latent   the symbols z (N, C, 28, 28) directly from the encoder, mapped through ``codec.latent`` (ŷ = centers[z])
           on the fly; they equal the symbols a real .ndc file of the image entropy-decodes to (tested on the CPU;
           on an H200, TF32 off, 2 of 0.6 M (c8) and 2 of 2.4 M (c32) symbols of 96 images flipped vs the CPU);
  webp     the image stored as WebP at a target bpp (``match_bpp`` per image) and decoded by Pillow, the
           practitioner's baseline.

Cache (``cache_dir/imagefolder-<key>/``, key = sha1 of the folder's resolved path, the image size and every file's
relative path, so a changed folder gets a new key; all writes atomic):
  rgb.npy, labels.npy, folder.json                  the decoded images, their labels, classes and file list
  latent-<codec>-<fingerprint>.npy / .json          symbols; .json has the mean real .ndc bpp of the images
  decoded-<codec>-<fingerprint>.npy                 x̂ from exactly those symbols
  webp-<bpp>.npy / .json                            WebP round trips; .json has the mean real WebP bpp
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nodecode.data.cache import cached_array, pool_map
from nodecode.data.images import IMAGE_EXTENSIONS, load_image
from nodecode.errors import NodecodeError
from nodecode.utils import write_json

KINDS = ("rgb", "decoded", "latent", "webp")
SIZE, RESIZE = 224, 256
CACHE_VERSION = 1


@dataclass
class ImageFolder:
    """The files of one split, their integer labels and the class list (wnids) with display names."""
    root: Path
    files: list[Path]
    labels: np.ndarray
    classes: list[str]
    names: list[str]

    def key(self, size: int = SIZE) -> str:
        h = hashlib.sha1(f"v{CACHE_VERSION}|{self.root.resolve()}|{size}|{len(self.files)}".encode())
        for f in self.files:
            h.update(str(f.relative_to(self.root)).encode() + b"\n")
        return h.hexdigest()[:16]


def class_names(root: Path) -> dict[str, str]:
    """wnid -> name from classes.tsv in root or its parent (empty if there is none)."""
    for d in (root, root.parent):
        if (d / "classes.tsv").is_file():
            rows = [line.split("\t", 1) for line in (d / "classes.tsv").read_text().splitlines() if "\t" in line]
            return {k.strip(): v.strip() for k, v in rows}
    return {}


def scan_image_folder(root: str | os.PathLike, classes: list[str] | None = None,
                      max_per_class: int | None = None) -> ImageFolder:
    """List root/<class>/** images (sorted); `classes` fixes the label order (e.g. a checkpoint's classes)."""
    root = Path(root)
    if not root.is_dir():
        raise NodecodeError(f"no such directory: {root}")
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    classes = list(classes) if classes is not None else found
    if unknown := sorted(set(found) - set(classes)):
        raise NodecodeError(f"class folders not among the classes {classes[:5]}...: {unknown[:5]}")
    files, labels = [], []
    for i, c in enumerate(classes):
        fs = sorted(p for p in (root / c).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()) \
            if (root / c).is_dir() else []
        files += fs[:max_per_class]
        labels += [i] * len(fs[:max_per_class])
    if not files:
        raise NodecodeError(f"no images in class folders under {root}")
    names = class_names(root)
    return ImageFolder(root, files, np.asarray(labels, np.int64), classes, [names.get(c, c) for c in classes])


def prepare_image(img: np.ndarray, size: int = SIZE, resize: int = RESIZE) -> np.ndarray:
    """uint8 (H, W, 3) -> (size, size, 3): as is when already that size, else shorter side to `resize`, centre crop."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    s = resize / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    y, x = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(img[y: y + size, x: x + size])


def _load_one(args) -> np.ndarray:
    path, size = args
    return prepare_image(load_image(path), size).transpose(2, 0, 1)


def cache_folder(folder: ImageFolder, cache_dir: str | os.PathLike | None, size: int = SIZE) -> Path | None:
    return Path(cache_dir) / f"imagefolder-{folder.key(size)}" if cache_dir else None


def load_rgb(folder: ImageFolder, cache_dir=None, size: int = SIZE, workers: int | None = None) -> torch.Tensor:
    """Every image of the folder decoded once: uint8 (N, 3, size, size), cached as rgb.npy."""
    d = cache_folder(folder, cache_dir, size)
    arr = cached_array(d / "rgb.npy" if d else None,
                  lambda: np.stack(pool_map(_load_one, [(str(f), size) for f in folder.files], workers)))
    if d is not None and not (d / "folder.json").exists():
        cached_array(d / "labels.npy", lambda: folder.labels)
        files = [str(f.relative_to(folder.root)) for f in folder.files]
        write_json(d / "folder.json", {"root": str(folder.root.resolve()), "classes": folder.classes,
                                       "names": folder.names, "files": files})
    return torch.from_numpy(arr)


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


def _webp_one(args):
    from nodecode.eval.baselines import decode, match_bpp
    chw, bpp = args
    data, real, _ = match_bpp(np.ascontiguousarray(chw.transpose(1, 2, 0)), "webp", bpp)
    return decode(data).transpose(2, 0, 1), real


def load_inputs(folder: ImageFolder, kind: str, codec=None, webp_bpp: float | None = None, cache_dir=None,
                workers: int | None = None, batch: int = 64) -> tuple[torch.Tensor, dict]:
    """uint8 inputs (N, C, H, W) of one kind for the folder's images (CPU), and info (e.g. the mean real bpp)."""
    if kind not in KINDS:
        raise NodecodeError(f"unknown input kind {kind!r} (choose from {', '.join(KINDS)})")
    d = cache_folder(folder, cache_dir)
    rgb = load_rgb(folder, cache_dir, workers=workers)
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
