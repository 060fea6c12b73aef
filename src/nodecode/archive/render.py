"""Pixels on demand: full decodes, thumbnails and segmentation overlays of stored images, cached in ARCHIVE/cache."""
from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nodecode.archive.store import Archive
from nodecode.data.latents import exact_fp32
from nodecode.data.images import to_uint8
from nodecode.errors import NodecodeError

THUMB = 256
_lock = threading.Lock()   # one decode at a time per process (CPU bound; keeps memory bounded)


def decode(archive: Archive, image_id: int, codec) -> np.ndarray:
    """uint8 (H, W, 3) of a stored image (the decoder g_s runs here, and only here)."""
    data = archive.ndc(image_id)
    with _lock, torch.no_grad(), exact_fp32():
        return to_uint8(codec.decompress(data))


def _cached(archive: Archive, key: str, make) -> bytes:
    path = archive.cache / key
    if path.is_file():
        return path.read_bytes()
    data = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return data


def thumbnail(archive: Archive, image_id: int, codec) -> bytes:
    """JPEG thumbnail (longest side 256), decoded on first request and cached by content hash."""
    sha = archive.image(image_id)["sha256"]

    def make():
        im = Image.fromarray(decode(archive, image_id, codec))
        im.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        return buf.getvalue()
    return _cached(archive, f"thumbs/{sha}.jpg", make)


def png(archive: Archive, image_id: int, codec) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(decode(archive, image_id, codec)).save(buf, format="PNG")
    return buf.getvalue()


def overlay(archive: Archive, image_id: int, indexer) -> bytes:
    """PNG: the image blended 50/50 with the segmenter's classes (mask from the symbols, pixels decoded)."""
    from nodecode.tasks.inference import mask_image
    from nodecode.tasks.segmentation import predict
    if indexer.seg is None:
        raise NodecodeError(f"no bundled segmenter for {indexer.point}")
    sha = archive.image(image_id)["sha256"]

    def make():
        data = archive.ndc(image_id)
        header, z = indexer.codec.read_symbols(data)
        with _lock, torch.no_grad(), exact_fp32():
            zt = torch.from_numpy(z)[None].to(indexer.device)
            mask = predict(indexer.seg, indexer.seg_pipe(zt), (header.height, header.width)).argmax(1)[0]
            rgb = to_uint8(indexer.codec.decompress(data))
        colours = np.asarray(mask_image(mask.to(torch.uint8).cpu().numpy()).convert("RGB"))
        blend = (0.5 * rgb + 0.5 * colours).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(blend).save(buf, format="PNG")
        return buf.getvalue()
    return _cached(archive, f"overlays/{sha}.png", make)


def write_png(archive: Archive, image_id: int, codec, out: str | os.PathLike) -> Path:
    from nodecode.utils import atomic_write_bytes
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise NodecodeError(f"get writes PNG: {out} should end in .png")
    atomic_write_bytes(out, png(archive, image_id, codec))
    return out
