"""Table 2 (mIoU column), Fig. 4/5/6 on CamVid, resumably, in device calls of at most ~10 minutes.

  run      train the rows in order (seed 0), then the bundled narrow segmenter (cResNet-51-d, width 0.25, c8 latent,
           written fp16 to --out/segmenter-c8.safetensors), then the Fig. 5-style PNG (--out/fig5_camvid.png), then seeds
           1 and 2 where two rows at one point differ by under one mIoU point (only while budget remains). Finished
           work is skipped (state: --out/runs.json, run folders under --runs); stops cleanly before --budget-minutes.
  collect  from runs.json: results/segmentation/camvid.json, camvid.md (beside the paper's Table 2 mIoU),
           fig6_miou_vs_gmacs.png (c8, with and without the decoder), a copy of fig5_camvid.png, and the bundled
           segmenter (segmenter-c8.safetensors beside runs.json) copied into src/nodecode/weights/

Iterations: the paper's 20k x batch 10 on 10,582 VOC images = 18.9 epochs -> 694 iterations on 367 CamVid frames.
Backbones start from the Table 2 classifiers: /root/cls/<point>-<input>-<classifier>-s0/classifier.safetensors.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from nodecode.experiments import (ROOT, Budget, Runs, device_name, experiment_parser, markdown_table, pyplot,
                                  save_figure)

PAPER_MIOU = {  # Table 2, PASCAL VOC 2012 val
    ("none", "rgb", "resnet50_d"): 65.75,
    ("c32", "decoded", "resnet50_d"): 62.97, ("c32", "latent", "cresnet51_d"): 62.86,
    ("c32", "latent", "cresnet39_d"): 61.85,
    ("c16", "decoded", "resnet50_d"): 60.75, ("c16", "latent", "cresnet51_d"): 61.12,
    ("c16", "latent", "cresnet39_d"): 60.78,
    ("c8", "decoded", "resnet50_d"): 52.97, ("c8", "latent", "cresnet51_d"): 54.62,
    ("c8", "latent", "cresnet39_d"): 53.51, ("c8", "decoded", "resnet71_d"): 54.55,
    ("c8", "latent", "cresnet72_d"): 55.78,
}
POINTS = ("c8", "c16", "c32")
BUNDLED = ("c8", "latent", "cresnet51_d")
FIG_FRAMES = (0, 40, 80)  # validation frames shown in the Fig. 5-style PNG


def rows() -> list[tuple[str, str, str]]:
    out = []
    for p in POINTS:
        out += [(p, "decoded", "resnet50_d"), (p, "latent", "cresnet51_d"), (p, "latent", "cresnet39_d")]
        if p == "c8":
            out += [(p, "decoded", "resnet71_d"), (p, "latent", "cresnet72_d")]
    return out + [("none", "rgb", "resnet50_d")]


def key(point, kind, model, seed) -> str:
    return f"{point}-{kind}-{model}-s{seed}"


def init_path(a, point, kind, model) -> str | None:
    p = Path(a.cls) / f"{point}-{kind}-{model[:-2]}-s0" / "classifier.safetensors"
    if p.exists():
        return str(p)
    print(f"WARNING: no classifier {p}; {model} starts from scratch")
    return None


def needs_more_seeds(done: dict) -> set:
    """Rows at one operating point whose seed-0 val mIoU lies within one point of another row there."""
    m = {r: done[key(*r, 0)]["val"]["miou"] for r in rows() if key(*r, 0) in done}
    return {a for a in m for b in m if a != b and a[0] == b[0] and abs(m[a] - m[b]) < 0.01}


def train_one(a, point, kind, model, seed, minutes, run_dir, init, width=1.0) -> dict | None:
    from nodecode.tasks.segmentation import SegmenterTrainConfig, train_segmenter
    r = train_segmenter(SegmenterTrainConfig(
        data=a.data, out=str(run_dir), model=model, input=kind, codec=point if point != "none" else "c8", init=init,
        width=width * a.width, iters=a.iters, batch_size=a.batch_size, limit=a.limit, cache_dir=a.cache, seed=seed,
        max_minutes=minutes, progress=False))
    if not r.finished:
        return None
    s = r.summary
    print(f"{key(point, kind, model, seed)}: val mIoU {100 * s['val']['miou']:.2f}, test {100 * s['test']['miou']:.2f}, "
          f"{s['minutes']:.2f} min on {s['device']}", flush=True)
    return {"point": point, "input": kind, "model": model, "seed": seed, "width": width * a.width, "init": init,
            "val": s["val"], "test": s["test"], "minutes": s["minutes"], "device": s["device"], "iters": s["iters"],
            "class_names": s["checkpoint"]["class_names"]}


def figure5(a, out: Path, done: dict) -> None:
    """Original, decoded, mask from decoded RGB (ResNet-50-d), mask from the latent (cResNet-51-d), ground truth."""
    import torch
    from nodecode.codec.zoo import load_codec
    from nodecode.data.augment import InputPipeline
    from nodecode.data.segmentation import CAMVID_COLOURS, IGNORE, load_segmentation, scan_segmentation
    from nodecode.tasks.segmentation import load_segmenter, predict
    from nodecode.utils import pick_device
    plt = pyplot()
    dev = pick_device()
    pal = np.array(list(CAMVID_COLOURS) + [(0, 0, 0)] * (256 - len(CAMVID_COLOURS)), np.uint8)
    folder = scan_segmentation(a.data, "val", a.limit)
    frames = [i for i in FIG_FRAMES if i < len(folder.images)] or [0]
    fig, axes = plt.subplots(len(POINTS) * len(frames), 5, figsize=(16, 2.4 * len(POINTS) * len(frames)), squeeze=False)
    r = 0
    for point in POINTS:
        codec = load_codec(point, dev)
        rgb, lab, _ = load_segmentation(folder, "rgb", cache_dir=a.cache)
        masks = {}
        for kind, model in (("decoded", "resnet50_d"), ("latent", "cresnet51_d")):
            x = load_segmentation(folder, kind, codec, a.cache)[0][list(frames)]
            if key(point, kind, model, 0) not in done:
                continue
            net, meta = load_segmenter(Path(a.runs) / key(point, kind, model, 0), dev)
            with torch.no_grad():
                masks[kind] = predict(net, InputPipeline(kind, torch.tensor(meta["mean"]), codec)(x.to(dev)),
                                      tuple(lab.shape[-2:])).argmax(1).cpu().numpy()
            if kind == "decoded":
                dec = x.numpy()
        for j, i in enumerate(frames):
            panels = [("original", rgb[i].permute(1, 2, 0).numpy()),
                      (f"decoded ({point})", dec[j].transpose(1, 2, 0) if "decoded" in masks else None),
                      ("ResNet-50-d, decoded", pal[masks["decoded"][j]] if "decoded" in masks else None),
                      ("cResNet-51-d, latent", pal[masks["latent"][j]] if "latent" in masks else None),
                      ("ground truth", pal[np.where(lab[i].numpy() == IGNORE, 255, lab[i].numpy())])]
            for c, (title, img) in enumerate(panels):
                ax = axes[r, c]
                if img is not None:
                    ax.imshow(img)
                ax.set_title(title if r == 0 or c == 1 else "", fontsize=9)
                ax.axis("off")
            r += 1
    save_figure(fig, out / "fig5_camvid.png", dpi=70)


def run(a) -> None:
    from nodecode.tasks.segmentation import load_segmenter, save_segmenter
    out = Path(a.out)
    runs, budget = Runs(out / "runs.json"), Budget(a.budget_minutes)

    def do(point, kind, model, seed, k=None, init="table2", width=1.0):
        k = k or key(point, kind, model, seed)
        init = (init_path(a, point, kind, model) if k not in runs else None) if init == "table2" else init
        return runs.stage(k, lambda m: train_one(a, point, kind, model, seed, m, Path(a.runs) / k, init, width),
                          budget) is not None

    ok = all([do(*r, 0) for r in rows()])
    if not Path(a.bundled_init).exists():
        print(f"WARNING: no classifier {a.bundled_init}; the bundled segmenter starts from scratch")
    if ok and do(*BUNDLED, 0, k="bundled", init=a.bundled_init if Path(a.bundled_init).exists() else None, width=0.25):
        if not (out / "segmenter-c8.safetensors").exists():
            net, meta = load_segmenter(Path(a.runs) / "bundled")
            save_segmenter(net, out / "segmenter-c8.safetensors", {**meta, "val_miou": runs["bundled"]["val"]["miou"],
                                                                   "test_miou": runs["bundled"]["test"]["miou"]},
                           half=True)
        if not (out / "fig5_camvid.png").exists() and budget.left() > 0.5:
            figure5(a, out, runs.done)
        if a.extra_seeds:
            for s in (1, 2):
                for r in sorted(needs_more_seeds(runs.done)):
                    do(*r, s)
    runs.save()
    print(f"\n{len(runs)} runs finished on {device_name()}")
    print(markdown_table(["run", "val mIoU", "test mIoU", "minutes"],
                         [(k, f"{100 * r['val']['miou']:.2f}", f"{100 * r['test']['miou']:.2f}", f"{r['minutes']:.2f}")
                          for k, r in runs.items()]))


def collect(a) -> None:
    from nodecode.bench.flops import count_macs, model_gmacs
    from nodecode.codec.autoencoder import Decoder
    import torch
    done = json.loads(Path(a.done).read_text())
    res = Path(a.results)
    res.mkdir(parents=True, exist_ok=True)

    def decoder_gmacs(c):
        with torch.device("meta"):
            return count_macs(Decoder(c), (1, c, 40, 40)) / 1e9

    table = []
    groups = [(r, [k for k, v in done.items() if k != "bundled" and (v["point"], v["input"], v["model"]) == r], False)
              for r in rows()] + [(BUNDLED, ["bundled"] if "bundled" in done else [], True)]
    for (point, kind, model), keys, bundled in groups:
        runs = [done[k] for k in keys]
        if not runs:
            continue
        c = int(point[1:]) if point != "none" else 3
        g = model_gmacs(model, 40 if kind == "latent" else 320, c if kind == "latent" else 3, 11,
                        width=runs[0]["width"])[0]
        val, test = [100 * r["val"]["miou"] for r in runs], [100 * r["test"]["miou"] for r in runs]
        iou = lambda split: [None if any(r[split]["iou"][i] is None for r in runs) else  # noqa: E731
                             float(np.mean([100 * r[split]["iou"][i] for r in runs])) for i in range(len(runs[0][split]["iou"]))]
        table.append({"point": point, "input": kind, "model": f"{model} (width {runs[0]['width']}, bundled)" if bundled else model, "miou": float(np.mean(val)),
                      "miou_std": float(np.std(val)), "miou_test": float(np.mean(test)), "gmacs": g,
                      "gmacs_with_decoder": g + decoder_gmacs(c) if kind == "decoded" else g, "seeds": len(runs),
                      "paper_miou": None if bundled else PAPER_MIOU.get((point, kind, model)),
                      "iou_val": iou("val"), "iou_test": iou("test"), "class_names": runs[0]["class_names"],
                      "initialised": all(r["init"] for r in runs), "iters": runs[0]["iters"],
                      "minutes": float(np.mean([r["minutes"] for r in runs])), "device": runs[0]["device"]})
    (res / "camvid.json").write_text(json.dumps({"rows": table, "note": "mIoU in %, CamVid val (101 frames) and test "
                                                 "(233 frames), 11 classes; GMACs at 320x320 RGB / 40x40 latent"},
                                                indent=1) + "\n")
    md = markdown_table(["point", "input", "model", "val mIoU", "test mIoU", "seeds", "GMACs", "paper mIoU (VOC)", "min/run"],
                        [(r["point"], r["input"], r["model"], f"{r['miou']:.2f} ± {r['miou_std']:.2f}",
                          f"{r['miou_test']:.2f}", r["seeds"], f"{r['gmacs']:.1f}", r["paper_miou"] or "–",
                          f"{r['minutes']:.2f}") for r in table], "lllrrrrrr")
    (res / "camvid.md").write_text(md + f"\n\nDevice: {table[0]['device'] if table else '?'}\n")
    plot(table, res)
    fig5, bundled = Path(a.done).parent / "fig5_camvid.png", Path(a.done).parent / "segmenter-c8.safetensors"
    if fig5.exists() and fig5.resolve() != (res / "fig5_camvid.png").resolve():   # not when --done is in results/
        shutil.copyfile(fig5, res / "fig5_camvid.png")
    if bundled.exists():  # the bundled segmenter `nodecode segment` and the demo use
        weights = ROOT / "src" / "nodecode" / "weights"
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(bundled.with_suffix(suffix), weights / f"segmenter-c8{suffix}")
        print(f"bundled segmenter copied to {weights}/segmenter-c8.safetensors ({bundled.stat().st_size / 2**20:.2f} MiB)")
    print(md)


def plot(table: list, res: Path) -> None:
    """Fig. 6 right: val mIoU vs GMACs at c8, latent vs decoded, decoded with and without the decoder's cost."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    c8 = [r for r in table if r["point"] == "c8" and "bundled" not in r["model"]]
    for kind, style in (("latent", "o-"), ("decoded", "s-")):
        rs = sorted((r for r in c8 if r["input"] == kind), key=lambda r: r["gmacs"])
        ax.plot([r["gmacs"] for r in rs], [r["miou"] for r in rs], style, label=f"{kind} (network only)")
        if kind == "decoded":
            ax.plot([r["gmacs_with_decoder"] for r in rs], [r["miou"] for r in rs], "s--", label="decoded + decoder")
        for r in rs:
            ax.annotate(r["model"], (r["gmacs"], r["miou"]), fontsize=7)
    ax.set_xlabel("GMACs (320x320 RGB / 40x40 latent)"); ax.set_ylabel("CamVid val mIoU [%]")
    ax.set_title("c8: mIoU vs computation (Fig. 6 right)"); ax.grid(alpha=0.3); ax.legend()
    save_figure(fig, res / "fig6_miou_vs_gmacs.png")


def main():
    ap = experiment_parser(__doc__, area="segmentation")
    ap.add_argument("--data", default="/root/data/camvid")
    ap.add_argument("--cache", default="/root/cache")
    ap.add_argument("--cls", default="/root/cls", help="the Table 2 classifiers (backbone initialisation)")
    ap.add_argument("--bundled-init", default="/root/cls/bundled-c8-latent-cresnet51-w0.25/classifier.safetensors")
    ap.add_argument("--runs", default="/root/segmentation")
    ap.add_argument("--out", default="/root/results/segmentation")
    ap.add_argument("--done", default=str(ROOT / "results" / "segmentation" / "runs.json"), help="collect: runs.json")
    ap.add_argument("--iters", type=int, default=None, help="default: 18.9 epochs (694 iterations on CamVid)")
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--width", type=float, default=1.0, help="< 1 only for smoke tests")
    ap.add_argument("--limit", type=int, default=None, help="first N frames per split (smoke tests)")
    ap.add_argument("--no-extra-seeds", dest="extra_seeds", action="store_false")
    a = ap.parse_args()
    run(a) if a.stage == "run" else collect(a)


if __name__ == "__main__":
    main()
