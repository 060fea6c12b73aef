"""Classifying files with a trained classifier (§4): .ndc files straight from their entropy-decoded symbols, no RGB.

A latent classifier reads a .ndc file's symbols (``read_symbols``: entropy decoding only; the decoder g_s never
runs) and feeds ŷ = centers[z] at the file's full latent size to the cResNet. An image file is first brought to
the training geometry (224x224 as is, else shorter side 256 + centre crop, see data.classification) and encoded,
so an image and the .ndc of that 224x224 image give the same answer. Pixel classifiers (rgb, decoded, webp) take
image files as prepared images (decoded: through the codec) and .ndc files decompressed to RGB.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from nodecode.codec.bitstream import read_header
from nodecode.codec.files import codec_for, read_ndc
from nodecode.codec.zoo import load_codec
from nodecode.data.augment import InputPipeline
from nodecode.data.classification import exact_fp32, prepare_image
from nodecode.data.images import load_image
from nodecode.errors import NodecodeError
from nodecode.tasks.classification import bundled_classifier, load_classifier, needs_codec


def _input(path: Path, kind: str, codec, dev) -> tuple[torch.Tensor, str]:
    """uint8 (1, C, h, w) network input of one file, and how it was read."""
    if path.suffix.lower() == ".ndc":
        if not path.is_file():
            raise NodecodeError(f"no such file: {path}")
        data = path.read_bytes()
        if kind == "latent":
            _, z = codec.read_symbols(data)          # entropy decoding only: no g_s, no pixels
            return torch.from_numpy(z).to(torch.uint8)[None], "ndc-symbols"
        with torch.no_grad(), exact_fp32():
            x = codec_for(data, codec if kind == "decoded" else None, dev).decompress(data)
        return x.mul(255).round().to(torch.uint8), "ndc-decoded"
    img = torch.from_numpy(prepare_image(load_image(path))).permute(2, 0, 1)[None].contiguous()
    if kind in ("rgb", "webp"):
        return img, "image"
    with torch.no_grad(), exact_fp32():
        z = codec.encode_symbols(img.to(dev).float().div(255))
        if kind == "latent":
            return z.to(torch.uint8), "image-encoded"
        x_hat = codec.decode_latent(codec.latent(z), tuple(img.shape[2:]))
        return x_hat.mul(255).round().to(torch.uint8), "image-decoded"


def _checkpoint_for(path: Path, checkpoint, point: str) -> str:
    """The given checkpoint, else the bundled classifier of the file's operating point (.ndc header) or `point`."""
    if checkpoint is not None:
        return str(checkpoint)
    if path.suffix.lower() == ".ndc":
        point = read_header(read_ndc(path)).model
    return str(bundled_classifier(point))


@torch.no_grad()
def classify_files(paths: list[str | os.PathLike], checkpoint: str | os.PathLike | None = None, device=None,
                   topk: int = 5, point: str = "c8") -> list[dict]:
    """For each file: {"path", "read", "label", "name", "top": [{"class", "name", "prob"}, ...]} (top-k by softmax).

    Without `checkpoint`, each file goes to the bundled classifier of its operating point (images: `point`)."""
    loaded: dict[str, tuple] = {}
    results = []
    for p in map(Path, paths):
        ckpt = _checkpoint_for(p, checkpoint, point)
        if ckpt not in loaded:
            model, meta = load_classifier(ckpt, device)
            dev = next(model.parameters()).device
            codec = load_codec(meta["codec"], dev) if needs_codec(meta["input"]) else None
            loaded[ckpt] = (model, meta, codec, InputPipeline(meta["input"], torch.tensor(meta["mean"]), codec), dev)
        model, meta, codec, pipe, dev = loaded[ckpt]
        x, how = _input(p, meta["input"], codec, dev)
        prob = torch.softmax(model(pipe(x.to(dev))).float(), dim=1)[0].cpu()
        val, idx = prob.topk(min(topk, len(prob)))
        top = [{"class": meta["classes"][i], "name": meta["class_names"][i], "prob": float(v)}
               for v, i in zip(val.tolist(), idx.tolist())]
        results.append({"path": str(p), "read": how, "classifier": ckpt, "label": top[0]["class"],
                        "name": top[0]["name"], "top": top})
    return results
