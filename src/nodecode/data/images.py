"""Image files at the package's edges: uint8 on disk, float [0, 1] NCHW inside."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from nodecode.errors import NodecodeError, one_line
from nodecode.limits import check_pixels, max_pixels
from nodecode.utils import atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def _rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB uint8: 16-bit and 32-bit integer greys scaled (not clipped), the first frame only."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode != "I" or a.max(initial=0) > 255 else 255.0
        g = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if im.mode == "F":
        g = np.clip(np.round(np.nan_to_num(np.asarray(im, dtype=np.float64))), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an RGB uint8 array (H, W, 3); a one-line NodecodeError on anything else.

    The size is checked against the pixel limit (nodecode.limits) before any pixel is decoded; Pillow's
    decompression-bomb warning is an error; any mode (16-bit, CMYK, palette, alpha, animated: first frame) works."""
    path = Path(path)
    if not path.exists():
        raise NodecodeError(f"no such file: {path}")
    if path.is_dir():
        raise NodecodeError(f"is a directory, not an image: {path}")
    Image.MAX_IMAGE_PIXELS = max_pixels()        # Pillow's bomb check follows nodecode's limit (and --max-pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)   # e.g. palette transparency notes: not the user's concern
            with Image.open(path) as im:
                check_pixels(im.width, im.height, f"image {path}")
                im.seek(0)
                im.load()
                return _rgb(im)
    except NodecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise NodecodeError(f"image {path} is over the limit of {max_pixels()} pixels: refused "
                            f"(raise it with nodecode --max-pixels N or NODECODE_MAX_PIXELS)") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow parses hostile bytes: whatever it raises means "unreadable"
        raise NodecodeError(f"cannot read image {path}: {one_line(e)}") from None


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
