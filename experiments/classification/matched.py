"""Table 2 at matched width and Fig. 6 (accuracy vs GMACs) on Imagenette, three seeds, one job per GPU (issue 12).

Grid: {ResNet-50 on decoded RGB, cResNet-51 and cResNet-39 on the latent, ResNet-50 on original RGB} x widths x
operating points x seeds, every arm under the same recipe (default `imagenette`: augmentation through the codec).
Jobs run in order c8 (with the RGB rows) -> c16 -> c32, seed by seed, each a subprocess on its own GPU
(nodecode.experiments.run_jobs); a job stops itself before the budget with a checkpoint and resumes in the next
call. A job hands its TrainResult back as its exit code (0 finished, STOPPED on the budget) and, finished, its
runs.json row in RUN/result.json; the parent alone writes runs.json.

  run      the grid, resumably: finished runs in STATE/runs.json (merged with --done), run folders in STATE/runs;
           writes runs.json, matched.json (Table 2 rows with mean ± std, Fig. 6 points) and matched.md to --out
  search   recipe search for ResNet-50 on original RGB on a held-out 10% of train (never val): variants of the recipe
  collect  matched.json / .md (+ fig6 PNG) from a runs.json (--done) into results/classification/matched/
  bench    the augmentation's cost (img/s of crop + encode / + decode) on this device, to --out/bench.json
--smoke: a few Imagenette images per class at 64 px, one width, one point, two seeds, one epoch: seconds on a CPU.

GPU call (resumes; 4 GPUs -> 4 jobs side by side; PYTHONPATH=src as experiments/device/call.sh sets it):
  python experiments/classification/matched.py run --data /root/data/imagenette2-224 --budget-minutes 9
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

from nodecode.experiments import (ROOT, Budget, Runs, experiment_parser, markdown_table, mean_std, pyplot,
                                  python_argv, run_jobs, save_figure, visible_gpus)

ARMS = (("decoded", "resnet50"), ("latent", "cresnet51"), ("latent", "cresnet39"), ("rgb", "resnet50"))
SEARCH = {  # recipe variants (overrides of --recipe) for ResNet-50 on original RGB, judged on the held-out split
    "base": {}, "lr0.1": {"base_lr": 0.1}, "lr0.4": {"base_lr": 0.4}, "wd1e-4": {"weight_decay": 1e-4},
    "wd1e-3": {"weight_decay": 1e-3}, "ls0": {"label_smoothing": 0.0}, "ep60": {"epochs": 60},
    "b64": {"batch_size": 64}, "scale0.2": {"scale": [0.2, 1.0]}, "inputaug": {"augment": "input"},
}
SMOKE_CLASSES = ["n01440764", "n02102040", "n02979186"]
STOPPED = 75            # a job's exit code when it stopped on its budget (checkpointed: the next call resumes it)


def key(point: str, kind: str, model: str, width: float, seed: int) -> str:
    return f"{'none' if kind == 'rgb' else point}-{kind}-{model}-w{width:g}-s{seed}"


def grid(a) -> list[tuple]:
    """(key, point, kind, model, width, seed) in run order: point by point (RGB rows with the first), seed by seed;
    only the keys matching one of --runs (shell patterns) when given."""
    out, seen = [], set()
    for point in a.points:
        for seed in a.seeds:
            for width in a.widths:
                for kind, model in ARMS:
                    k = key(point, kind, model, width, seed)
                    if k not in seen and (not a.runs or any(fnmatch(k, pat) for pat in a.runs)):
                        seen.add(k)
                        out.append((k, point, kind, model, width, seed))
    return out


def overrides(a) -> dict:
    """--set name=value pairs (JSON values) as config fields."""
    out = {}
    for item in a.set or ():
        name, _, value = item.partition("=")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def config(a, run_dir: Path, point: str, kind: str, model: str, width: float, seed: int, **extra) -> dict:
    cfg = dict(data=a.data, out=str(run_dir), model=model, input=kind, codec=point, width=width, seed=seed,
               recipe=a.recipe, cache_dir=a.cache, progress=False, max_per_class=a.limit, image_size=a.image_size,
               **overrides(a), **extra)
    if a.smoke:
        cfg.update(epochs=1, batch_size=4, eval_batch=8, log_every=1)
    return cfg


def job(a, k: str, cfg: dict, budget: Budget) -> tuple[str, list[str]]:
    """A subprocess training `cfg` that stops (checkpointed) `margin` minutes before the budget ends, whenever it
    starts."""
    stop_at = budget.t0 + 60 * (budget.minutes - a.margin)
    return k, python_argv(__file__, "job", json.dumps({"config": cfg, "stop_at": stop_at}))


def result_row(r) -> dict:
    """The runs.json row of a finished run's TrainResult."""
    s = r.summary
    return {"val": s["val"], "eval_on": s.get("eval_on", "val"), "recipe": s.get("recipe"), "minutes": s["minutes"],
            "device": s.get("device"), "steps": r.step}


def stage_job(spec: dict) -> int:
    """Train one config (a subprocess of run_jobs): its TrainResult as the exit code, the row in RUN/result.json."""
    import time
    from nodecode.tasks.classification import ClassifierTrainConfig, train_classifier
    from nodecode.utils import write_json
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["config"].items()}
    r = train_classifier(ClassifierTrainConfig(**cfg, max_minutes=max((spec["stop_at"] - time.time()) / 60, 0.1)))
    if not r.finished:
        return STOPPED
    write_json(r.out / "result.json", result_row(r))
    return 0


def prepare(a, points: list[str]) -> None:
    """Fill the decode-once caches (RGB, and latent + decoded per point) in one process before the jobs share them."""
    cfg = {"data": a.data, "cache": a.cache, "limit": a.limit, "size": a.image_size, "points": points,
           "holdout": a.stage == "search"}
    gpus = visible_gpus()[:1]
    subprocess.run(python_argv(__file__, "prepare", json.dumps(cfg)), check=True,
                   env={**os.environ, **({"CUDA_VISIBLE_DEVICES": gpus[0]} if gpus else {})})


def _prepare(cfg: dict) -> None:
    from nodecode.codec.zoo import load_codec
    from nodecode.data.classification import load_inputs
    from nodecode.data.folders import scan_image_folder
    from nodecode.utils import pick_device
    train = scan_image_folder(Path(cfg["data"]) / "train", max_per_class=cfg["limit"])
    folders = [train] + ([] if cfg["holdout"] else
                         [scan_image_folder(Path(cfg["data"]) / "val", train.classes, cfg["limit"])])
    for f in folders:
        load_inputs(f, "rgb", cache_dir=cfg["cache"], size=cfg["size"])
        for point in cfg["points"]:
            codec = load_codec(point, pick_device(None))
            for kind in ("latent", "decoded"):
                load_inputs(f, kind, codec, cache_dir=cfg["cache"], size=cfg["size"])


def run_grid(a, todo: list[tuple[str, dict, dict]], runs: Runs) -> list[str]:
    """Run (key, config, row meta) over the GPUs (or CPU slots) within the budget; the keys left for the next call."""
    budget = Budget(a.budget_minutes)
    todo = [t for t in todo if t[0] not in runs]
    if not todo:
        return []
    prepare(a, sorted({t[2]["point"] for t in todo if t[2]["input"] != "rgb"}, key=POINT_ORDER.index))
    meta = {t[0]: t for t in todo}

    def done(k: str, rc: int) -> None:
        _, cfg, m = meta[k]
        if rc == 0:
            row = runs.record(k, {**m, **json.loads((Path(cfg["out"]) / "result.json").read_text())})
            print(f"  {k}: top-1 {100 * row['val']['top1']:.2f}", flush=True)
        else:
            print(f"  {k}: " + ("stopped on the budget" if rc == STOPPED else f"failed (rc {rc}, see its log)")
                  + ", resumes next call", flush=True)

    gpus = visible_gpus()[: a.gpus]
    run_jobs([job(a, k, cfg, budget) for k, cfg, _ in todo], gpus=gpus, per_gpu=a.per_gpu if gpus else a.cpu_jobs,
             log_dir=Path(a.state) / "logs", budget=budget, min_start=a.min_start, on_done=done,
             env={} if gpus else {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return [k for k, _, _ in todo if k not in runs]


POINT_ORDER = ["c8", "c16", "c32"]


def stage_run(a) -> None:
    runs = Runs(Path(a.state) / "runs.json", merge=[a.done] if a.done else [])
    todo = [(k, config(a, Path(a.state) / "runs" / k, p, kind, m, w, s),
             {"point": p if kind != "rgb" else "none", "input": kind, "model": m, "width": w, "seed": s})
            for k, p, kind, m, w, s in grid(a)]
    left = run_grid(a, todo, runs)
    report(a, runs, Path(a.out))
    print(f"{len(runs)} runs finished; {len(left)} left" + (f" (next: {left[0]})" if left else ""))


def stage_search(a) -> None:
    runs = Runs(Path(a.state) / "search.json")
    width = a.widths[-1]
    todo = [(f"search-{name}", config(a, Path(a.state) / "search" / name, "c8", "rgb", "resnet50", width, 0,
                                      holdout_frac=a.holdout_frac, **ov),
             {"variant": name, "overrides": ov, "point": "none", "input": "rgb", "width": width})
            for name, ov in SEARCH.items() if not a.variants or name in a.variants]
    left = run_grid(a, todo, runs)
    rows = sorted((r for _, r in runs.items()), key=lambda r: -r["val"]["top1"])
    runs.save(Path(a.out) / "search.json")
    print(f"recipe search ({a.recipe} + variant), ResNet-50 w{width:g} on RGB, held-out {a.holdout_frac:g} of train; "
          f"{len(left)} variants left")
    print(markdown_table(["variant", "overrides", "holdout top-1", "minutes"],
                         [(r["variant"], json.dumps(r["overrides"]), f"{100 * r['val']['top1']:.2f}",
                           f"{r['minutes']:.1f}") for r in rows], align="llrr"))


def table(rows: dict) -> tuple[list[dict], str]:
    """Table 2 at matched width (mean ± std over seeds) with GMACs (bench.flops), and its Markdown."""
    from nodecode.bench.flops import codec_rows, model_gmacs
    dec = {int(r["model"].split("=")[1].rstrip(")")): r["gmacs"] for r in codec_rows() if r["model"].startswith("decoder")}
    groups: dict = {}
    for r in rows.values():
        groups.setdefault((r["point"], r["input"], r["model"], r["width"]), []).append(r)
    out = []
    for (point, kind, model, width), rs in sorted(groups.items(), key=lambda kv: (
            POINT_ORDER.index(kv[0][0]) if kv[0][0] in POINT_ORDER else -1, kv[0][3], kv[0][1], kv[0][2])):
        c = int(point[1:]) if point in POINT_ORDER else 8
        g = model_gmacs(model, 28 if kind == "latent" else 224, c if kind == "latent" else 3, 10, width=width)[0]
        t1, s1 = mean_std(100 * r["val"]["top1"] for r in rs)
        t5, s5 = mean_std(100 * r["val"]["top5"] for r in rs)
        out.append({"point": point, "input": kind, "model": model, "width": width, "top1": t1, "top1_std": s1,
                    "top5": t5, "top5_std": s5, "seeds": sorted(r["seed"] for r in rs), "gmacs": g,
                    "gmacs_with_decoder": g + dec[c] if kind == "decoded" else g,
                    "devices": sorted({str(r.get("device")) for r in rs}), "eval_on": rs[0].get("eval_on", "val")})
    ref = {(r["point"], r["width"]): r["top1"] for r in out if r["input"] == "decoded"}
    cells = []
    for r in out:
        d = ref.get((r["point"], r["width"])) if r["input"] == "latent" else None
        cells.append((r["point"], f"{r['width']:g}", r["input"], r["model"], f"{r['top1']:.2f} ± {r['top1_std']:.2f}",
                      f"{r['top5']:.2f} ± {r['top5_std']:.2f}", len(r["seeds"]), f"{r['gmacs']:.2f}",
                      "–" if d is None else f"{r['top1'] - d:+.2f}"))
    return out, markdown_table(["point", "width", "input", "model", "top-1", "top-5", "seeds", "GMACs",
                                "Δ top-1 vs decoded"], cells, align="lrllrrrrr")


def report(a, runs: Runs, out: Path, plot: bool = False) -> None:
    """runs.json, matched.json (Table 2 rows, Fig. 6 points) and matched.md in `out`; the table printed last."""
    runs.save(out / "runs.json")
    rows, md = table(runs.done)
    fig6 = [{k: r[k] for k in ("point", "input", "model", "width", "gmacs", "gmacs_with_decoder", "top1", "top1_std")}
            for r in rows]
    (out / "matched.json").write_text(json.dumps({"recipe": a.recipe, "overrides": overrides(a), "table2": rows,
                                                  "fig6": fig6}, indent=1) + "\n")
    (out / "matched.md").write_text(md + "\n")
    if plot and rows:
        plot_fig6(fig6, out / "fig6_acc_vs_gmacs.png")
    print(md)


def plot_fig6(points: list[dict], path: Path) -> None:
    plt = pyplot()
    pts = [p for p in POINT_ORDER if any(r["point"] == p for r in points)]
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    fig, axes = plt.subplots(1, len(pts), figsize=(5 * len(pts), 4), sharex=True, sharey=True, squeeze=False)
    for ax, point in zip(axes[0], pts):
        for i, (kind, model) in enumerate(ARMS):       # one colour per arm in every panel
            rs = sorted((r for r in points if r["input"] == kind and r["model"] == model
                         and r["point"] in (point, "none")), key=lambda r: r["gmacs"])
            if rs:
                ax.errorbar([r["gmacs"] for r in rs], [r["top1"] for r in rs], [r["top1_std"] for r in rs],
                            marker="o", capsize=3, color=f"C{i}", label=f"{model} ({kind})")
        ax.set_xscale("log"); ax.set_title(point); ax.set_xlabel("GMACs (network only)"); ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter()); ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("val top-1 [%]")
    save_figure(fig, path)


def stage_collect(a) -> None:
    report(a, Runs(Path(a.done)), ROOT / "results" / "classification" / "matched", plot=True)


def stage_bench(a) -> None:
    from nodecode.bench.augment_speed import augment_speed, format_rows
    rows = [r for p in a.points for r in augment_speed(p, None, 8 if a.smoke else 128, 1 if a.smoke else 20,
                                                       size=a.image_size)]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "bench.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(format_rows(rows))


def smoke_data(state: Path) -> Path:
    """A 3-class Imagenette folder of symlinks (4 train, 2 val images per class)."""
    src = ROOT.parent / "shared" / "datasets" / "imagenette2-224"
    root = state / "smoke-data"
    for split, n in (("train", 4), ("val", 2)):
        for c in SMOKE_CLASSES:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for f in sorted((src / split / c).glob("*.JPEG"))[:n]:
                if not (root / split / c / f.name).exists():
                    (root / split / c / f.name).symlink_to(f)
    return root


def parse(argv=None):
    ap = experiment_parser(__doc__, budget_minutes=9.0, stages=("run", "search", "collect", "bench", "job", "prepare"))
    ap.add_argument("config", nargs="?", help="job / prepare: the JSON config (internal)")
    ap.add_argument("--data", default="/root/data/imagenette2-224")
    ap.add_argument("--cache", default="/root/cache")
    ap.add_argument("--state", default="/root/matched", help="runs.json and run folders, kept between calls")
    ap.add_argument("--out", default=os.environ.get("OUT") or None, help="report folder (default $OUT, else --state)")
    ap.add_argument("--done", default=None, help="a runs.json of finished runs to skip (run) or tabulate (collect)")
    ap.add_argument("--recipe", default="imagenette", help="tasks.recipe name, the same for every arm")
    ap.add_argument("--set", action="append", help="recipe / config override NAME=VALUE (JSON value), repeatable")
    ap.add_argument("--points", default="c8,c16,c32")
    ap.add_argument("--widths", default="0.25,0.5,1.0")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--runs", default=None, help="run: only grid keys matching these shell patterns (comma separated), "
                    "e.g. 'c8-*-w1-s*,none-rgb-resnet50-w1-s0'")
    ap.add_argument("--variants", default=None, help="search: only these variants (comma separated)")
    ap.add_argument("--holdout-frac", type=float, default=0.1)
    ap.add_argument("--gpus", type=int, default=None, help="GPUs to use (default: all visible)")
    ap.add_argument("--per-gpu", type=int, default=1, help="jobs side by side on one GPU")
    ap.add_argument("--cpu-jobs", type=int, default=1, help="parallel jobs without a GPU")
    ap.add_argument("--margin", type=float, default=1.0, help="minutes a job stops before the budget (loading, saving)")
    ap.add_argument("--min-start", type=float, default=2.0, help="no job starts with fewer minutes left")
    ap.add_argument("--limit", type=int, default=None, help="images per class")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--smoke", action="store_true", help="tiny end-to-end run on a CPU (seconds)")
    a = ap.parse_args(argv)
    if a.smoke:
        a.data = str(smoke_data(Path(a.state)))
        a.cache = str(Path(a.state) / "cache")
        a.image_size, a.min_start, a.margin, a.cpu_jobs = 64, 0.0, 0.2, 2
        a.points, a.widths, a.seeds = "c8", "0.25", "0,1"
    a.points = [p for p in a.points.split(",") if p]
    a.widths = [float(w) for w in a.widths.split(",")]
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.variants = a.variants.split(",") if a.variants else None
    a.runs = [r for r in a.runs.split(",") if r] if a.runs else None
    a.out = a.out or a.state
    if a.done is None and a.stage == "collect":
        a.done = str(ROOT / "results" / "classification" / "matched" / "runs.json")
    return a


def main(argv=None) -> None:
    a = parse(argv)
    if a.stage == "job":
        sys.exit(stage_job(json.loads(a.config)))
    if a.stage == "prepare":
        return _prepare(json.loads(a.config))
    {"run": stage_run, "search": stage_search, "collect": stage_collect, "bench": stage_bench}[a.stage](a)


if __name__ == "__main__":
    main()
