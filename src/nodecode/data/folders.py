"""Image folders for classification (§4.4 / App. A.4): scanning, the evaluation crop, and the decoded-once cache.

Layout (torchvision ImageFolder): ``root/<class>/**/*.JPEG``; classes are the sorted folder names, with display
names from an optional ``classes.tsv`` (``wnid<TAB>name``) in root or its parent. Every image is decoded once into
uint8 (N, 3, 224, 224): a 224x224 image is taken as it is (all of Imagenette-224), any other size has its shorter
side resized to 256 (bilinear, antialiased) and the centre 224x224 cropped -- the usual ImageNet evaluation crop.

Cache (``cache_dir/imagefolder-<key>/``, key = sha1 of the folder's resolved path, the image size and every file's
relative path, so a changed folder gets a new key; all writes atomic): rgb.npy, labels.npy, folder.json (the
decoded images, their labels, classes and file list). data.latents and data.classification add their inputs there.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nodecode.data.cache import cached_array, pool_map
from nodecode.data.images import IMAGE_EXTENSIONS, load_image
from nodecode.errors import NodecodeError
from nodecode.utils import write_json

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


def load_prepared(args) -> np.ndarray:
    """uint8 (3, size, size) of one image file: prepare_image of (path, size) (a pool_map job)."""
    path, size = args
    return prepare_image(load_image(path), size).transpose(2, 0, 1)


def cache_folder(folder: ImageFolder, cache_dir: str | os.PathLike | None, size: int = SIZE) -> Path | None:
    return Path(cache_dir) / f"imagefolder-{folder.key(size)}" if cache_dir else None


def load_rgb(folder: ImageFolder, cache_dir=None, size: int = SIZE, workers: int | None = None) -> torch.Tensor:
    """Every image of the folder decoded once: uint8 (N, 3, size, size), cached as rgb.npy."""
    d = cache_folder(folder, cache_dir, size)
    arr = cached_array(d / "rgb.npy" if d else None,
                  lambda: np.stack(pool_map(load_prepared, [(str(f), size) for f in folder.files], workers)))
    if d is not None and not (d / "folder.json").exists():
        cached_array(d / "labels.npy", lambda: folder.labels)
        files = [str(f.relative_to(folder.root)) for f in folder.files]
        write_json(d / "folder.json", {"root": str(folder.root.resolve()), "classes": folder.classes,
                                       "names": folder.names, "files": files})
    return torch.from_numpy(arr)
