"""Rate-distortion evaluation (Fig. 8): the learned operating points from real .ndc files vs classical codecs."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from nodecode.codec.zoo import OPERATING_POINTS, load_codec
from nodecode.data.images import list_images, load_image, to_tensor, to_uint8
from nodecode.codec.classical import CLASSICAL_CODECS, decode, match_bpp
from nodecode.eval.metrics import image_metrics
from nodecode.utils import pick_device, provenance, write_json

METRICS = ("bpp", "psnr", "ssim", "ms_ssim")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def evaluate_learned(codec, images: list[tuple[str, np.ndarray]], device) -> list[dict]:
    """Per image: the real file's bpp, the tables' estimate, metrics, encode/decode time (entropy coding included)."""
    rows = []
    for name, img in images:
        x = to_tensor(img).to(device)
        _sync(device); t0 = time.perf_counter()
        data = codec.compress(x)
        _sync(device); t1 = time.perf_counter()
        x_hat = codec.decompress(data)
        rec = to_uint8(x_hat)
        _sync(device); t2 = time.perf_counter()
        _, symbols = codec.read_symbols(data)
        h, w = img.shape[:2]
        rows.append({"image": name, "codec": codec.config.name, "bytes": len(data), "bpp": len(data) * 8 / (h * w),
                     "est_bpp": codec.estimated_bits(symbols) / (h * w), **image_metrics(img, rec),
                     "encode_ms": 1e3 * (t1 - t0), "decode_ms": 1e3 * (t2 - t1)})
    return rows


def evaluate_classical(images, codec: str, targets: list[float], point: str) -> list[dict]:
    """Per image: the classical codec's file closest to that image's target bpp, and its metrics."""
    rows = []
    for (name, img), target in zip(images, targets):
        t0 = time.perf_counter()
        data, bpp, q = match_bpp(img, codec, target)
        rows.append({"image": name, "codec": codec, "matched_to": point, "bpp": bpp, "quality": q,
                     **image_metrics(img, decode(data)), "search_ms": 1e3 * (time.perf_counter() - t0)})
    return rows


def average(rows: list[dict], keys=("codec", "matched_to")) -> list[dict]:
    """Mean of each metric over images, per (codec, matched operating point)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        row = dict(zip(keys, key))
        for m in ("bpp", "est_bpp", "psnr", "ssim", "ms_ssim", "encode_ms", "decode_ms"):
            vals = [r[m] for r in rs if m in r]
            if vals:
                row[m] = float(np.mean(vals))
        row["images"] = len(rs)
        out.append(row)
    return out


def evaluate_codecs(data, json_out=None, plot=None, codecs=("c8", "c16", "c32"), baselines=True, device=None,
                    limit=None) -> dict:
    """Evaluate learned codecs and (at each one's per-image real bpp) JPEG, JPEG 2000, WebP and AVIF."""
    device = pick_device(device)
    files = list_images(data)[:limit]
    images = [(f.name, load_image(f)) for f in files]
    per_image = []
    for name in codecs:
        codec = load_codec(name, device)
        learned = evaluate_learned(codec, images, device)
        for r in learned:
            r["matched_to"] = codec.config.name
        per_image += learned
        if baselines:
            for cl in CLASSICAL_CODECS:
                per_image += evaluate_classical(images, cl, [r["bpp"] for r in learned], codec.config.name)
    rows = average(per_image)
    for r in rows:
        r["paper_bpp"] = OPERATING_POINTS.get(r["matched_to"])
    result = {"rows": rows, "per_image": per_image, "data": str(data), **provenance("nodecode eval-codec")}
    if json_out:
        write_json(json_out, result)
    if plot:
        plot_rd(rows, plot)
    return result


def format_rows(rows: list[dict]) -> str:
    lines = ["| codec | matched to | bpp | PSNR | SSIM | MS-SSIM |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['codec']} | {r.get('matched_to', '')} | {r['bpp']:.4f} | {r['psnr']:.2f} | "
                     f"{r['ssim']:.4f} | {r['ms_ssim']:.4f} |")
    return "\n".join(lines)


def plot_rd(rows: list[dict], path) -> None:
    """PSNR and MS-SSIM vs bpp, one line per codec (Fig. 8)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nodecode.utils import atomic_path
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    by_codec: dict = {}
    for r in rows:
        kind = "nodecode" if r["codec"] in OPERATING_POINTS or r["codec"] == r.get("matched_to") else r["codec"]
        by_codec.setdefault(kind, []).append(r)
    for kind, rs in by_codec.items():
        rs = sorted(rs, key=lambda r: r["bpp"])
        for ax, m in zip(axes, ("psnr", "ms_ssim")):
            ax.plot([r["bpp"] for r in rs], [r[m] for r in rs], "o-" if kind == "nodecode" else ".--", label=kind)
    for ax, m in zip(axes, ("PSNR [dB]", "MS-SSIM")):
        ax.set_xlabel("bpp (real file size)"); ax.set_ylabel(m); ax.grid(alpha=0.3); ax.legend()
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
