"""Table 2 (classification columns) on Imagenette, resumably, in device calls of at most ~10 minutes.

  run      train the rows in order (seed 0 everywhere, then seeds 1 and 2 where two compared rows at one operating
           point differ by under a point), skipping rows already in --done; stops before --budget-minutes and writes
           $OUT/runs.json (every finished run's summary and validation curve, merged with --done)
  collect  from runs.json: results/classification/imagenette.json, imagenette.md (beside the paper's Table 2),
           fig3_val_curves.png and fig6_acc_vs_gmacs.png
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

PAPER = {  # Table 2: top-5 / top-1 on ImageNet
    ("none", "rgb", "resnet50"): (89.96, 71.06),
    ("c32", "decoded", "resnet50"): (88.34, 68.26), ("c32", "latent", "cresnet51"): (87.85, 67.68),
    ("c32", "latent", "cresnet39"): (87.47, 67.17),
    ("c16", "decoded", "resnet50"): (86.25, 65.18), ("c16", "latent", "cresnet51"): (85.87, 64.78),
    ("c16", "latent", "cresnet39"): (85.46, 64.14),
    ("c8", "decoded", "resnet50"): (78.52, 55.30), ("c8", "latent", "cresnet51"): (78.20, 55.18),
    ("c8", "latent", "cresnet39"): (77.65, 54.31), ("c8", "decoded", "resnet71"): (79.28, 56.23),
    ("c8", "latent", "cresnet72"): (79.02, 55.82),
}


def rows() -> list[tuple[str, str, str]]:
    out = [("none", "rgb", "resnet50")]
    for p in ("c8", "c16", "c32"):
        out += [(p, "decoded", "resnet50"), (p, "latent", "cresnet51"), (p, "latent", "cresnet39"), (p, "webp", "resnet50")]
        if p == "c8":
            out += [(p, "decoded", "resnet71"), (p, "latent", "cresnet72")]
    return out


def key(point, kind, model, seed) -> str:
    return f"{point}-{kind}-{model}-s{seed}"


def needs_more_seeds(done: dict) -> set:
    """Rows at one operating point whose seed-0 top-1 lies within one point of another row there."""
    top1 = {(p, k, m): done[key(p, k, m, 0)]["val"]["top1"] for p, k, m in rows() if key(p, k, m, 0) in done}
    close = set()
    for a in top1:
        for b in top1:
            if a != b and a[0] == b[0] and abs(top1[a] - top1[b]) < 0.01:
                close |= {a, b}
    return close


def run(a) -> None:
    from nodecode.tasks.classification import ClassifierTrainConfig, train_classifier
    done = json.loads(Path(a.done).read_text()) if a.done and Path(a.done).exists() else {}
    out = Path(os.environ.get("OUT", a.out))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    queue = [(r, 0) for r in rows()]
    while queue:
        (point, kind, model), seed = queue.pop(0)
        k = key(point, kind, model, seed)
        left = a.budget_minutes - (time.time() - t0) / 60
        if k in done:
            pass
        elif left < 1.0:
            print(f"budget spent; next: {k}")
            break
        else:
            run_dir = Path(a.runs) / k
            train_classifier(ClassifierTrainConfig(
                data=a.data, out=str(run_dir), model=model, input=kind, codec=point if point != "none" else "c8",
                epochs=a.epochs, batch_size=a.batch_size, width=a.width, cache_dir=a.cache, seed=seed, max_minutes=left - 0.5,
                progress=False))
            if (run_dir / "summary.json").exists():
                s = json.loads((run_dir / "summary.json").read_text())
                curve = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]
                done[k] = {"point": point, "input": kind, "model": model, "seed": seed, "val": s["val"],
                           "minutes": s["minutes"], "device": s["device"], "input_info": s.get("input_info"),
                           "curve": [{"epoch": r["epoch"], "top1": r["top1"], "top5": r["top5"]}
                                     for r in curve if r["split"] == "val"]}
                (out / "runs.json").write_text(json.dumps(done, indent=1))
        if not queue and seed == 0:
            queue = [(r, s) for s in (1, 2) for r in rows() if r in needs_more_seeds(done)]
    (out / "runs.json").write_text(json.dumps(done, indent=1))
    print(f"{len(done)} runs finished")
    for k, r in done.items():
        print(f"| {k} | top-1 {100 * r['val']['top1']:.2f} | top-5 {100 * r['val']['top5']:.2f} | {r['minutes']:.1f} min |")


def collect(a) -> None:
    from nodecode.bench.flops import codec_rows, model_gmacs
    done = json.loads(Path(a.done).read_text())
    res = ROOT / "results" / "classification"
    res.mkdir(parents=True, exist_ok=True)
    dec = {int(r["model"].split("=")[1].rstrip(")")): r["gmacs"] for r in codec_rows() if r["model"].startswith("decoder")}
    table = []
    for point, kind, model in rows():
        runs = [r for r in done.values() if (r["point"], r["input"], r["model"]) == (point, kind, model)]
        if not runs:
            continue
        c = int(point[1:]) if point != "none" else 8
        g = model_gmacs(model, 28 if kind == "latent" else 224, c if kind == "latent" else 3, 10)[0]
        t1, t5 = [100 * r["val"]["top1"] for r in runs], [100 * r["val"]["top5"] for r in runs]
        table.append({"point": point, "input": kind, "model": model, "top1": float(np.mean(t1)), "top5": float(np.mean(t5)),
                      "top1_std": float(np.std(t1)), "gmacs": g, "gmacs_with_decoder": g + dec[c] if kind == "decoded" else g,
                      "seeds": len(runs), "paper_top5_top1": PAPER.get((point, kind, model)),
                      "minutes": float(np.mean([r["minutes"] for r in runs])), "device": runs[0]["device"]})
    (res / "imagenette.json").write_text(json.dumps({"rows": table}, indent=1) + "\n")
    lines = ["| point | input | model | top-1 | top-5 | seeds | GMACs | paper top-1 / top-5 (ImageNet) |", "|---|---|---|---:|---:|---:|---:|---|"]
    for r in table:
        p = r["paper_top5_top1"]
        lines.append(f"| {r['point']} | {r['input']} | {r['model']} | {r['top1']:.2f} ± {r['top1_std']:.2f} | {r['top5']:.2f} | "
                     f"{r['seeds']} | {r['gmacs']:.2f} | {f'{p[1]} / {p[0]}' if p else '–'} |")
    (res / "imagenette.md").write_text("\n".join(lines) + "\n")
    plots(done, table, res)
    print("\n".join(lines))


def plots(done: dict, table: list, res: Path) -> None:
    """Fig. 3: validation top-5 per epoch (seed 0); Fig. 6: top-5 vs GMACs at c8, with and without the decoder."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    for ax, point in zip(axes, ("c32", "c16", "c8")):
        for kind, model in (("decoded", "resnet50"), ("latent", "cresnet51"), ("latent", "cresnet39")):
            r = done.get(key(point, kind, model, 0))
            if r:
                ax.plot([c["epoch"] for c in r["curve"]], [100 * c["top5"] for c in r["curve"]], label=f"{model} ({kind})")
        ax.set_title(point); ax.set_xlabel("epoch"); ax.grid(alpha=0.3); ax.legend()
    axes[0].set_ylabel("val top-5 [%]")
    fig.tight_layout(); fig.savefig(res / "fig3_val_curves.png", dpi=100); plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    c8 = [r for r in table if r["point"] == "c8" and r["input"] in ("decoded", "latent")]
    for kind, style in (("latent", "o-"), ("decoded", "s-")):
        rs = sorted((r for r in c8 if r["input"] == kind), key=lambda r: r["gmacs"])
        ax.plot([r["gmacs"] for r in rs], [r["top5"] for r in rs], style, label=f"{kind} (network only)")
        if kind == "decoded":
            ax.plot([r["gmacs_with_decoder"] for r in rs], [r["top5"] for r in rs], "s--", label="decoded + decoder")
    ax.set_xlabel("GMACs"); ax.set_ylabel("val top-5 [%]"); ax.set_title("c8: accuracy vs computation (Fig. 6)")
    ax.grid(alpha=0.3); ax.legend()
    fig.tight_layout(); fig.savefig(res / "fig6_acc_vs_gmacs.png", dpi=100); plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["run", "collect"])
    ap.add_argument("--data", default="/root/data/imagenette2-224")
    ap.add_argument("--cache", default="/root/cache")
    ap.add_argument("--runs", default="/root/cls")
    ap.add_argument("--out", default="out")
    ap.add_argument("--done", default=str(ROOT / "results" / "classification" / "runs.json"))
    ap.add_argument("--epochs", type=int, default=28)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=float, default=1.0, help="< 1 only for smoke tests")
    ap.add_argument("--budget-minutes", type=float, default=9.0)
    a = ap.parse_args()
    run(a) if a.stage == "run" else collect(a)


if __name__ == "__main__":
    main()
