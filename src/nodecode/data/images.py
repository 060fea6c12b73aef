"""Image files at the package's edges: uint8 on disk, float [0, 1] NCHW inside."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from nodecode.errors import NodecodeError
from nodecode.utils import atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
MAX_PIXELS = 1 << 28  # 268 M pixels: more is refused rather than allocated


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an RGB uint8 array (H, W, 3); a one-line NodecodeError on anything else."""
    path = Path(path)
    if not path.exists():
        raise NodecodeError(f"no such file: {path}")
    if path.is_dir():
        raise NodecodeError(f"is a directory, not an image: {path}")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise NodecodeError(f"image too large ({im.width}x{im.height}): {path}")
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except NodecodeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise NodecodeError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (1, 3, H, W) or (3, H, W) in [0, 1] -> uint8 (H, W, 3), rounded."""
    if x.dim() == 4:
        x = x[0]
    return x.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def save_image(img: np.ndarray, path: str | os.PathLike, **params) -> None:
    """Write an image atomically; the format follows the extension."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise NodecodeError(f"unknown image extension: {path.suffix or '(none)'} (use .png)")
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format=fmt, **params)


def list_images(root: str | os.PathLike) -> list[Path]:
    """All image files under `root` (recursively), sorted; a folder of none is an error."""
    root = Path(root)
    if not root.exists():
        raise NodecodeError(f"no such directory: {root}")
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise NodecodeError(f"no images found under {root}")
    return files
