"""File-level compress / decompress: image file <-> .ndc file, atomic outputs, one-line errors."""
from __future__ import annotations

import torch

from nodecode.codec.autoencoder import CompressionModel
from nodecode.codec.reader import NdcFile, bundled_codec, open_ndc
from nodecode.codec.zoo import load_codec
from nodecode.data.images import load_image, save_image, to_tensor, to_uint8
from nodecode.errors import NodecodeError
from nodecode.utils import atomic_write_bytes


def codec_for(f: NdcFile, model: str | CompressionModel | None, device="cpu") -> CompressionModel:
    """The codec that wrote `f`: the given one, or the bundled one its header names."""
    if isinstance(model, CompressionModel):
        return model
    return load_codec(bundled_codec(f, ": pass --codec PATH") if model is None else model, device)


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
    f = open_ndc(src)                   # read and validated once; its errors name the file
    codec = codec_for(f, model, device)
    try:
        with torch.no_grad():
            x_hat = codec.decompress(f)
    except NodecodeError as e:          # e.g. another codec's file: name the file, as classify / segment do
        raise NodecodeError(f"{f.path}: {e}") from None
    img = to_uint8(x_hat)
    save_image(img, dst)
    return {"height": img.shape[0], "width": img.shape[1]}
