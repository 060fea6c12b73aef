"""One device call: the codec step before / after the one-hot Q̄ (same card, same call), and eager vs compiled training.

  python experiments/codec/step_check.py --data /root/data/kodak --init c16     (writes $OUT/step_check.json)
Before = ŷ = centers[z] by indexing (the earlier code); after = the one-hot form (same values and gradients).
The trajectories train the bundled c16 for a few hundred steps (lr 3e-4): a compiled run must follow the eager one.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import torch

from nodecode.bench.codec_step import legacy_quantizer, time_step, trajectory, variants
from nodecode.data.tiles import load_tiles
from nodecode.tasks.compression import CodecTrainConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/root/data/kodak", help="images whose 224² tiles are cropped")
    ap.add_argument("--init", default="c16")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--trajectory-steps", type=int, default=600)
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiles = load_tiles(a.data, tile=224 if not a.smoke else 64).to(dev)
    base = CodecTrainConfig(data=a.data, out="", name="c16", channels=16, beta=300.0, target_entropy=1.4, lr=3e-4,
                            init=a.init, batch_size=32, crop=160 if not a.smoke else 32, progress=False)
    res = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "speed": {}, "trajectory": {}}
    steps, warm = (a.steps, 15) if not a.smoke else (2, 1)

    def timed(name, cfg, comp, legacy=False):
        try:
            if legacy:
                with legacy_quantizer():
                    r = time_step(cfg, tiles, steps, warm, compile=comp)
            else:
                r = time_step(cfg, tiles, steps, warm, compile=comp)
        except Exception as e:  # a failing row is a result
            r = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        res["speed"][name] = r
        print(name, json.dumps({k: v for k, v in r.items() if k in ("steps_per_s", "pixel_samples_per_s_per_gpu", "error")}),
              flush=True)

    smoke = (lambda c: replace(c, batch_size=min(c.batch_size, 4), crop=min(c.crop, 32))) if a.smoke else (lambda c: c)
    timed("before (indexing Q̄): b32 160² eager", smoke(base), False, legacy=True)
    for name, (cfg, comp) in variants(base).items():
        if a.smoke and comp:
            continue
        timed(f"after: {name}", smoke(cfg), comp)
    tcfg = smoke(replace(base, batch_size=128, crop=128))
    n = a.trajectory_steps if not a.smoke else 4
    every = 100 if not a.smoke else 2
    for name, comp, legacy in (("eager", False, False), ("compiled", True, False), ("compiled, indexing Q̄", True, True)):
        if a.smoke and comp:
            continue
        torch.manual_seed(0)
        try:
            if legacy:
                with legacy_quantizer():
                    res["trajectory"][name] = trajectory(tcfg, tiles, n, comp, every)
            else:
                res["trajectory"][name] = trajectory(tcfg, tiles, n, comp, every)
        except Exception as e:
            res["trajectory"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(name, res["trajectory"][name], flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "step_check.json").write_text(json.dumps(res, indent=1))
    ref = res["speed"]["before (indexing Q̄): b32 160² eager"].get("pixel_samples_per_s_per_gpu")
    print(f"\n{res['device']}\n| step | steps/s | M px/s per GPU | x before |\n|---|---:|---:|---:|")
    for k, r in res["speed"].items():
        if "error" not in r:
            print(f"| {k} | {r['steps_per_s']:.1f} | {r['pixel_samples_per_s_per_gpu'] / 1e6:.1f} | "
                  f"{r['pixel_samples_per_s_per_gpu'] / ref if ref else float('nan'):.2f} |")


if __name__ == "__main__":
    main()
