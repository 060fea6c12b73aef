"""Train the three operating points side by side on one GPU, resumably, and measure them on Kodak with real files.

Stages (each fits a 10-minute device call; rerunning a stage resumes it):
  train      train c8/c16/c32 in parallel from scratch with the Ht of points.json
  calibrate  fine-tune each point with Ht rescaled so that Kodak's real bpp lands on the paper's (Ht is set for the
             target, App. A.1; Kodak is only measured, never trained on)
  export     encode every Kodak image on this device to .ndc files and save their symbols, for the CPU decode check
Every stage ends by writing $OUT/points.json (Kodak real bpp, PSNR, MS-SSIM per point) and the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

from nodecode.codec.zoo import load_codec  # noqa: E402
from nodecode.data.images import list_images, load_image  # noqa: E402
from nodecode.eval.codec_eval import average, evaluate_learned  # noqa: E402


def run_parallel(cmds: list[list[str]], logs: list[Path]) -> None:
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1] / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = []
    for cmd, log in zip(cmds, logs):
        log.parent.mkdir(parents=True, exist_ok=True)
        procs.append(subprocess.Popen(cmd, stdout=open(log, "a"), stderr=subprocess.STDOUT, env=env))
    codes = [p.wait() for p in procs]
    for cmd, log, code in zip(cmds, logs, codes):
        if code:
            print(f"FAILED ({code}): {' '.join(cmd)}\n" + log.read_text()[-3000:])


def train_cmd(a, name, p, out, ht, steps, lr, init=None):
    cmd = [sys.executable, "-m", "nodecode.cli", "train", "codec", "--data", a.data, "--val-data", a.val, "--out", str(out),
           "--name", name, "--channels", str(p["channels"]), "--beta", str(p["beta"]), "--target-entropy", f"{ht:.4f}",
           "--steps", str(steps), "--lr", str(lr), "--batch-size", str(a.batch_size), "--crop", str(a.crop),
           "--max-minutes", str(a.minutes), "--cache-dir", a.cache]
    return cmd + (["--init", str(init)] if init else [])


def measure(codec_path: Path, kodak: list, device) -> dict:
    codec = load_codec(str(codec_path), device)
    rows = evaluate_learned(codec, kodak, device)
    return {**average(rows, keys=("codec",))[0], "per_image_bpp": [r["bpp"] for r in rows]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["train", "calibrate", "export"])
    ap.add_argument("--data", default="/root/data/imagenette2-224/train")
    ap.add_argument("--val", default="/root/data/imagenette2-224/val")
    ap.add_argument("--kodak", default="/root/data/kodak")
    ap.add_argument("--runs", default="/root/runs")
    ap.add_argument("--cache", default="/root/cache")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--points", default="c8,c16,c32")
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--init-dir", default=None, help="warm-start each point from DIR/<points.json init>.safetensors")
    ap.add_argument("--cal-steps", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--crop", type=int, default=160)
    ap.add_argument("--minutes", type=float, default=8.0)
    a = ap.parse_args()
    points = {k: v for k, v in json.loads((HERE / "points.json").read_text()).items() if k in a.points.split(",")}
    runs, out = Path(a.runs), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    kodak = [(f.name, load_image(f)) for f in list_images(a.kodak)]
    final = {}
    if a.stage == "train":
        inits = {n: Path(a.init_dir) / f"{p['init']}.safetensors" if a.init_dir and p.get("init") else None
                 for n, p in points.items()}
        run_parallel([train_cmd(a, n, p, runs / n, p["target_entropy"], p.get("steps", a.steps), 1e-3, inits[n])
                      for n, p in points.items()],
                     [runs / n / "stdout.log" for n in points])
        final = {n: runs / n for n in points}
    elif a.stage == "calibrate":
        cmds, logs = [], []
        for n, p in points.items():
            src = runs / n
            before = json.loads((src / "kodak.json").read_text())
            ht = before["target_entropy"] * p["target_bpp"] / before["bpp"]
            ht = float(np.clip(ht, 0.05, np.log2(before.get("num_centers", 6)) - 0.05))
            cmds.append(train_cmd(a, n, p, runs / f"{n}-cal", ht, p.get("cal_steps", a.cal_steps), 3e-4,
                                  init=src / "codec.safetensors"))
            logs.append(runs / f"{n}-cal" / "stdout.log")
        run_parallel(cmds, logs)
        final = {n: runs / f"{n}-cal" for n in points}
    else:
        final = {n: (runs / f"{n}-cal" if (runs / f"{n}-cal" / "codec.safetensors").exists() else runs / n) for n in points}
        with tarfile.open(out / "kodak_gpu_ndc.tar", "w") as tar:
            for n, run in final.items():
                codec = load_codec(str(run / "codec.safetensors"), device)
                syms = {}
                for name, img in kodak:
                    x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255).to(device)
                    data = codec.compress(x)
                    syms[name] = codec.encode_symbols(x)[0].cpu().numpy().astype(np.uint8)
                    p = runs / "export" / n / (Path(name).stem + ".ndc")
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(data)
                    tar.add(p, arcname=f"{n}/{p.name}")
                np.savez_compressed(runs / "export" / f"{n}_symbols.npz", **syms)
                tar.add(runs / "export" / f"{n}_symbols.npz", arcname=f"{n}_symbols.npz")
                shutil.copy(run / "codec.safetensors", runs / "export" / f"{n}.safetensors")
                tar.add(runs / "export" / f"{n}.safetensors", arcname=f"{n}.safetensors")
    table = {}
    for n, run in final.items():
        if not (run / "codec.safetensors").exists():
            table[n] = {"status": "unfinished (rerun this stage to resume)"}
            continue
        cfg = json.loads((run / "codec.json").read_text())
        m = measure(run / "codec.safetensors", kodak, device)
        m.update(target_entropy=cfg["target_entropy"], beta=cfg["beta"], target_bpp=points[n]["target_bpp"],
                 train_summary=json.loads((run / "summary.json").read_text()))
        (run / "kodak.json").write_text(json.dumps(m, indent=2))
        shutil.copy(run / "codec.safetensors", out / f"{n}.safetensors")
        table[n] = m
    info = {"stage": a.stage, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
            "wall_s": time.time() - t0, "points": table}
    (out / f"points_{a.stage}.json").write_text(json.dumps(info, indent=2))
    for n in final:
        logf = final[n] / "log.jsonl"
        if logf.exists():
            shutil.copy(logf, out / f"log_{n}_{a.stage}.jsonl")
    print(f"\nstage {a.stage} on {info['device']} in {info['wall_s']:.0f} s")
    print("| point | Ht | Kodak bpp (real) | est bpp | target | PSNR | MS-SSIM | steps |")
    for n, m in table.items():
        if "bpp" in m:
            print(f"| {n} | {m['target_entropy']:.3f} | {m['bpp']:.4f} | {m['est_bpp']:.4f} | {m['target_bpp']} | "
                  f"{m['psnr']:.2f} | {m['ms_ssim']:.4f} | {m['train_summary']['steps']} |")
        else:
            print(f"| {n} | {m['status']} |")


if __name__ == "__main__":
    main()
