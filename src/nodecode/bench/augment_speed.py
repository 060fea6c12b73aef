"""Cost of the augmentation through the codec (issue 12): images per second of random-resized crop + mirror, then
encoder (latent arm) or encoder + decoder (decoded arm), batched on the device, bf16 autocast on CUDA if `amp`.

On the fly, every training image of every epoch pays this once; K cached variants pay it K times per image once
(then a lookup per step): `epoch_s` is the on-the-fly cost of one epoch of `train_images`, `variants_s` the one-off
cost of K variants. Input images are random uint8 unless real ones are given (the cost does not depend on them).
"""
from __future__ import annotations

import time

import torch

from nodecode.data.augment import generator
from nodecode.data.codec_augment import resized_crop_params, resized_crops, through_codec


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def augment_speed(codec_name: str = "c8", device: str | None = None, batch: int = 128, iters: int = 10,
                  warmup: int = 2, size: int = 224, kinds=("rgb", "latent", "decoded"), amp: bool = True,
                  images: torch.Tensor | None = None, train_images: int = 9469, variants: int = 8) -> list[dict]:
    """One row per arm: img/s of augmentation (+ encode, + decode), and what that costs per epoch / for K variants."""
    from nodecode.codec.zoo import load_codec
    from nodecode.utils import pick_device
    dev = pick_device(device)
    codec = load_codec(codec_name, dev)
    x = (images if images is not None else
         torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator(0)))[:batch].to(dev)
    rows = []
    for kind in kinds:
        for i in range(warmup + iters):
            if i == warmup:
                _sync(dev)
                t0 = time.perf_counter()
            boxes = resized_crop_params(len(x), generator(0, i))
            through_codec(resized_crops(x, boxes), kind, codec, amp)
        _sync(dev)
        ips = iters * len(x) / (time.perf_counter() - t0)
        rows.append({"arm": kind, "codec": codec_name, "img_per_s": ips, "batch": len(x), "size": list(x.shape[-2:]),
                     "amp": amp and dev.type == "cuda", "epoch_s": train_images / ips,
                     "variants": variants, "variants_s": variants * train_images / ips,
                     "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| arm | codec | img/s | s / epoch (on the fly) | s for K variants | device |", "|---|---|---:|---:|---:|---|"]
    lines += [f"| {r['arm']} | {r['codec']} | {r['img_per_s']:.0f} | {r['epoch_s']:.1f} | {r['variants_s']:.1f} "
              f"(K={r['variants']}) | {r['device']} |" for r in rows]
    return "\n".join(lines)
