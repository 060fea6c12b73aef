"""File-level compress / decompress: image file <-> .ndc file, atomic outputs, one-line errors."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from nodecode.codec import bitstream
from nodecode.codec.autoencoder import CompressionModel
from nodecode.codec.zoo import list_codecs, load_codec
from nodecode.data.images import load_image, save_image, to_tensor, to_uint8
from nodecode.errors import NodecodeError
from nodecode.utils import atomic_write_bytes


def read_ndc(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise NodecodeError(f"no such file: {path}")
    return path.read_bytes()


def codec_for(data: bytes, model: str | CompressionModel | None, device="cpu") -> CompressionModel:
    """The codec that wrote `data`: the given one, or the bundled one the header names."""
    if isinstance(model, CompressionModel):
        return model
    if model is None:
        name = bitstream.read_header(data).model
        if name not in list_codecs():
            raise NodecodeError(f"file was written by codec '{name}', which is not bundled: pass --codec PATH")
        model = name
    return load_codec(model, device)


def compress_file(src, dst, model: str | CompressionModel = "c8", device="cpu") -> dict:
    """Encode an image file to a .ndc file; returns its size and bpp."""
    img = load_image(src)
    codec = model if isinstance(model, CompressionModel) else load_codec(model, device)
    dev = next(codec.parameters()).device
    data = codec.compress(to_tensor(img).to(dev))
    atomic_write_bytes(dst, data)
    h, w = img.shape[:2]
    return {"bytes": len(data), "bpp": len(data) * 8 / (h * w), "height": h, "width": w}


def decompress_file(src, dst, model: str | CompressionModel | None = None, device="cpu") -> dict:
    """Decode a .ndc file to an image file (format from dst's extension)."""
    data = read_ndc(src)
    try:
        codec = codec_for(data, model, device)
        with torch.no_grad():
            x_hat = codec.decompress(data)
    except NodecodeError as e:          # name the file, as classify / segment do
        raise NodecodeError(f"{src}: {e}") from None
    img = to_uint8(x_hat)
    save_image(img, dst)
    return {"height": img.shape[0], "width": img.shape[1]}
