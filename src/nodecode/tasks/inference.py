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
from nodecode.codec.reader import EntropyModel, NdcFile, bundled_codec, open_ndc
from nodecode.codec.zoo import load_codec
from nodecode.data.augment import InputPipeline
from nodecode.data.ndc import decoded_batches
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
        codec = self.codec if self.cfg.input in ("latent", "decoded") else load_codec(bundled_codec(f), self.dev)
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


def _failed(path, e) -> dict:
    """The row of a file that could not be read: its one-line error, naming the file."""
    msg = " ".join(str(e).split())
    return {"path": str(path), "error": msg if str(path) in msg else f"{path}: {msg}"}


@torch.no_grad()
def classify_files(paths: list[str | os.PathLike], checkpoint: str | os.PathLike | None = None, device=None,
                   topk: int = 5, point: str = "c8", batch: int = 256, backend: str | None = None) -> list[dict]:
    """For each file: {"path", "read", "label", "name", "top": [{"class", "name", "prob"}, ...]} (top-k by softmax),
    or {"path", "error"} for a file that cannot be read (the others are still classified).

    Without `checkpoint`, each file goes to the bundled classifier of its operating point (images: `point`).
    A .ndc file is read and validated once; the .ndc files of a latent classifier are entropy-decoded in batches
    (data.ndc.decoded_batches: on the GPU when the classifier is on CUDA; `backend` picks another decoder)."""
    loaded: dict[str, tuple] = {}
    results: list = [None] * len(paths)
    pending: dict[str, list] = {}      # checkpoint -> [(position, NdcFile)], decoded in batches below

    def answer(i, ckpt, how, logits):
        cfg = loaded[ckpt][1]
        for k, prob in zip(i, torch.softmax(logits.float(), dim=1).cpu()):
            val, idx = prob.topk(min(topk, len(prob)))
            top = [{"class": cfg.classes[j], "name": cfg.class_names[j], "prob": float(v)}
                   for v, j in zip(val.tolist(), idx.tolist())]
            results[k] = {"path": str(paths[k]), "read": how, "classifier": ckpt, "label": top[0]["class"],
                          "name": top[0]["name"], "top": top}

    for i, p in enumerate(map(Path, paths)):
        try:
            f = open_ndc(p) if p.suffix.lower() == ".ndc" else None
        except NodecodeError as e:
            results[i] = _failed(p, e)
            continue
        ckpt = str(checkpoint) if checkpoint is not None else bundled_classifier(f.header.model if f else point)
        if ckpt not in loaded:
            model, cfg = load_pretrained(ckpt, "classifier", device)
            reader = Reader(cfg, next(model.parameters()).device)
            loaded[ckpt] = (model, cfg, reader, reader.pipeline())
        model, cfg, reader, pipe = loaded[ckpt]
        if f is not None and cfg.input == "latent":
            pending.setdefault(ckpt, []).append((i, f))
            continue
        try:
            x, how = _input(p, f, reader)
        except (NodecodeError, OSError) as e:
            results[i] = _failed(p, e)
            continue
        answer([i], ckpt, how, model(pipe(x.to(reader.dev))))
    for ckpt, items in pending.items():
        model, cfg, reader, pipe = loaded[ckpt]
        for idx, z, errors in decoded_batches(items, reader.entropy, reader.dev, batch, backend):
            for k, msg in errors.items():
                results[k] = _failed(paths[k], msg)
            if idx:
                answer(idx, ckpt, "ndc-symbols", model(pipe(z)))
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


def mask_paths(files: list, output, overlay=None) -> tuple[list, list | None]:
    """Where each file's mask (and overlay) goes: `output` itself for one file (unless it is a folder), else
    output/<name>.png per file (the folder is made; two files of one name are refused)."""
    files = [Path(f) for f in files]
    outs = [output, overlay]
    for k, o in enumerate(outs):
        if o is None:
            continue
        if len(files) == 1 and not Path(o).is_dir():
            outs[k] = [Path(o)]
            continue
        stems = [f.stem for f in files]
        if len(set(stems)) < len(stems):
            raise NodecodeError("two input files have the same name: their masks would overwrite each other")
        Path(o).mkdir(parents=True, exist_ok=True)
        outs[k] = [Path(o) / f"{s}.png" for s in stems]
    return outs[0], outs[1]


@torch.no_grad()
def segment_files(paths: list, outputs: list, overlays: list | None = None, model: str | os.PathLike | None = None,
                  device=None, batch: int = 16, backend: str | None = None) -> list[dict]:
    """Per-pixel classes of .ndc files (latent model: symbols only, no g_s) or images; writes each MASK.png
    atomically. Rows as segment_file's, or {"path", "error"} for a file that cannot be read (the others go on).

    A latent model's .ndc files are entropy-decoded in batches of one image size (data.ndc.decoded_batches: on the
    GPU when the model is on CUDA). The overlay (50 % blend of the image and the coloured mask) needs pixels: for
    an .ndc file the file is decoded for that picture only, after the mask has been predicted from the symbols.
    """
    from nodecode.tasks.segmentation import predict
    for out in [*outputs, *(overlays or [])]:
        if Path(out).suffix.lower() != ".png":
            raise NodecodeError(f"mask and overlay are written as PNG: {out} should end in .png")
    net, cfg = load_pretrained(model or bundled_segmenter(), "segmenter", device)
    reader = Reader(cfg, next(net.parameters()).device)
    pipe, kind = reader.pipeline(), cfg.input
    results: list = [None] * len(paths)
    pending = []

    def finish(i, logits, how, f, img):
        results[i] = _write_mask(paths[i], logits.argmax(0).to(torch.uint8).cpu().numpy(), how, outputs[i],
                                 overlays[i] if overlays else None, f, img, reader, cfg)

    for i, path in enumerate(map(Path, paths)):
        try:
            f = open_ndc(path) if path.suffix.lower() == ".ndc" else None
            if f is not None and kind == "latent":
                pending.append((i, f))
                continue
            img = None
            if f is not None:
                size, x, how = f.size, reader.pixels(f), "ndc-decoded"
            else:
                img = torch.from_numpy(load_image(path)).permute(2, 0, 1)[None].contiguous()
                size, how, x = tuple(img.shape[-2:]), "image", img
                if kind != "rgb":
                    x, how = reader.encode(img), "image-encoded"
            finish(i, predict(net, pipe(x.to(reader.dev)), size)[0], how, f, img)
        except (NodecodeError, OSError) as e:
            results[i] = _failed(path, e)
    for idx, z, errors in decoded_batches(pending, reader.entropy, reader.dev, batch, backend):
        for k, msg in errors.items():
            results[k] = _failed(paths[k], msg)
        if idx:
            files = dict(pending)
            logits = predict(net, pipe(z), files[idx[0]].size)
            for k, lg in zip(idx, logits):
                try:
                    finish(k, lg, "ndc-symbols", files[k], None)
                except (NodecodeError, OSError) as e:
                    results[k] = _failed(paths[k], e)
    return results


def _write_mask(path, mask, how, output, overlay, f, img, reader, cfg) -> dict:
    """Mask PNG (and overlay) of one file, both written or neither; the row segment_files returns."""
    import numpy as np
    from nodecode.utils import atomic_outputs
    with atomic_outputs(output, overlay, suffix=".png") as (tmp, tmp_overlay):   # both written, or neither
        mask_image(mask).save(tmp, format="PNG")
        if overlay:
            rgb = (reader.pixels(f) if f is not None else img)[0].cpu()
            blend = (0.5 * rgb.permute(1, 2, 0).numpy() + 0.5 * np.asarray(mask_image(mask).convert("RGB"))).astype(np.uint8)
            from PIL import Image
            Image.fromarray(blend).save(tmp_overlay, format="PNG")
    counts = np.bincount(mask.ravel(), minlength=len(cfg.class_names))
    return {"path": str(path), "read": how, "mask": str(output), "height": mask.shape[0], "width": mask.shape[1],
            "classes": {cfg.class_names[i]: float(c) / mask.size for i, c in enumerate(counts) if c}}


def segment_file(path: str | os.PathLike, output: str | os.PathLike, overlay: str | os.PathLike | None = None,
                 model: str | os.PathLike | None = None, device=None) -> dict:
    """segment_files of one file: its row, or NodecodeError when it cannot be read."""
    r = segment_files([path], [output], [overlay] if overlay else None, model, device)[0]
    if "error" in r:
        raise NodecodeError(r["error"])
    return r
