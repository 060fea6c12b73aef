"""Table 2 at matched width and Fig. 6 (accuracy vs GMACs) on Imagenette, three seeds, one job per GPU (issue 12).

Grid: {ResNet-50 on decoded RGB, cResNet-51 and cResNet-39 on the latent, ResNet-50 on original RGB} x widths x
operating points x seeds, every arm under the same recipe (default `imagenette`: augmentation through the codec).
Jobs run in order c8 (with the RGB rows) -> c16 -> c32, seed by seed, each a subprocess on its own GPU
(nodecode.experiments.run_grid); a job stops itself before the budget with a checkpoint and resumes in the next
call. A job hands its TrainResult back as its exit code (0 finished, STOPPED on the budget) and, finished, its
runs.json row in RUN/result.json; the parent alone writes runs.json.

  run      the grid, resumably: finished runs in STATE/runs.json (merged with --done), run folders in STATE/runs;
           writes runs.json, matched.json (Table 2 rows with mean ± std, Fig. 6 points) and matched.md to --out
  search   recipe search for ResNet-50 on original RGB on a held-out 10% of train (never val): variants of the recipe
  collect  matched.json / .md (+ fig6 PNG) from a runs.json (--done; default --results' own) into --results, after
           --add's files (a device session's runs.json) joined it; Δ vs decoded with its standard error (sample
           stds); with --reruns, repeats.json / .md: every run of each re-run arm (the table's and the repeats')
           pooled; with --search (and --search-val), search.json / .md: the held-out variants (and the winner on val)
  bench    the augmentation's cost (img/s of crop + encode / + decode) on this device, to --out/bench.json
--smoke: a few Imagenette images per class at 64 px, one width, one point, two seeds, one epoch: seconds on a CPU.

GPU call (resumes; 4 GPUs -> 4 jobs side by side; PYTHONPATH=src as experiments/device/call.sh sets it):
  python experiments/classification/matched.py run --data /root/data/imagenette2-224 --budget-minutes 9
"""
from __future__ import annotations

import json
from pathlib import Path

from nodecode.experiments import (POINT_ORDER, ROOT, Runs, add_grid_args, arm, collected_runs, delta_cells,
                                  deltas_vs_decoded, experiment_parser, export_bundled, grid_job, grid_stage,
                                  group_arms, markdown_table, matched_grid, mean_pm, mean_std, overrides, plot_arms,
                                  prepare_once, read_json, run_grid, split_grid_args, todo_points)

ARMS = (("decoded", "resnet50"), ("latent", "cresnet51"), ("latent", "cresnet39"), ("rgb", "resnet50"))
# beyond the paper, run only when --arms names it: g_s's architecture + ResNet-50 on the latent, g_s trained from
# scratch (decoder_resnet50), from the codec's decoder (decoder_resnet50_codec), the same at 1/100 of the lr (_slow)
ABLATIONS = (("latent", "decoder_resnet50"), ("latent", "decoder_resnet50_codec"),
             ("latent", "decoder_resnet50_codec_slow"))
SEARCH = {  # recipe variants (overrides of --recipe) for ResNet-50 on original RGB, judged on the held-out split
    "base": {}, "lr0.1": {"base_lr": 0.1}, "lr0.4": {"base_lr": 0.4}, "wd1e-4": {"weight_decay": 1e-4},
    "wd1e-3": {"weight_decay": 1e-3}, "ls0": {"label_smoothing": 0.0}, "ep60": {"epochs": 60},
    "ep80": {"epochs": 80}, "b64": {"batch_size": 64}, "scale0.2": {"scale": [0.2, 1.0]},
    "inputaug": {"augment": "input"}, "cutmix": {"cutmix": True}, "cutmix-ep80": {"cutmix": True, "epochs": 80},
}
SMOKE_CLASSES = ["n01440764", "n02102040", "n02979186"]


def grid(a) -> list[tuple]:
    """(key, point, kind, model, width, seed) in run order: point by point (RGB rows with the first), seed by seed;
    only the keys matching one of --runs (shell patterns) when given."""
    return matched_grid(a.points, a.widths, a.seeds, a.arms, a.runs)


def config(a, run_dir: Path, point: str, kind: str, model: str, width: float, seed: int, **extra) -> dict:
    cfg = dict(data=a.data, out=str(run_dir), model=model, input=kind, codec=point, width=width, seed=seed,
               recipe=a.recipe, cache_dir=a.cache, progress=False, max_per_class=a.limit, image_size=a.image_size,
               **overrides(a.set), **extra)
    if a.smoke:
        cfg.update(epochs=1, batch_size=4, eval_batch=8, log_every=1)
    return cfg


def result_row(r) -> dict:
    """The runs.json row of a finished run's TrainResult."""
    s = r.summary
    return {"val": s["val"], "eval_on": s.get("eval_on", "val"), "recipe": s.get("recipe"), "minutes": s["minutes"],
            "device": s.get("device"), "steps": r.step}


def stage_job(spec: dict) -> int:
    """Train one config (a subprocess of run_grid): its TrainResult as the exit code, the row in RUN/result.json."""
    from nodecode.tasks.classification import ClassifierTrainConfig, train_classifier
    return grid_job(spec, lambda cfg, minutes: train_classifier(ClassifierTrainConfig(**cfg, max_minutes=minutes)),
                    result_row)


def prepare(a, points: list[str]) -> None:
    """Fill the decode-once caches (RGB, and latent + decoded per point) in one process before the jobs share them."""
    cfg = {"data": a.data, "cache": a.cache, "limit": a.limit, "size": a.image_size, "points": points,
           "holdout": a.stage == "search"}
    prepare_once(__file__, cfg)


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


def run_todo(a, todo: list[tuple[str, dict, dict]], runs: Runs) -> list[str]:
    """Run (key, config, row meta) over the GPUs (or CPU slots) within the budget; the keys left for the next call."""
    return run_grid(a, __file__, todo, runs, lambda row: f"top-1 {100 * row['val']['top1']:.2f}",
                    lambda todo: prepare(a, todo_points(todo)))


def stage_run(a) -> None:
    runs = Runs(Path(a.state) / "runs.json", merge=[a.done] if a.done else [])
    todo = [(k, config(a, Path(a.state) / "runs" / k, p, kind, m, w, s),
             {"point": p if kind != "rgb" else "none", "input": kind, "model": m, "width": w, "seed": s})
            for k, p, kind, m, w, s in grid(a)]
    left = run_todo(a, todo, runs)
    export_bundled(runs, Path(a.state) / "runs", Path(a.out), "classifier", lambda r: {"val_top1": r["val"]["top1"]})
    report(a, runs, Path(a.out))
    print(f"{len(runs)} runs finished; {len(left)} left" + (f" (next: {left[0]})" if left else ""))


def stage_search(a) -> None:
    runs = Runs(Path(a.state) / "search.json")
    width = a.widths[-1]
    todo = [(f"search-{name}", config(a, Path(a.state) / "search" / name, "c8", "rgb", "resnet50", width, 0,
                                      holdout_frac=a.holdout_frac, **ov),
             {"variant": name, "overrides": ov, "point": "none", "input": "rgb", "width": width})
            for name, ov in SEARCH.items() if not a.variants or name in a.variants]
    left = run_todo(a, todo, runs)
    runs.save(Path(a.out) / "search.json")
    print(f"recipe search ({a.recipe} + variant), ResNet-50 w{width:g} on RGB, held-out {a.holdout_frac:g} of train; "
          f"{len(left)} variants left")
    print(search_table(runs.done))


def search_table(rows: dict) -> str:
    """The recipe search's variants, best held-out top-1 first (Markdown)."""
    rows = sorted(rows.values(), key=lambda r: -r["val"]["top1"])
    return markdown_table(["variant", "overrides", "epochs", "batch", "held-out top-1", "held-out images", "minutes",
                           "device"],
                          [(r["variant"], json.dumps(r["overrides"]), r["recipe"]["epochs"], r["recipe"]["batch_size"],
                            f"{100 * r['val']['top1']:.2f}", r["val"]["n"], f"{r['minutes']:.1f}", r.get("device", "–"))
                           for r in rows], align="llrrrrrl")


def search_report(search: str, val: str | None, done: dict, res: Path) -> str:
    """search.json / search.md: the held-out table of --search; with --search-val (the winner's runs on val, any
    seeds), its Table 2 row beside the RGB row of the table's own recipe (--done)."""
    rows = read_json(search)
    md = f"Recipe search, ResNet-50 on original RGB, evaluated on a held-out part of train (never val):\n\n" \
         f"{search_table(rows)}\n"
    out = {"search": rows}
    if val:
        winner = read_json(val)
        base = {k: r for k, r in done.items() if r["input"] == "rgb" and r["model"] == "resnet50"
                and r["width"] in {w["width"] for w in winner.values()}}
        t_base, md_base = table(base)
        t_win, md_win = table(winner)
        recipe = next(iter(winner.values())).get("recipe")
        out.update(val_runs=winner, val_table=t_win, base_table=t_base)
        md += f"\nThe winner on val (recipe {json.dumps(recipe)}):\n\n{md_win}\n\n" \
              f"The table's recipe on val (runs.json):\n\n{md_base}\n"
    (res / "search.json").write_text(json.dumps(out, indent=1) + "\n")
    (res / "search.md").write_text(md)
    return md


def table(rows: dict, count: str = "seeds") -> tuple[list[dict], str]:
    """Table 2 at matched width (mean ± std over seeds) with GMACs (bench.flops), and its Markdown (`count`: the
    header of the runs-per-row column)."""
    from nodecode.bench.flops import codec_rows, model_gmacs
    dec = {int(r["model"].split("=")[1].rstrip(")")): r["gmacs"] for r in codec_rows() if r["model"].startswith("decoder")}
    out = []
    for (point, kind, model, width), rs in group_arms(rows):
        c = int(point[1:]) if point in POINT_ORDER else 8
        g = model_gmacs(model, 28 if kind == "latent" else 224, c if kind == "latent" else 3, 10, width=width)[0]
        t1, s1 = mean_std(100 * r["val"]["top1"] for r in rs)
        t5, s5 = mean_std(100 * r["val"]["top5"] for r in rs)
        out.append({"point": point, "input": kind, "model": model, "width": width, "top1": t1, "top1_std": s1,
                    "top5": t5, "top5_std": s5, "seeds": sorted(r["seed"] for r in rs), "gmacs": g,
                    "gmacs_with_decoder": g + dec[c] if kind == "decoded" else g,
                    "devices": sorted({str(r.get("device")) for r in rs}), "eval_on": rs[0].get("eval_on", "val")})
    deltas_vs_decoded(out, "top1")
    cells = []
    for r in out:
        n = len(r["seeds"])
        cells.append((r["point"], f"{r['width']:g}", r["input"], r["model"], mean_pm(r["top1"], r["top1_std"], n),
                      mean_pm(r["top5"], r["top5_std"], n), n, f"{r['gmacs']:.2f}", *delta_cells(r, "top1")))
    return out, markdown_table(["point", "width", "input", "model", "top-1", "top-5", count, "GMACs",
                                "Δ top-1 vs decoded", "SE of Δ"], cells, align="lrllrrrrrr")


def report(a, runs: Runs, out: Path, plot: bool = False) -> None:
    """runs.json, matched.json (Table 2 rows, Fig. 6 points) and matched.md in `out`; the table printed last."""
    runs.save(out / "runs.json")
    rows, md = table(runs.done)
    fig6 = [{k: r[k] for k in ("point", "input", "model", "width", "gmacs", "gmacs_with_decoder", "top1", "top1_std")}
            for r in rows]
    from nodecode.tasks.recipe import recipe_name      # the recipe the runs recorded, --recipe for rows without one
    names = sorted({(recipe_name(r["recipe"]) or "other") if r.get("recipe") else a.recipe for r in runs.done.values()})
    (out / "matched.json").write_text(json.dumps({"recipe": names[0] if len(names) == 1 else names,
                                                  "overrides": overrides(a.set), "table2": rows, "fig6": fig6},
                                                 indent=1) + "\n")
    (out / "matched.md").write_text(md + "\n")
    if plot and rows:
        plot_fig6(fig6, out / "fig6_acc_vs_gmacs.png")
    print(md)


def plot_fig6(points: list[dict], path: Path) -> None:
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    def style(ax):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter()); ax.xaxis.set_minor_formatter(NullFormatter())
    plot_arms(points, ARMS + ABLATIONS, "gmacs", "top1", path, "GMACs (network only)", "val top-1 [%]", style)


def repeats(done: dict, reruns: list[str]) -> tuple[list[dict], str]:
    """The arms that were re-run at the same seeds (--reruns: runs.json files of repeats, e.g. from another machine),
    every run of each pooled: the table's and the repeats' (mean ± std over all; GPU non-determinism included)."""
    files = [done] + [read_json(p) for p in reruns]
    again = {arm(r) for f in files[1:] for r in f.values()}
    pooled = {f"{k}#{i}": r for i, f in enumerate(files) for k, r in f.items() if arm(r) in again}
    return table(pooled, count="runs")


def stage_collect(a) -> None:
    res = Path(a.results)
    report(a, collected_runs(a), res, plot=True)
    if a.search:
        print(search_report(a.search, a.search_val, read_json(a.done), res))
    if a.reruns:
        rows, md = repeats(read_json(a.done), a.reruns)
        (res / "repeats.json").write_text(json.dumps({"reruns": [Path(p).name for p in a.reruns], "rows": rows},
                                                     indent=1) + "\n")
        (res / "repeats.md").write_text(md + "\n")
        print(f"\nrepeats (the table's runs and {len(a.reruns)} re-run file(s), pooled):\n{md}")


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
    ap = experiment_parser(__doc__, budget_minutes=9.0, stages=("run", "search", "collect", "bench", "job", "prepare"),
                           area="classification/matched")
    add_grid_args(ap, "/root/matched")
    ap.add_argument("--data", default="/root/data/imagenette2-224")
    ap.add_argument("--cache", default="/root/cache")
    ap.add_argument("--recipe", default="imagenette", help="tasks.recipe name, the same for every arm")
    ap.add_argument("--variants", default=None, help="search: only these variants (comma separated)")
    ap.add_argument("--holdout-frac", type=float, default=0.1)
    ap.add_argument("--reruns", nargs="+", default=None,
                    help="collect: runs.json files of runs repeated at the table's seeds, pooled into repeats.md")
    ap.add_argument("--search", default=None, help="collect: a search stage's search.json, into search.json / .md")
    ap.add_argument("--search-val", default=None,
                    help="collect: runs.json of the search's winner on val (e.g. run --recipe imagenette60 --arms "
                         "rgb:resnet50), into search.md beside the table's RGB row")
    ap.add_argument("--limit", type=int, default=None, help="images per class")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--arms", default=None, help="input:model arms of the grid (comma separated; default: "
                    + ",".join(f"{i}:{m}" for i, m in ARMS) + "; also " + ",".join(f"{i}:{m}" for i, m in ABLATIONS) + ")")
    ap.add_argument("--smoke", action="store_true", help="tiny end-to-end run on a CPU (seconds)")
    a = ap.parse_args(argv)
    if a.arms:
        a.arms = tuple(tuple(x.split(":", 1)) for x in a.arms.split(","))
        if not set(a.arms) <= set(ARMS + ABLATIONS):
            ap.error(f"--arms: each of {', '.join(f'{i}:{m}' for i, m in ARMS + ABLATIONS)}")
    a.arms = a.arms or ARMS
    if a.smoke:
        a.data = str(smoke_data(Path(a.state)))
        a.cache = str(Path(a.state) / "cache")
        a.image_size, a.min_start, a.margin, a.cpu_jobs = 64, 0.0, 0.2, 2
        a.points, a.widths, a.seeds = "c8", "0.25", "0,1"
    split_grid_args(a)
    a.variants = a.variants.split(",") if a.variants else None
    if a.done is None and a.stage == "collect":   # the table's own runs: --results' runs.json
        a.done = str(Path(a.results) / "runs.json")
    return a


def main(argv=None) -> None:
    grid_stage(parse(argv), {"run": stage_run, "search": stage_search, "collect": stage_collect, "bench": stage_bench},
               stage_job, _prepare)


if __name__ == "__main__":
    main()
