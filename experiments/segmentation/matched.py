"""Segmentation (§5) at matched width on CamVid, three seeds, one job per GPU (issue 12).

Grid: {ResNet-50-d on decoded RGB, cResNet-51-d and cResNet-39-d on the latent, ResNet-50-d on original RGB} x
operating points x widths x seeds, every arm under the same recipe (tasks.segmentation, default --augment codec:
crop + mirror of the RGB frame, then through the codec). Each backbone starts from the classification matched run
(experiments/classification/matched.py) of the same point, input, depth, width and seed:
--cls/<point>-<input>-<classifier>-w<width>-s<seed>/classifier.safetensors (a WARNING and training from scratch,
init None in its row, when it is missing). Jobs run in order point -> width -> seed -> arm (a width's seeds finish
before the next width), each a subprocess on its own GPU (nodecode.experiments.run_grid); a job stops itself before
the budget with a checkpoint and resumes in the next call; the parent alone writes runs.json.

  run      the grid, resumably: finished runs in STATE/runs.json (merged with --done), run folders in STATE/runs;
           writes runs.json, matched.json (rows with mean ± std of val and test mIoU over seeds, GMACs at 360x480)
           and matched.md to --out
  collect  matched.json / .md (+ val mIoU vs width PNG) from a runs.json (--done) into --results
           (results/segmentation/matched/), after --add's files (a device session's runs.json) joined it; Δ val
           mIoU vs decoded with its standard error (sample stds)
--smoke: two CamVid frames per split, width 0.0625, c8, two seeds, two iterations on 64 px crops: seconds on a CPU.

GPU call (resumes; PYTHONPATH=src as experiments/device/call.sh sets it):
  python experiments/segmentation/matched.py run --data /root/data/camvid --budget-minutes 9
"""
from __future__ import annotations

import json
from pathlib import Path

from nodecode.experiments import (ROOT, Runs, add_grid_args, collected_runs, delta_cells, deltas_vs_decoded,
                                  experiment_parser, export_bundled, grid_job, grid_key, grid_stage, group_arms,
                                  markdown_table, matched_grid, mean_pm, mean_std, overrides, plot_arms, prepare_once,
                                  run_grid, split_grid_args, todo_points)

ARMS = (("decoded", "resnet50_d"), ("latent", "cresnet51_d"), ("latent", "cresnet39_d"), ("rgb", "resnet50_d"))
FRAME = (360, 480)          # CamVid frames: GMACs of a whole frame (latent: FRAME / 8)
SPLITS = ("train", "val", "test")


def grid(a) -> list[tuple]:
    """(key, point, kind, model, width, seed) in run order: point by point (RGB rows with the first), width by width,
    seed by seed; only the keys matching one of --runs (shell patterns) when given."""
    return matched_grid(a.points, a.widths, a.seeds, ARMS, a.runs, widths_first=True)


def init_path(a, point: str, kind: str, model: str, width: float, seed: int) -> str | None:
    """The classification matched run's classifier of this point, input, depth, width and seed, or None (warned)."""
    p = Path(a.cls) / grid_key(point, kind, model.removesuffix("_d"), width, seed) / "classifier.safetensors"
    if p.exists():
        return str(p)
    print(f"WARNING: no classifier {p}; {grid_key(point, kind, model, width, seed)} starts from scratch", flush=True)
    return None


def config(a, run_dir: Path, point: str, kind: str, model: str, width: float, seed: int, init: str | None) -> dict:
    cfg = dict(data=a.data, out=str(run_dir), model=model, input=kind, codec=point if kind != "rgb" else "c8",
               init=init, width=width, iters=a.iters, batch_size=a.batch_size, augment=a.augment, limit=a.limit,
               cache_dir=a.cache, seed=seed, progress=False, **overrides(a.set))
    if a.smoke:
        cfg.update(crop=64, eval_batch=2, log_every=1)
    return cfg


def result_row(r) -> dict:
    """The runs.json row of a finished run's TrainResult."""
    s = r.summary
    return {"val": s["val"], "test": s["test"], "augment": s["config"]["augment"], "iters": s["iters"],
            "minutes": s["minutes"], "device": s.get("device"), "steps": r.step}


def stage_job(spec: dict) -> int:
    """Train one config (a subprocess of run_grid): its TrainResult as the exit code, the row in RUN/result.json."""
    from nodecode.tasks.segmentation import SegmenterTrainConfig, train_segmenter
    return grid_job(spec, lambda cfg, minutes: train_segmenter(SegmenterTrainConfig(**cfg, max_minutes=minutes)),
                    result_row)


def prepare(a, points: list[str]) -> None:
    """Fill the decode-once caches (RGB and labels, latent + decoded per point, every split) in one process before
    the jobs share them."""
    prepare_once(__file__, {"data": a.data, "cache": a.cache, "limit": a.limit, "points": points})


def _prepare(cfg: dict) -> None:
    from nodecode.codec.zoo import load_codec
    from nodecode.data.segmentation import load_segmentation, scan_segmentation
    from nodecode.utils import pick_device
    for split in SPLITS:
        folder = scan_segmentation(cfg["data"], split, cfg["limit"])
        load_segmentation(folder, "rgb", cache_dir=cfg["cache"])
        for point in cfg["points"]:
            codec = load_codec(point, pick_device(None))
            for kind in ("latent", "decoded"):
                load_segmentation(folder, kind, codec, cfg["cache"])


def stage_run(a) -> None:
    runs = Runs(Path(a.state) / "runs.json", merge=[a.done] if a.done else [])
    todo = []
    for k, p, kind, m, w, s in grid(a):
        if k in runs:
            continue
        init = init_path(a, p, kind, m, w, s)
        todo.append((k, config(a, Path(a.state) / "runs" / k, p, kind, m, w, s, init),
                     {"point": p if kind != "rgb" else "none", "input": kind, "model": m, "width": w, "seed": s,
                      "init": init}))
    left = run_grid(a, __file__, todo, runs,
                    lambda row: f"val mIoU {100 * row['val']['miou']:.2f}, test {100 * row['test']['miou']:.2f}",
                    lambda todo: prepare(a, todo_points(todo)))
    export_bundled(runs, Path(a.state) / "runs", Path(a.out), "segmenter",
                   lambda r: {"val_miou": r["val"]["miou"], "test_miou": r["test"]["miou"]})
    report(a, runs, Path(a.out))
    print(f"{len(runs)} runs finished; {len(left)} left" + (f" (next: {left[0]})" if left else ""))


def gmacs(model: str, kind: str, point: str, width: float) -> float:
    """GMACs of the network (no decoder) on a whole 360x480 frame, or its 45x60 latent."""
    from nodecode.bench.flops import model_gmacs
    latent = kind == "latent"
    size = (FRAME[0] // 8, FRAME[1] // 8) if latent else FRAME
    return model_gmacs(model, size, int(point[1:]) if latent else 3, 11, width=width)[0]


def table(rows: dict) -> tuple[list[dict], str]:
    """val / test mIoU at matched width (mean ± std over seeds) with GMACs, and its Markdown."""
    out = []
    for (point, kind, model, width), rs in group_arms(rows):
        v, vs = mean_std(100 * r["val"]["miou"] for r in rs)
        t, ts = mean_std(100 * r["test"]["miou"] for r in rs)
        out.append({"point": point, "input": kind, "model": model, "width": width, "val_miou": v, "val_miou_std": vs,
                    "test_miou": t, "test_miou_std": ts, "seeds": sorted(r["seed"] for r in rs),
                    "gmacs": gmacs(model, kind, point, width), "initialised": all(r.get("init") for r in rs),
                    "iters": rs[0].get("iters"), "devices": sorted({str(r.get("device")) for r in rs})})
    deltas_vs_decoded(out, "val_miou")
    cells = []
    for r in out:
        n = len(r["seeds"])
        cells.append((r["point"], f"{r['width']:g}", r["input"], r["model"],
                      mean_pm(r["val_miou"], r["val_miou_std"], n), mean_pm(r["test_miou"], r["test_miou_std"], n), n,
                      *delta_cells(r, "val_miou")))
    return out, markdown_table(["point", "width", "input", "model", "val mIoU", "test mIoU", "seeds",
                                "Δ val mIoU vs decoded", "SE of Δ"], cells, align="lrllrrrrr")


def report(a, runs: Runs, out: Path, plot: bool = False) -> None:
    """runs.json, matched.json and matched.md in `out`; the table printed last."""
    runs.save(out / "runs.json")
    rows, md = table(runs.done)
    (out / "matched.json").write_text(json.dumps({"augment": a.augment, "overrides": overrides(a.set), "rows": rows,
                                                  "note": "mIoU in %, CamVid val (101 frames) and test (233 frames), "
                                                          "11 classes; GMACs of the network on a 360x480 frame / "
                                                          "45x60 latent"}, indent=1) + "\n")
    (out / "matched.md").write_text(md + "\n")
    if plot and rows:
        plot_widths(rows, out / "miou_vs_width.png")
    print(md)


def plot_widths(rows: list[dict], path: Path) -> None:
    """val mIoU vs width, one panel per point, one colour per arm (RGB in every panel)."""
    plot_arms(rows, ARMS, "width", "val_miou", path, "width", "CamVid val mIoU [%]",
              lambda ax: ax.set_xscale("log", base=2))


def stage_collect(a) -> None:
    report(a, collected_runs(a), Path(a.results), plot=True)


def parse(argv=None):
    ap = experiment_parser(__doc__, budget_minutes=9.0, stages=("run", "collect", "job", "prepare"),
                           area="segmentation/matched")
    add_grid_args(ap, "/root/segmatched", widths="1.0,0.25", runs_example="'c8-*-w1-s*,none-rgb-resnet50_d-w1-s0'")
    ap.add_argument("--data", default="/root/data/camvid")
    ap.add_argument("--cache", default="/root/cache")
    ap.add_argument("--cls", default="/root/matched/runs", help="the classification matched runs (backbone init)")
    ap.add_argument("--augment", default="codec", choices=("input", "codec"), help="the same for every arm")
    ap.add_argument("--iters", type=int, default=None, help="default: 18.9 epochs (694 iterations on CamVid)")
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--limit", type=int, default=None, help="first N frames per split (smoke tests)")
    ap.add_argument("--smoke", action="store_true", help="tiny end-to-end run on a CPU (seconds)")
    a = ap.parse_args(argv)
    if a.smoke:
        a.data = str(ROOT.parent / "shared" / "datasets" / "camvid")
        a.cache = str(Path(a.state) / "cache")
        a.min_start, a.margin, a.cpu_jobs = 0.0, 0.2, 2
        a.points, a.widths, a.seeds = "c8", "0.0625", "0,1"
        a.limit, a.iters, a.batch_size = 2, 2, 2
    split_grid_args(a)
    if a.done is None and a.stage == "collect":
        a.done = str(Path(a.results) / "runs.json")
    return a


def main(argv=None) -> None:
    grid_stage(parse(argv), {"run": stage_run, "collect": stage_collect}, stage_job, _prepare)


if __name__ == "__main__":
    main()
