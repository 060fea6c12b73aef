"""Classical codecs on Kodak, each image matched to each target bpp on its own, metrics averaged over images.

    PYTHONPATH=src python experiments/check_baselines.py [--bpp 0.0983 0.33 0.635] [--root DIR] [--codecs ...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from collections import defaultdict

import numpy as np

from nodecode.data.images import list_images, load_image
from nodecode.codec.classical import CLASSICAL_CODECS, decode, match_bpp
from nodecode.eval.metrics import image_metrics


def main(argv: list[str] | None = None) -> None:
    """Print codec x target-bpp rows: mean real bpp, PSNR, SSIM, MS-SSIM, and seconds per image."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bpp", type=float, nargs="+", default=[0.0983, 0.33, 0.635])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak"))
    ap.add_argument("--codecs", nargs="+", default=list(CLASSICAL_CODECS), choices=CLASSICAL_CODECS)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    args = ap.parse_args(argv)

    paths = list_images(args.root)
    if args.limit:
        paths = paths[: args.limit]
    rows = defaultdict(list)  # (codec, target) -> [(bpp, psnr, ssim, ms_ssim, seconds, off_target)]
    for i, path in enumerate(paths):
        img = load_image(path)
        for codec in args.codecs:
            for target in args.bpp:
                t0 = time.perf_counter()
                data, bpp, _q = match_bpp(img, codec, target)
                dt = time.perf_counter() - t0
                m = image_metrics(img, decode(data))
                off = abs(bpp - target) / target > 0.05
                rows[codec, target].append((bpp, m["psnr"], m["ssim"], m["ms_ssim"], dt, off))
        print(f"[{i + 1}/{len(paths)}] {path.name}", file=sys.stderr, flush=True)

    print(f"{len(paths)} images from {args.root}; each image matched to the target on its own; means over images")
    print(f"{'codec':<9} {'target':>7} {'bpp':>7} {'PSNR':>7} {'SSIM':>7} {'MS-SSIM':>8} {'s/img':>6}  off>5%")
    for codec in args.codecs:
        for target in args.bpp:
            r = np.array(rows[codec, target], dtype=np.float64)
            bpp, p, s, ms, dt, off = r.mean(axis=0)
            print(f"{codec:<9} {target:>7.4f} {bpp:>7.4f} {p:>7.2f} {s:>7.4f} {ms:>8.4f} {dt:>6.2f}  {int(r[:, 5].sum())}")


if __name__ == "__main__":
    main()
