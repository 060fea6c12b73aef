"""Index rows straight from the symbols: top-k labels, class-area fractions and a similarity embedding.

`Indexer.rows(items)` is the archive's one ingest step as a pure batch function, bytes in -> rows out (no files,
no database), so the same call runs in `archive add`, in the server and under a distributed engine (Ray Data
`map_batches` with one Indexer per worker, or a Spark `mapPartitions`). Images are encoded (batched per size);
uploaded .ndc files are only entropy-decoded. Labels and the embedding come from one pass of the bundled latent
classifier (embedding = its globally pooled backbone features, L2-normalised); class areas from the bundled
latent segmenter at latent resolution. Nothing is decoded to RGB here.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from nodecode.codec.zoo import load_codec
from nodecode.data.augment import InputPipeline
from nodecode.data.latents import exact_fp32
from nodecode.errors import NodecodeError

NDC_MAGIC = b"NDC\x1a"
MAX_PIXELS = 40_000_000   # default dimension limit (40 MP); the server and CLI pass their own
TOPK = 5
BATCH = 16


@dataclass
class Row:
    sha256: str
    name: str
    width: int
    height: int
    orig_bytes: int
    ndc: bytes
    codec: str
    top: list = field(default_factory=list)        # [(class id, class name, probability)], best first
    areas: dict = field(default_factory=dict)      # segmenter class name -> fraction of the latent grid
    embedding: np.ndarray | None = None            # float32, unit length


def decode_image(data: bytes, name: str = "upload", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Image bytes -> uint8 (H, W, 3); one-line NodecodeError for non-images, truncation, bombs, oversize."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            if im.width * im.height > max_pixels:
                raise NodecodeError(f"{name}: image too large ({im.width}x{im.height} > {max_pixels} pixels)")
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except NodecodeError:
        raise
    except UnidentifiedImageError:
        raise NodecodeError(f"{name}: not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise NodecodeError(f"{name}: image too large (decompression bomb)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise NodecodeError(f"{name}: not a readable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


class Indexer:
    """The bundled networks of one operating point, loaded once; `rows` indexes a batch of (name, bytes)."""

    def __init__(self, codec: str = "c8", device: str | torch.device = "cpu", max_pixels: int = MAX_PIXELS):
        from nodecode.tasks.classification import bundled_classifier, load_classifier
        self.device, self.max_pixels = torch.device(device), max_pixels
        self.codec = load_codec(codec, self.device)
        self.point = self.codec.config.name
        self.cls, self.cls_meta = load_classifier(bundled_classifier(self.point), self.device)
        if self.cls_meta["input"] != "latent":
            raise NodecodeError(f"the classifier for {self.point} does not read latents")
        self.cls_pipe = InputPipeline("latent", torch.tensor(self.cls_meta["mean"]), self.codec)
        self.seg = self.seg_meta = None
        try:
            from nodecode.tasks.inference import bundled_segmenter
            from nodecode.tasks.segmentation import load_segmenter
            seg, meta = load_segmenter(bundled_segmenter(), self.device)
            if meta["input"] == "latent" and meta["codec"] == self.point:
                self.seg, self.seg_meta = seg, meta
                self.seg_pipe = InputPipeline("latent", torch.tensor(meta["mean"]), self.codec)
        except NodecodeError:
            pass  # no bundled segmenter for this point: rows carry no areas

    @property
    def embedding_dim(self) -> int:
        return self.cls.num_features

    def symbols_of(self, name: str, data: bytes) -> tuple[int, int, np.ndarray | None, np.ndarray | None]:
        """(H, W, symbols or None, image or None): an .ndc is entropy-decoded (checked against this codec)."""
        if data[:4] == NDC_MAGIC:
            try:
                header, z = self.codec.read_symbols(data)
            except NodecodeError as e:
                raise NodecodeError(f"{name}: {e}") from None
            except Exception as e:  # a corrupted stream can fail inside the ANS decoder
                raise NodecodeError(f"{name}: corrupted .ndc file ({type(e).__name__})") from None
            if header.height * header.width > self.max_pixels:
                raise NodecodeError(f"{name}: image too large ({header.width}x{header.height})")
            return header.height, header.width, z, None
        img = decode_image(data, name, self.max_pixels)
        return img.shape[0], img.shape[1], None, img

    @torch.no_grad()
    def rows(self, items: list[tuple[str, bytes]]) -> list[Row]:
        """Index a batch; raises NodecodeError naming the first bad item (callers validate one by one first)."""
        parsed = [(n, d, *self.symbols_of(n, d)) for n, d in items]
        symbols: list[np.ndarray | None] = [p[4] for p in parsed]
        # encode images, batched by size
        by_size: dict[tuple, list[int]] = {}
        for i, p in enumerate(parsed):
            if p[4] is None:
                by_size.setdefault(p[5].shape, []).append(i)
        for idx in by_size.values():
            for s in range(0, len(idx), BATCH):
                chunk = idx[s: s + BATCH]
                x = torch.from_numpy(np.stack([parsed[i][5] for i in chunk])).permute(0, 3, 1, 2)
                with exact_fp32():
                    z = self.codec.encode_symbols(x.to(self.device).float().div_(255)).to(torch.uint8).cpu().numpy()
                for j, i in enumerate(chunk):
                    symbols[i] = z[j]
        rows = []
        for (n, d, h, w, z_in, _), z in zip(parsed, symbols):
            ndc = d if z_in is not None else self.codec.pack(z, h, w)
            rows.append(Row(hashlib.sha256(d).hexdigest(), n, w, h, len(d), ndc, self.point))
        # understand, batched by latent shape
        by_shape: dict[tuple, list[int]] = {}
        for i, z in enumerate(symbols):
            by_shape.setdefault(z.shape, []).append(i)
        for idx in by_shape.values():
            for s in range(0, len(idx), BATCH):
                chunk = idx[s: s + BATCH]
                z = torch.from_numpy(np.stack([symbols[i] for i in chunk])).to(self.device)
                self._understand(z, [rows[i] for i in chunk])
        return rows

    def _understand(self, z: torch.Tensor, rows: list[Row]) -> None:
        feats = self.cls.forward_features(self.cls_pipe(z))
        pooled = torch.flatten(self.cls.avgpool(feats), 1)
        prob = torch.softmax(self.cls.fc(pooled).float(), dim=1).cpu()
        emb = torch.nn.functional.normalize(pooled.float(), dim=1).cpu().numpy().astype(np.float32)
        val, idx = prob.topk(min(TOPK, prob.shape[1]))
        names = self.cls_meta["class_names"]
        areas = None
        if self.seg is not None:
            cls = self.seg(self.seg_pipe(z)).argmax(1).cpu().numpy()       # (B, h, w) at latent resolution
            k = len(self.seg_meta["class_names"])
            areas = [np.bincount(c.ravel(), minlength=k) / c.size for c in cls]
        for j, r in enumerate(rows):
            r.top = [(self.cls_meta["classes"][i], names[i], float(v)) for v, i in zip(val[j].tolist(), idx[j].tolist())]
            r.embedding = emb[j]
            if areas is not None:
                r.areas = {self.seg_meta["class_names"][c]: float(f) for c, f in enumerate(areas[j]) if f > 0}


