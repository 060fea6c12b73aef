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

from nodecode import zoo
from nodecode.codec.reader import EntropyModel, NdcFile, open_ndc
from nodecode.codec.zoo import load_codec
from nodecode.data.augment import InputPipeline
from nodecode.data.folders import prepare_image
from nodecode.data.latents import exact_fp32
from nodecode.data.images import load_image
from nodecode.errors import NodecodeError
from nodecode.limits import check_aspect
from nodecode.tasks.classification import bundled_classifier, load_pretrained


class Reader:
    """Turns files into one network's input: the entropy model (centers + tables) for .ndc symbols, the whole
    codec only where pixels must be encoded or decoded (image files for latent/decoded nets, decoded .ndc)."""

    def __init__(self, cfg: zoo.PretrainedCfg, dev):
        self.cfg, self.dev, self._codec, self._entropy = cfg, dev, None, None

    @property
    def codec(self):
        if self._codec is None:
            self._codec = load_codec(self.cfg.codec, self.dev)
        return self._codec

    @property
    def entropy(self) -> EntropyModel:
        if self._entropy is None:
            self._entropy = (EntropyModel.from_codec(self._codec) if self._codec is not None
                             else EntropyModel.load(self.cfg.codec))
            if self.cfg.fingerprint and self.cfg.fingerprint_bytes != self._entropy.fingerprint:
                raise NodecodeError(f"{self.cfg.name} was trained on a codec '{self.cfg.codec}' "
                                    f"({self.cfg.fingerprint}) other than the one found ({self._entropy.fingerprint.hex()})")
        return self._entropy

    def latent(self, symbols):
        return self.entropy.latent(symbols)

    def pipeline(self) -> InputPipeline:
        return InputPipeline(self.cfg.input, torch.tensor(self.cfg.mean), self if self.cfg.input == "latent" else None)

    def symbols(self, f: NdcFile) -> torch.Tensor:
        """uint8 (1, C, h, w) symbols of a validated file: entropy decoding only, no g_s, no pixels."""
        return torch.from_numpy(self.entropy.symbols(f)).to(torch.uint8)[None]

    def pixels(self, f: NdcFile) -> torch.Tensor:
        """uint8 (1, 3, H, W) decoded image of a validated file: with this network's codec (latent, decoded kinds),
        else with the bundled codec its header names."""
        codec = self.codec if self.cfg.input in ("latent", "decoded") else load_codec(_bundled_codec(f), self.dev)
        entropy = self.entropy if codec is self._codec else EntropyModel.from_codec(codec)
        z = torch.from_numpy(entropy.symbols(f)).to(self.dev)
        with exact_fp32():
            x = codec.decode_latent(entropy.latent(z)[None], f.size)
        return x.mul(255).round().to(torch.uint8)

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 symbols (latent kind) or codec reconstruction (decoded kind) of a uint8 image (1, 3, H, W)."""
        with exact_fp32():
            z = self.codec.encode_symbols(img.to(self.dev).float().div(255))
            if self.cfg.input == "latent":
                return z.to(torch.uint8)
            x_hat = self.codec.decode_latent(self.codec.latent(z), tuple(img.shape[2:]))
        return x_hat.mul(255).round().to(torch.uint8)


def _bundled_codec(f: NdcFile) -> str:
    if f.header.model not in zoo.list_pretrained("codec"):
        raise NodecodeError(f"{f.path}: written by codec '{f.header.model}', which is not bundled")
    return f.header.model


def _input(path: Path, f: NdcFile | None, reader: Reader) -> tuple[torch.Tensor, str]:
    """uint8 (1, C, h, w) classifier input of one file, and how it was read."""
    kind = reader.cfg.input
    if f is not None:
        if kind == "latent":
            return reader.symbols(f), "ndc-symbols"
        return reader.pixels(f), "ndc-decoded"
    img = load_image(path)
    check_aspect(img.shape[1], img.shape[0], f"image {path}")
    img = torch.from_numpy(prepare_image(img)).permute(2, 0, 1)[None].contiguous()
    if kind in ("rgb", "webp"):
        return img, "image"
    return reader.encode(img), "image-encoded" if kind == "latent" else "image-decoded"


@torch.no_grad()
def classify_files(paths: list[str | os.PathLike], checkpoint: str | os.PathLike | None = None, device=None,
                   topk: int = 5, point: str = "c8") -> list[dict]:
    """For each file: {"path", "read", "label", "name", "top": [{"class", "name", "prob"}, ...]} (top-k by softmax).

    Without `checkpoint`, each file goes to the bundled classifier of its operating point (images: `point`).
    A .ndc file is read and validated once; a latent classifier needs only its codec's centers and tables."""
    loaded: dict[str, tuple] = {}
    results = []
    for p in map(Path, paths):
        f = open_ndc(p) if p.suffix.lower() == ".ndc" else None
        ckpt = str(checkpoint) if checkpoint is not None else bundled_classifier(f.header.model if f else point)
        if ckpt not in loaded:
            model, cfg = load_pretrained(ckpt, "classifier", device)
            reader = Reader(cfg, next(model.parameters()).device)
            loaded[ckpt] = (model, cfg, reader, reader.pipeline())
        model, cfg, reader, pipe = loaded[ckpt]
        x, how = _input(p, f, reader)
        prob = torch.softmax(model(pipe(x.to(reader.dev))).float(), dim=1)[0].cpu()
        val, idx = prob.topk(min(topk, len(prob)))
        top = [{"class": cfg.classes[i], "name": cfg.class_names[i], "prob": float(v)}
               for v, i in zip(val.tolist(), idx.tolist())]
        results.append({"path": str(p), "read": how, "classifier": ckpt, "label": top[0]["class"],
                        "name": top[0]["name"], "top": top})
    return results


def bundled_segmenter(point: str = "c8") -> str:
    """The zoo name of the bundled CamVid segmenter (narrow cResNet-51-d on c8 latents); NodecodeError if absent."""
    return zoo.bundled_for("segmenter", point)


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
    from nodecode.tasks.segmentation import predict
    from nodecode.utils import atomic_outputs
    for out in (output, overlay):
        if out is not None and Path(out).suffix.lower() != ".png":
            raise NodecodeError(f"mask and overlay are written as PNG: {out} should end in .png")
    path = Path(path)
    f = open_ndc(path) if path.suffix.lower() == ".ndc" else None
    net, cfg = load_pretrained(model or bundled_segmenter(), "segmenter", device)
    reader = Reader(cfg, next(net.parameters()).device)
    kind = cfg.input
    if f is not None:
        size = f.size
        x, how = (reader.symbols(f), "ndc-symbols") if kind == "latent" else (reader.pixels(f), "ndc-decoded")
    else:
        img = torch.from_numpy(load_image(path)).permute(2, 0, 1)[None].contiguous()
        size, how = tuple(img.shape[-2:]), "image"
        x = img
        if kind != "rgb":
            x, how = reader.encode(img), "image-encoded"
    mask = predict(net, reader.pipeline()(x.to(reader.dev)), size).argmax(1)[0].to(torch.uint8).cpu().numpy()
    with atomic_outputs(output, overlay, suffix=".png") as (tmp, tmp_overlay):   # both written, or neither
        mask_image(mask).save(tmp, format="PNG")
        if overlay:
            rgb = (reader.pixels(f) if f is not None else img)[0].cpu()
            blend = (0.5 * rgb.permute(1, 2, 0).numpy() + 0.5 * np.asarray(mask_image(mask).convert("RGB"))).astype(np.uint8)
            from PIL import Image
            Image.fromarray(blend).save(tmp_overlay, format="PNG")
    counts = np.bincount(mask.ravel(), minlength=len(cfg.class_names))
    return {"path": str(path), "read": how, "mask": str(output), "height": size[0], "width": size[1],
            "classes": {cfg.class_names[i]: float(c) / mask.size for i, c in enumerate(counts) if c}}
