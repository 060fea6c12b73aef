"""Classifying (§4) and segmenting (§5) files: .ndc files straight from their entropy-decoded symbols, no RGB.

A latent classifier reads a .ndc file's symbols (``read_symbols``: entropy decoding only; the decoder g_s never
runs) and feeds ŷ = centers[z] at the file's full latent size to the cResNet. An image file is first brought to
the training geometry (224x224 as is, else shorter side 256 + centre crop, see data.classification) and encoded,
so an image and the .ndc of that 224x224 image give the same answer. Pixel classifiers (rgb, decoded, webp) take
image files as prepared images (decoded: through the codec) and .ndc files decompressed to RGB.
Segmentation (segment_file) works the same way on full-size frames (no resizing; latent logits are upsampled 8x
and cropped to the image size) and writes a palette PNG mask.
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
from nodecode.limits import check_aspect
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
    img = load_image(path)
    check_aspect(img.shape[1], img.shape[0], f"image {path}")
    img = torch.from_numpy(prepare_image(img)).permute(2, 0, 1)[None].contiguous()
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


BUNDLED_SEGMENTER = "segmenter-c8.safetensors"


def bundled_segmenter() -> Path:
    """weights/segmenter-c8.safetensors: the narrow cResNet-51-d (width 0.25) on c8 latents; NodecodeError if absent."""
    from nodecode.codec.zoo import WEIGHTS_DIR
    p = WEIGHTS_DIR / BUNDLED_SEGMENTER
    if not p.is_file():
        raise NodecodeError(f"no bundled segmenter ({p} is absent); pass --model SEGMENTER.safetensors")
    return p


def mask_image(mask, palette=None):
    """uint8 (H, W) class indices -> palette PNG image ('P' mode) with the CamVid colours."""
    import numpy as np
    from PIL import Image
    from nodecode.data.segmentation import CAMVID_COLOURS
    im = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))   # mode L; putpalette makes it P
    colours = list(palette or CAMVID_COLOURS)
    im.putpalette([v for c in colours + [(0, 0, 0)] * (256 - len(colours)) for v in c])
    return im


@torch.no_grad()
def segment_file(path: str | os.PathLike, output: str | os.PathLike, overlay: str | os.PathLike | None = None,
                 model: str | os.PathLike | None = None, device=None) -> dict:
    """Per-pixel classes of an .ndc file (latent model: symbols only, no g_s) or image; writes MASK.png atomically.

    The overlay (50 % blend of the image and the coloured mask) needs pixels: for a latent model on an .ndc file
    the file is decoded for that picture only, after the mask has been predicted from the symbols.
    """
    import numpy as np
    from nodecode.tasks.segmentation import load_segmenter, predict
    from nodecode.utils import atomic_outputs
    for out in (output, overlay):
        if out is not None and Path(out).suffix.lower() != ".png":
            raise NodecodeError(f"mask and overlay are written as PNG: {out} should end in .png")
    net, meta = load_segmenter(model or bundled_segmenter(), device)
    dev = next(net.parameters()).device
    kind, path = meta["input"], Path(path)
    codec = load_codec(meta["codec"], dev) if kind != "rgb" else None
    if path.suffix.lower() == ".ndc":
        from nodecode.codec.files import read_ndc
        data = read_ndc(path)
        if kind == "latent":
            header, z = codec.read_symbols(data)
            x, how, size = torch.from_numpy(z).to(torch.uint8)[None], "ndc-symbols", (header.height, header.width)
        else:
            with exact_fp32():
                x = codec_for(data, codec, dev).decompress(data).mul(255).round().to(torch.uint8)
            how, size = "ndc-decoded", tuple(x.shape[-2:])
    else:
        img = torch.from_numpy(load_image(path)).permute(2, 0, 1)[None].contiguous()
        size, how = tuple(img.shape[-2:]), "image"
        x = img
        if kind != "rgb":
            with exact_fp32():
                z = codec.encode_symbols(img.to(dev).float().div(255))
                x = z.to(torch.uint8) if kind == "latent" else \
                    codec.decode_latent(codec.latent(z), size).mul(255).round().to(torch.uint8)
            how = "image-encoded"
    pipe = InputPipeline(kind, torch.tensor(meta["mean"]), codec)
    mask = predict(net, pipe(x.to(dev)), size).argmax(1)[0].to(torch.uint8).cpu().numpy()
    with atomic_outputs(output, overlay, suffix=".png") as (tmp, tmp_overlay):   # both written, or neither
        mask_image(mask).save(tmp, format="PNG")
        if overlay:
            if path.suffix.lower() == ".ndc":
                with exact_fp32():
                    rgb = codec_for(data, codec, dev).decompress(data).mul(255).round().to(torch.uint8)[0].cpu()
            else:
                rgb = img[0]
            blend = (0.5 * rgb.permute(1, 2, 0).numpy() + 0.5 * np.asarray(mask_image(mask).convert("RGB"))).astype(np.uint8)
            from PIL import Image
            Image.fromarray(blend).save(tmp_overlay, format="PNG")
    counts = np.bincount(mask.ravel(), minlength=len(meta["class_names"]))
    return {"path": str(path), "read": how, "mask": str(output), "height": size[0], "width": size[1],
            "classes": {meta["class_names"][i]: float(c) / mask.size for i, c in enumerate(counts) if c}}
