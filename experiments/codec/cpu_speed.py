"""One CPU core: encode + decode time per Kodak image of c8 / c16 / c32 (issue 11's ≤ 1 s target), as JSON.

    taskset -c 1 python experiments/codec/cpu_speed.py --kodak ../shared/datasets/kodak --out results/codec/cpu_kodak_speed.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform

from nodecode.bench.codec_speed import kodak_speed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kodak", default="../shared/datasets/kodak")
    ap.add_argument("--limit", type=int, default=None, help="first N images (default: all 24)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = {c: [r for r in kodak_speed(a.kodak, c, "cpu", limit=a.limit, cpu_limit=a.limit or 24, log=lambda *x: None)
                if r["model"] == c][0] for c in ("c8", "c16", "c32")}
    out = {"cpu": platform.processor() or platform.machine(), "load_avg_1min": os.getloadavg()[0], "rows": rows}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    print("| point | encode ms | decode ms | total s | bpp |\n|---|---:|---:|---:|---:|")
    for c, r in rows.items():
        print(f"| {c} | {r['encode_ms']:.0f} | {r['decode_ms']:.0f} | {r['total_ms'] / 1000:.2f} | {r['bpp']:.3f} |")


if __name__ == "__main__":
    main()
