"""Codec speed on Kodak (App. A.9 and beyond): encode / decode time per image, network and entropy coding apart.

Networks run in fp32 with TF32 off (the files must decode bit-exactly on any machine, see data.classification);
entropy coding is constriction ANS on the CPU. On the CPU the whole codec runs on one core
(torch.set_num_threads(1)). Pillow JPEG and WebP are timed at the quality whose bpp is closest to the .ndc file's.
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from nodecode.data.latents import exact_fp32
from nodecode.data.images import list_images, load_image, to_tensor


def _clock(dev: torch.device, fn):
    """(result, seconds) of fn(), synchronizing CUDA before and after."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t = time.perf_counter()
    r = fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return r, time.perf_counter() - t


@torch.no_grad()
def time_codec(codec, images: list[np.ndarray], exact: bool = True) -> dict:
    """Median ms per image of encoder network, entropy encoding, entropy decoding and decoder network; mean bpp.

    exact: fp32 with TF32 off (what `nodecode compress` does); False lets cuDNN use TF32 (faster, same files only
    as long as no latent value lies within TF32 rounding of a decision boundary).
    """
    dev = next(codec.parameters()).device
    parts = {"encode_net_ms": [], "encode_entropy_ms": [], "decode_entropy_ms": [], "decode_net_ms": []}
    bpps = []
    for i, img in enumerate([images[0]] + images):   # the first image twice: the first pass is warm-up
        x = to_tensor(img).to(dev)
        with exact_fp32() if exact else nullcontext():
            z, t_en = _clock(dev, lambda: codec.encode_symbols(x)[0].to(torch.uint8).cpu().numpy())
            data, t_ee = _clock(dev, lambda: codec.pack(z, img.shape[0], img.shape[1]))
            (_, z2), t_de = _clock(dev, lambda: codec.read_symbols(data))
            _, t_dn = _clock(dev, lambda: codec.decode_latent(codec.latent(torch.from_numpy(z2).to(dev))[None],
                                                              img.shape[:2]).mul(255).round().to(torch.uint8).cpu())
        if i == 0:
            continue
        for k, t in zip(parts, (t_en, t_ee, t_de, t_dn)):
            parts[k].append(1e3 * t)
        bpps.append(len(data) * 8 / (img.shape[0] * img.shape[1]))
    out = {k: statistics.median(v) for k, v in parts.items()}
    out["encode_ms"] = out["encode_net_ms"] + out["encode_entropy_ms"]
    out["decode_ms"] = out["decode_net_ms"] + out["decode_entropy_ms"]
    out["total_ms"] = out["encode_ms"] + out["decode_ms"]
    return {**out, "bpp": float(np.mean(bpps)), "images": len(bpps)}


def time_pillow(images: list[np.ndarray], fmt: str, bpps: list[float], repeats: int = 3) -> dict:
    """Median ms per image of Pillow encode and decode at the quality matched to each image's target bpp."""
    from nodecode.codec.classical import decode, encode, match_bpp
    enc, dec, real = [], [], []
    for img, bpp in zip(images, bpps):
        data, b, q = match_bpp(img, fmt, bpp)
        real.append(b)
        enc.append(min(_clock(torch.device("cpu"), lambda: encode(img, fmt, q))[1] for _ in range(repeats)))
        dec.append(min(_clock(torch.device("cpu"), lambda: decode(data))[1] for _ in range(repeats)))
    e, d = 1e3 * statistics.median(enc), 1e3 * statistics.median(dec)
    return {"encode_ms": e, "decode_ms": d, "total_ms": e + d, "bpp": float(np.mean(real)), "images": len(images)}


def kodak_speed(folder: str | Path, codec_name: str = "c8", device: str = "cuda", limit: int | None = None,
                cpu_limit: int = 3, log=print) -> list[dict]:
    """Rows {"path": "kodak-codec", "model", "device", "threads", encode/decode ms ...} for the codec and Pillow."""
    from nodecode.codec.zoo import load_codec
    files = list_images(folder)[:limit]
    images = [load_image(f) for f in files]
    rows = []
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
        codec = load_codec(codec_name, device)
        for exact in (True, False):
            r = time_codec(codec, images, exact)
            prec = "fp32" if exact else "tf32"
            rows.append({"path": "kodak-codec", "model": codec_name, "device": "cuda", "threads": None,
                         "precision": prec, **r})
            log(f"kodak {codec_name} cuda {prec}: encode {r['encode_ms']:.2f} ms, decode {r['decode_ms']:.2f} ms, "
                f"{r['bpp']:.3f} bpp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sub = images[:cpu_limit]
        r = time_codec(load_codec(codec_name, "cpu"), sub)
        rows.append({"path": "kodak-codec", "model": codec_name, "device": "cpu", "threads": 1, "precision": "fp32", **r})
        log(f"kodak {codec_name} cpu/1 thread: encode {r['encode_ms']:.0f} ms, decode {r['decode_ms']:.0f} ms")
        target = [r["bpp"]] * len(sub)
        for fmt in ("jpeg", "webp"):
            p = time_pillow(sub, fmt, target)
            rows.append({"path": "kodak-codec", "model": fmt, "device": "cpu", "threads": 1, **p})
            log(f"kodak {fmt} cpu: encode {p['encode_ms']:.1f} ms, decode {p['decode_ms']:.1f} ms at {p['bpp']:.3f} bpp")
    finally:
        torch.set_num_threads(threads)
    return rows
