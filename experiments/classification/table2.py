"""Table 2 (classification columns) on Imagenette, resumably, in device calls of at most ~10 minutes.

  run      train the rows in order (seed 0 everywhere, then seeds 1 and 2 where two compared rows at one operating
           point differ by under a point), skipping rows already in --done; stops before --budget-minutes and writes
           $OUT/runs.json (every finished run's summary and validation curve, merged with --done)
  collect  from runs.json: results/classification/imagenette.json, imagenette.md (beside the paper's Table 2),
           fig3_val_curves.png and fig6_acc_vs_gmacs.png
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nodecode.experiments import ROOT, Budget, Runs, experiment_parser, markdown_table, pyplot, save_figure

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
    """Table 2's rows (the ones segmentation needs as backbones first), then the WebP rows."""
    out = [("none", "rgb", "resnet50")]
    for p in ("c8", "c16", "c32"):
        out += [(p, "decoded", "resnet50"), (p, "latent", "cresnet51"), (p, "latent", "cresnet39")]
        if p == "c8":
            out += [(p, "decoded", "resnet71"), (p, "latent", "cresnet72")]
    return out + [(p, "webp", "resnet50") for p in ("c8", "c16", "c32")]


BUNDLED_WIDTH = 0.25  # the bundled classifiers: cResNet-51 at a quarter of the width, one per operating point


def bundled_key(point: str) -> str:
    return f"bundled-{point}-latent-cresnet51-w{BUNDLED_WIDTH}"


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


def _train(a, k, point, kind, model, seed, width, minutes) -> dict | None:
    from nodecode.tasks.classification import ClassifierTrainConfig, train_classifier
    run_dir = Path(a.runs) / k
    r = train_classifier(ClassifierTrainConfig(
        data=a.data, out=str(run_dir), model=model, input=kind, codec=point if point != "none" else "c8",
        epochs=a.epochs, batch_size=a.batch_size, width=width, cache_dir=a.cache, seed=seed, max_minutes=minutes,
        max_per_class=a.limit, progress=False))
    if not r.finished:
        return None
    s = r.summary
    curve = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]
    return {"point": point, "input": kind, "model": model, "seed": seed, "width": width, "val": s["val"],
            "minutes": s["minutes"], "device": s["device"], "input_info": s.get("input_info"),
            "curve": [{"epoch": r["epoch"], "top1": r["top1"], "top5": r["top5"]} for r in curve if r["split"] == "val"]}


def _export_bundled(a, point: str, out: Path) -> None:
    """The narrow classifier, fp16, as it ships in src/nodecode/weights/classifier-<point>.safetensors."""
    from nodecode.tasks.classification import load_classifier, save_classifier
    model, meta = load_classifier(Path(a.runs) / bundled_key(point), "cpu")
    save_classifier(model, out / f"classifier-{point}.safetensors", meta, half=True)


def run(a) -> None:
    out = Path(a.out)
    runs, budget = Runs(out / "runs.json", merge=[a.done] if a.done else []), Budget(a.budget_minutes)
    main_rows = [r for r in rows() if r[1] != "webp"]
    queue = [(r, 0, None) for r in main_rows] + [((p, "latent", "cresnet51"), 0, BUNDLED_WIDTH) for p in ("c8", "c16", "c32")]
    if a.rows == "main":
        print("rows: Table 2 and the bundled ones only (no WebP rows, no extra seeds)")
    else:
        queue += [(r, 0, None) for r in rows() if r[1] == "webp"]
    extra_added = a.rows == "main"
    while queue:
        (point, kind, model), seed, width = queue.pop(0)
        k = key(point, kind, model, seed) if width is None else bundled_key(point)
        fresh = k not in runs
        r = runs.stage(k, lambda m: _train(a, k, point, kind, model, seed, width or a.width, m), budget)
        if fresh and r is None and budget.left() < 1.0:
            break
        if fresh and r is not None and width is not None:
            _export_bundled(a, point, out)
        if not queue and not extra_added:
            extra_added = True
            queue = [(r, s, None) for s in (1, 2) for r in rows() if r in needs_more_seeds(runs.done)]
    runs.save()
    print(f"{len(runs)} runs finished, {budget.elapsed():.1f} min this call")
    print(markdown_table(["run", "top-1", "top-5", "minutes", "device"],
                         [(k, f"{100 * r['val']['top1']:.2f}", f"{100 * r['val']['top5']:.2f}", f"{r['minutes']:.1f}",
                           r["device"]) for k, r in runs.items()], "lrrrl"))


def collect(a) -> None:
    from nodecode.bench.flops import codec_rows, model_gmacs
    done = json.loads(Path(a.done).read_text())
    res = Path(a.results)
    res.mkdir(parents=True, exist_ok=True)
    dec = {int(r["model"].split("=")[1].rstrip(")")): r["gmacs"] for r in codec_rows() if r["model"].startswith("decoder")}
    table = []
    for point, kind, model in rows():
        runs = [r for k, r in done.items() if not k.startswith("bundled-")
                and (r["point"], r["input"], r["model"]) == (point, kind, model)]
        if not runs:
            continue
        c = int(point[1:]) if point != "none" else 8
        g = model_gmacs(model, 28 if kind == "latent" else 224, c if kind == "latent" else 3, 10)[0]
        t1, t5 = [100 * r["val"]["top1"] for r in runs], [100 * r["val"]["top5"] for r in runs]
        table.append({"point": point, "input": kind, "model": model, "top1": float(np.mean(t1)), "top5": float(np.mean(t5)),
                      "top1_std": float(np.std(t1)), "gmacs": g, "gmacs_with_decoder": g + dec[c] if kind == "decoded" else g,
                      "seeds": len(runs), "paper_top5_top1": PAPER.get((point, kind, model)),
                      "minutes": float(np.mean([r["minutes"] for r in runs])), "device": runs[0]["device"]})
    cells = [(r["point"], r["input"], r["model"], f"{r['top1']:.2f} ± {r['top1_std']:.2f}", f"{r['top5']:.2f}", r["seeds"],
              f"{r['gmacs']:.2f}", f"{r['paper_top5_top1'][1]} / {r['paper_top5_top1'][0]}" if r["paper_top5_top1"] else "–")
             for r in table]
    bundled = []
    for point in ("c8", "c16", "c32"):
        r = done.get(bundled_key(point))
        if r:
            g = model_gmacs("cresnet51", 28, int(point[1:]), 10, width=BUNDLED_WIDTH)[0]
            bundled.append({"point": point, "model": f"cresnet51 (width {BUNDLED_WIDTH})", "top1": 100 * r["val"]["top1"],
                            "top5": 100 * r["val"]["top5"], "gmacs": g, "minutes": r["minutes"], "device": r["device"]})
            cells.append((point, "latent", f"cresnet51 width {BUNDLED_WIDTH} (bundled)", f"{bundled[-1]['top1']:.2f}",
                          f"{bundled[-1]['top5']:.2f}", 1, f"{g:.3f}", "–"))
    md = markdown_table(["point", "input", "model", "top-1", "top-5", "seeds", "GMACs", "paper top-1 / top-5 (ImageNet)"],
                        cells, "lllrrrrl")
    (res / "imagenette.json").write_text(json.dumps({"rows": table, "bundled": bundled}, indent=1) + "\n")
    (res / "imagenette.md").write_text(md + "\n")
    plots(done, table, res, bundled)
    print(md)


def plots(done: dict, table: list, res: Path, bundled: list) -> None:
    """Fig. 3: validation top-5 per epoch (seed 0); Fig. 6: top-5 vs GMACs at c8, with and without the decoder."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    for ax, point in zip(axes, ("c32", "c16", "c8")):
        for kind, model in (("decoded", "resnet50"), ("latent", "cresnet51"), ("latent", "cresnet39")):
            r = done.get(key(point, kind, model, 0))
            if r:
                ax.plot([c["epoch"] for c in r["curve"]], [100 * c["top5"] for c in r["curve"]], label=f"{model} ({kind})")
        ax.set_title(point); ax.set_xlabel("epoch"); ax.grid(alpha=0.3); ax.legend()
    axes[0].set_ylabel("val top-5 [%]")
    save_figure(fig, res / "fig3_val_curves.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    c8 = [r for r in table if r["point"] == "c8" and r["input"] in ("decoded", "latent")]
    for kind, style in (("latent", "o-"), ("decoded", "s-")):
        rs = sorted((r for r in c8 if r["input"] == kind), key=lambda r: r["gmacs"])
        ax.plot([r["gmacs"] for r in rs], [r["top5"] for r in rs], style, label=f"{kind} (network only)")
        if kind == "decoded":
            ax.plot([r["gmacs_with_decoder"] for r in rs], [r["top5"] for r in rs], "s--", label="decoded + decoder")
    for r in (r for r in bundled if r["point"] == "c8"):
        ax.plot([r["gmacs"]], [r["top5"]], "^", label=f"latent, {r['model']}")
    ax.set_xlabel("GMACs"); ax.set_ylabel("val top-5 [%]"); ax.set_title("c8: accuracy vs computation (Fig. 6)")
    ax.grid(alpha=0.3); ax.legend()
    save_figure(fig, res / "fig6_acc_vs_gmacs.png")


def main():
    ap = experiment_parser(__doc__, area="classification")
    ap.add_argument("--data", default="/root/data/imagenette2-224")
    ap.add_argument("--cache", default="/root/cache")
    ap.add_argument("--runs", default="/root/cls")
    ap.add_argument("--out", default="/root/results/classification", help="runs.json and bundled weights (run)")
    ap.add_argument("--done", default=str(ROOT / "results" / "classification" / "runs.json"),
                    help="run: finished runs to skip; collect: the runs.json to tabulate")
    ap.add_argument("--epochs", type=int, default=28)
    ap.add_argument("--batch-size", type=int, default=256, help="lr scales linearly from 0.025 at 64 (App. A.4)")
    ap.add_argument("--width", type=float, default=1.0, help="< 1 only for smoke tests")
    ap.add_argument("--limit", type=int, default=None, help="images per class (smoke tests)")
    ap.add_argument("--rows", choices=["main", "all"], default="all",
                    help="main: Table 2's rows and the bundled ones; all: then the WebP rows and extra seeds")
    a = ap.parse_args()
    run(a) if a.stage == "run" else collect(a)


if __name__ == "__main__":
    main()
