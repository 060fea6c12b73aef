"""§6 joint training vs its control (Fig. 7, Fig. 11, App. A.7/A.8) on Imagenette + Kodak, in <= 10-minute device calls.

  run      per operating point (c8, then c32) and seed: [baseline cResNet-51 = the Table 2 checkpoint, trained here
           only if missing] -> joint fine-tune (Eq. 2) -> codec-only fine-tune (control) -> cResNet-51 from scratch
           on the control codec -> 9 more epochs -> measurements (real .ndc bpp on Kodak and Imagenette val, PSNR /
           SSIM / MS-SSIM on Kodak, top-1/top-5 on Imagenette val) -> optional §6.1 segmentation (--segmentation:
           cResNet-51-d on CamVid from the control's and the joint backbone, codec frozen). Finished stages are recorded in --out/runs.json and skipped; a stage
           cut by --budget-minutes resumes from its checkpoint next call.
           --recipe: the tasks.recipe of the classifier stages (a baseline trained here, scratch on the control codec,
           its more epochs); `paper` (App. A.4 at batch 256, today's numbers) or `imagenette` (issue 12: the recipe of
           experiments/classification/matched.py, with its batch, epochs and augmentation through the codec; the more
           epochs run a cosine from a tenth of its lr). --cls-pattern: where a point's (and seed's) baseline is, e.g.
           /root/matched/runs/{point}-latent-cresnet51-w1-s{seed}: with {seed} each seed fine-tunes its own baseline
           (measured per seed; one the pattern does not find is trained here with --recipe and that seed).
           --parallel: one process per point and seed at once, over the GPUs (each seed its own control codec; one
           shared cache).
           --gammas: the γ ablation of Eq. 2 (γ weighs MSE + β·rate against the cross-entropy): each γ other than
           JointTrainConfig's 0.001 adds a joint fine-tune row joint_ft_g<γ> per seed (the control rows are shared),
           its loss scaled by 0.001/γ: the codec's rate-distortion step stays the default's and the cross-entropy's
           shrinks (unscaled, γ = 0.003 diverged to NaN at c32 in 3 of 3 seeds on an H200).
           --merge: an earlier machine's runs.json per point and seed whose stages count as done (its files need not
           exist here: only the new rows, e.g. --gammas ones from the same --cls-pattern baseline, are run; a γ
           fine-tune whose measurement or segmenter is still to do is trained again when its codec is not here).
  collect  from runs.json: results/joint/summary.json, summary.md, fig7_accuracy.png, fig11_compression.png.
"""
from __future__ import annotations

import json
import shutil
import time
from functools import partial
from pathlib import Path

from nodecode.experiments import (ROOT, Budget, Runs, device_name, experiment_parser, finished, load_runs,
                                  markdown_table, pyplot, python_argv, run_jobs, save_figure, visible_gpus)

PAPER_BPP = {"c8": 0.0983, "c32": 0.635}
ROWS = ("baseline", "compression_ft", "joint_ft")
DEFAULT_CLS_PATTERN = "{root}/{point}-latent-cresnet51-s0"


def default_gamma() -> float:
    from dataclasses import fields
    from nodecode.tasks.joint import JointTrainConfig
    return next(f.default for f in fields(JointTrainConfig) if f.name == "gamma")


def gamma_row(gamma: float) -> str:
    """The measurement row of a joint fine-tune at this γ: joint_ft at the default γ, else joint_ft_g<γ>."""
    return "joint_ft" if gamma == default_gamma() else f"joint_ft_g{gamma:g}"


def row_gamma(row: str) -> float | None:
    """γ of an ablation row joint_ft_g<γ> (None for the others)."""
    return float(row[len("joint_ft_g"):]) if row.startswith("joint_ft_g") else None


def table_rows(keys) -> list[str]:
    """ROWS, then the γ ablation rows found among measurement keys <point>/measure/<row>-s<seed>, by γ."""
    extra = {k.split("/")[2].rsplit("-s", 1)[0] for k in keys if k.count("/") == 2 and "/measure/" in k}
    return list(ROWS) + sorted((r for r in extra if row_gamma(r) is not None), key=row_gamma)


def measure(a, codec_path: str, classifier: str | None) -> dict:
    """Real bpp (Kodak, Imagenette val), PSNR/SSIM/MS-SSIM (Kodak) of a codec; top-1/top-5 of a classifier on it."""
    from nodecode.codec.zoo import load_codec
    from nodecode.data.classification import load_inputs
    from nodecode.data.folders import scan_image_folder
    from nodecode.data.images import list_images, load_image
    from nodecode.eval.codec_eval import average, evaluate_learned
    from nodecode.tasks.classification import evaluate_classifier
    from nodecode.utils import pick_device
    dev = pick_device(None)
    seconds, since = {}, [time.perf_counter()]     # each part's wall (a measurement took 75-175 s on an H200)

    def lap(part: str) -> None:
        seconds[part], since[0] = round(time.perf_counter() - since[0], 1), time.perf_counter()
    codec = load_codec(codec_path, dev)
    images = [(f.name, load_image(f)) for f in list_images(a.kodak)[: a.kodak_limit]]
    kodak = average(evaluate_learned(codec, images, dev))[0]
    lap("kodak")
    val = scan_image_folder(Path(a.data) / "val", classes=sorted(p.name for p in (Path(a.data) / "train").iterdir()
                                                                 if p.is_dir()), max_per_class=a.limit)
    res = {"codec": codec_path, "codec_name": codec.config.name,
           "kodak": {k: kodak[k] for k in ("bpp", "est_bpp", "psnr", "ssim", "ms_ssim", "images")},
           "imagenette_bpp": load_inputs(val, "latent", codec, cache_dir=a.cache)[1]["bpp"]}
    lap("imagenette_bpp")
    if classifier:
        r = evaluate_classifier(classifier, a.data, device=dev, cache_dir=a.cache)
        res.update(top1=r["top1"], top5=r["top5"], classifier=classifier)
        lap("top1")
    return {**res, "seconds": seconds}


def segmentation(a, codec_path: str, classifier: str, out: Path, seed: int, width: float, minutes: float) -> dict | None:
    """§6.1: freeze the codec, fine-tune cResNet-51-d (at the backbone's width) from this backbone on CamVid (A.5)."""
    from nodecode.tasks.segmentation import SegmenterTrainConfig, train_segmenter
    s = finished(train_segmenter(SegmenterTrainConfig(data=a.camvid, out=str(out), model="cresnet51_d", input="latent",
                                         codec=codec_path, init=classifier, width=width, limit=a.limit,
                                         iters=a.seg_iters, cache_dir=a.cache, seed=seed,
                                         **({"batch_size": a.seg_batch_size} if a.seg_batch_size else {}), max_minutes=minutes,
                                         progress=False)))
    return None if s is None else {"val": s.get("val"), "summary": str(out / "summary.json")}


def run_point(stage, done, out: Path, a, point: str, seed: int) -> bool:
    """One operating point and seed through every stage; `stage(key, fn)` records finished ones (Runs.stage), `done`
    holds them."""
    from nodecode.tasks.classification import ClassifierTrainConfig, load_classifier, train_classifier
    from nodecode.tasks.joint import JointTrainConfig, train_joint
    work = Path(a.work) / point
    per_seed = "{seed}" in a.cls_pattern        # each seed its own baseline (e.g. matched.py's seeds)
    found = Path(a.cls_pattern.format(root=a.cls_root, point=point, seed=seed))
    table2 = found if found.suffix == ".safetensors" else found / "classifier.safetensors"
    base_dir = work / (f"baseline-cls-s{seed}" if per_seed else "baseline-cls")

    def baseline_cls(m):
        if table2.exists():
            return {"classifier": str(table2), "trained_here": False}
        s = finished(train_classifier(ClassifierTrainConfig(
            data=a.data, out=str(base_dir), model="cresnet51", codec=point, width=a.width, epochs=a.scratch_epochs,
            batch_size=a.cls_batch_size, max_per_class=a.limit, cache_dir=a.cache, max_minutes=m, progress=False,
            **recipe_kw, **({"seed": seed} if per_seed else {}))))
        return s and {"classifier": str(base_dir / "classifier.safetensors"), "trained_here": True,
                      "minutes": s["minutes"], "recipe": a.recipe}

    def joint_cfg(run_dir, classifier, m, **kw):
        return JointTrainConfig(data=a.data, out=str(run_dir), codec=point, classifier=classifier, epochs=a.epochs,
                                batch_size=a.batch_size, max_per_class=a.limit, cache_dir=a.cache, seed=seed,
                                max_minutes=m, progress=False, image_size=a.image_size, **kw)

    def joint_stage(run_dir, classifier, **kw):
        def fn(m):
            s = finished(train_joint(joint_cfg(run_dir, classifier, m, **kw)))
            return s and {"val": s["val"], "minutes": s["minutes"], "steps": s["steps"], "beta": s["beta"],
                          "target_entropy": s["target_entropy"], "codec": str(run_dir / "codec.safetensors"),
                          "classifier": str(run_dir / "classifier.safetensors") if classifier else None, **kw}
        return fn

    def cls_stage(run_dir, codec, **kw):
        def fn(m):
            s = finished(train_classifier(ClassifierTrainConfig(
                data=a.data, out=str(run_dir), model="cresnet51", codec=codec, width=width, batch_size=a.cls_batch_size,
                max_per_class=a.limit, cache_dir=a.cache, seed=seed, max_minutes=m, progress=False, **recipe_kw, **kw)))
            return s and {"val": s["val"], "minutes": s["minutes"], "classifier": str(run_dir / "classifier.safetensors"),
                          **({"recipe": a.recipe} if a.recipe != "paper" else {})}
        return fn

    # the image size (224 but in smoke tests) and the recipe (the configs' default is paper: the same configs)
    recipe_kw = {"image_size": a.image_size, **({} if a.recipe == "paper" else {"recipe": a.recipe})}
    base = stage(f"{point}/baseline-cls" + (f"-s{seed}" if per_seed else ""), baseline_cls)
    if not base:
        return False
    width = load_classifier(base["classifier"])[1]["width"]
    joint = stage(f"{point}/joint-s{seed}", joint_stage(work / f"joint-s{seed}", base["classifier"]))
    ft = joint and stage(f"{point}/ft", joint_stage(work / "ft", None))
    scratch = ft and stage(f"{point}/scratch-s{seed}", cls_stage(work / f"scratch-s{seed}", ft["codec"],
                                                                    epochs=a.scratch_epochs))
    more = scratch and stage(f"{point}/control-s{seed}", cls_stage(
        work / f"control-s{seed}", ft["codec"], init=scratch["classifier"], epochs=a.more_epochs, **more_epochs_kw(a)))
    if not more:
        return False
    rows = (("baseline", point, base["classifier"]), ("compression_ft", ft["codec"], more["classifier"]),
            ("joint_ft", joint["codec"], joint["classifier"]))
    # the baseline's codec and classifier do not depend on the seed (unless each seed has its own): measured once
    ok = all(stage(f"{point}/measure/{row}-s{seed}", lambda m, c=c, k=k: measure(a, c, k))
             for row, c, k in rows if seed == 0 or row != "baseline" or per_seed)
    for g in a.gammas:   # the γ ablation: one more joint fine-tune (and its measurements) per γ, after the main rows
        if not ok or gamma_row(g) == "joint_ft":
            continue
        row = gamma_row(g)   # a --merge'd fine-tune with work left (todo) whose codec is not here is trained again
        todo = [f"{point}/measure/{row}-s{seed}"] + ([f"{point}/seg/{row}-s{seed}"] if a.segmentation else [])
        gj = stage(f"{point}/joint-g{g:g}-s{seed}", joint_stage(work / f"joint-g{g:g}-s{seed}", base["classifier"],
                                                                 gamma=g, loss_scale=default_gamma() / g),
                   redo=lambda r, todo=todo: any(k not in done for k in todo) and not Path(r["codec"]).exists())
        ok = bool(gj) and stage(todo[0], lambda m, gj=gj: measure(a, gj["codec"], gj["classifier"])) is not None
        rows += ((row, gj["codec"], gj["classifier"]),) if ok else ()     # segmented with the main rows below
    if ok and seed == 0 and (work / "joint-s0" / "codec.safetensors").exists():  # trained here (not --merge'd):
        # the jointly trained codec (4.5 MiB fp16, as the bundled ones) comes back with the results
        for ext in (".safetensors", ".json"):
            dst = out / "weights" / f"{point}-joint{ext}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(work / f"joint-s{seed}" / f"codec{ext}", dst)
    if ok and a.segmentation:  # one segmenter per row (γ rows too) and seed (the seed also drives its own init)
        for row, c, k in rows:
            ok = ok and stage(f"{point}/seg/{row}-s{seed}", lambda m, c=c, k=k, row=row: segmentation(
                a, c, k, work / f"seg-{row}-s{seed}", seed, width, m)) is not None
    return bool(ok)


def more_epochs_kw(a) -> dict:
    """The control's more epochs: paper, App. A.8's 0.0025 ÷10 at epochs 3 and 6 (as the joint fine-tune); another
    recipe, its own schedule (cosine) from a tenth of its lr, without warm-up (the classifier is trained already)."""
    from nodecode.tasks.recipe import get_recipe
    if a.recipe == "paper":
        return {"lr_epochs": (3, 6), "base_lr": 0.0025}
    return {"base_lr": get_recipe(a.recipe).base_lr / 10, "warmup_epochs": 0.0}


def merge_files(a) -> list[str]:
    """--merge's runs.json files, one per point and seed of this call (none without --merge)."""
    if not a.merge:
        return []
    return [a.merge.format(point=p, seed=s) for p in a.points.split(",") for s in range(a.first_seed, a.seeds)]


def run(a) -> None:
    points = a.points.split(",")
    if a.parallel:   # one process per point and seed, all at once, spread over the GPUs
        jobs = [(f"joint-{p}-s{s}", python_argv(__file__, "run", *point_args(a, p, s)))
                for p in points for s in range(a.first_seed, a.seeds)]
        codes = run_jobs(jobs, per_gpu=-(-len(jobs) // max(1, len(visible_gpus()))), log_dir=Path(a.out) / "logs")
        print(f"exit codes: {codes}; logs in {Path(a.out) / 'logs'}")
        return
    runs, budget = Runs(Path(a.out) / "runs.json", merge=merge_files(a)), Budget(a.budget_minutes)
    stage = partial(runs.stage, budget=budget, reserve=0.75)
    print(f"device: {device_name()}", flush=True)
    for seed in range(a.first_seed, a.seeds):
        if not all(run_point(stage, runs, Path(a.out), a, point, seed) for point in points):
            break
    f = lambda x, s=".4f": format(x, s) if isinstance(x, (int, float)) else "–"  # noqa: E731
    print(markdown_table(
        ["stage", "wall s", "top-1", "top-5", "mIoU", "bpp (Imagenette)", "Kodak bpp", "PSNR", "MS-SSIM"],
        [(k, f"{v.get('wall_s', 0):.0f}", *(f(val.get(m)) for m in ("top1", "top5", "miou")), f(v.get("imagenette_bpp")),
          f(kd.get("bpp")), f(kd.get("psnr"), ".2f"), f(kd.get("ms_ssim")))
         for k, v in runs.items() for val, kd in [(v.get("val") or v, v.get("kodak", {}))]]), flush=True)
    print(f"total wall this call: {budget.elapsed():.2f} min")


def point_args(a, point: str, seed: int) -> list[str]:
    """This call's flags for a one-point, one-seed process of --parallel: its own --out and --work (so each seed
    fine-tunes its own control codec, `ft`, where one process shares one among its seeds); the decode-once --cache is
    shared (written atomically: the RGB and latent arrays that matched.py's prepare filled are read, not rebuilt)."""
    skip = {"stage", "points", "parallel", "out", "work", "runs_json", "results", "first_seed", "seeds"}
    flags = []
    for k, v in vars(a).items():
        if k in skip or v is None or v is False:
            continue
        flags += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    tag = f"{point}-s{seed}"
    return flags + ["--points", point, "--first-seed", str(seed), "--seeds", str(seed + 1), "--out", f"{a.out}-{tag}",
                    "--work", f"{a.work}-s{seed}"]


def collect(a) -> None:
    import numpy as np
    done = load_runs(*a.runs_json)  # one runs.json per parallel process (per point), merged
    res = Path(a.results)
    res.mkdir(parents=True, exist_ok=True)
    points = sorted({k.split("/")[0] for k in done}, key=lambda p: int(p[1:]))
    rows = table_rows(done)
    table = {}
    for p in points:
        table[p] = {}
        for row in rows:
            ms = [v for k, v in done.items() if k.startswith(f"{p}/measure/{row}-s")]
            if not ms:
                continue
            t1, t5 = [100 * m["top1"] for m in ms], [100 * m["top5"] for m in ms]
            mi = [100 * v["val"]["miou"] for k, v in done.items() if k.startswith(f"{p}/seg/{row}-s") and v.get("val")]
            # codec metrics: mean over seeds (each joint seed has its own codec; the others share one)
            kodak = {k: float(np.mean([m["kodak"][k] for m in ms])) for k in ms[0]["kodak"]}
            table[p][row] = {"imagenette_bpp": float(np.mean([m["imagenette_bpp"] for m in ms])), "kodak": kodak,
                             "kodak_bpp_seeds": [m["kodak"]["bpp"] for m in ms],
                             "top1": float(np.mean(t1)), "top1_std": float(np.std(t1)), "top5": float(np.mean(t5)),
                             "seeds": len(ms), "miou": float(np.mean(mi)) if mi else None,
                             "miou_std": float(np.std(mi)) if mi else None, "miou_seeds": len(mi),
                             "codec": ms[0]["codec_name"]}
        table[p]["stage_wall_s"] = {k.split("/", 1)[1]: v["wall_s"] for k, v in done.items() if k.startswith(p + "/")}
        table[p]["device"] = next((v["device"] for k, v in done.items() if k.startswith(p + "/")), None)
    (res / "summary.json").write_text(json.dumps({"points": table, "paper_bpp": PAPER_BPP}, indent=1) + "\n")
    cells = []
    for p in points:
        for row in rows:
            if row in table[p]:
                t = table[p][row]
                k, miou = t["kodak"], t["miou"]
                cells.append((p, row, f"{k['bpp']:.4f}", f"{t['imagenette_bpp']:.4f}", f"{k['psnr']:.2f}", f"{k['ssim']:.4f}",
                              f"{k['ms_ssim']:.4f}", f"{t['top1']:.2f} ± {t['top1_std']:.2f}", f"{t['top5']:.2f}",
                              "–" if miou is None else f"{miou:.2f} ± {t['miou_std']:.2f} ({t['miou_seeds']})", t["seeds"]))
    md = markdown_table(["point", "row", "bpp Kodak", "bpp Imagenette", "PSNR", "SSIM", "MS-SSIM", "top-1", "top-5", "mIoU",
                         "seeds"], cells, "ll" + "r" * 9)
    (res / "summary.md").write_text(md + "\n")
    plots(table, res)
    print(md)


def row_colors(table) -> dict:
    """One colour per fine-tune row in every figure: the control blue, joint red, the γ rows by rising γ."""
    ablation = sorted({r for rows in table.values() for r in rows if row_gamma(r) is not None}, key=row_gamma)
    return {"compression_ft": "tab:blue", "joint_ft": "tab:red", **{r: f"C{4 + i}" for i, r in enumerate(ablation)}}


def _arrows(ax, table, x, y, colors):
    """Fig. 7 / Fig. 11 style: from the baseline (start) to each fine-tune (end) operating point."""
    labelled = set()        # each row's legend entry once, at the first point that has it
    for p, rows in table.items():
        if "baseline" not in rows:
            continue
        b = rows["baseline"]
        ax.plot(x(b), y(b), "ko")
        for row, color in colors.items():
            if row in rows:
                e = rows[row]
                ax.annotate("", xy=(x(e), y(e)), xytext=(x(b), y(b)), arrowprops={"arrowstyle": "->", "color": color})
                ax.plot(x(e), y(e), "o", color=color, label=None if row in labelled else row.replace("_", " "))
                labelled.add(row)
        ax.annotate(p, (x(b), y(b)), textcoords="offset points", xytext=(4, -10), fontsize=8)


def plots(table, res: Path) -> None:
    plt, colors = pyplot(), row_colors(table)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, m, lab in zip(axes, ("top1", "miou"), ("top-1, Imagenette val [%]", "mIoU, CamVid val [%]")):
        _arrows(ax, {p: {r: v for r, v in rows.items() if isinstance(v, dict) and v.get(m) is not None}
                     for p, rows in table.items()}, lambda r: r["imagenette_bpp"], lambda r, m=m: r[m], colors)
        ax.set_xscale("log"); ax.set_xlabel("bpp (real .ndc, Imagenette val)"); ax.set_ylabel(lab)
        ax.grid(alpha=0.3); ax.legend()
    fig.suptitle("Fig. 7: classification and segmentation, baseline -> fine-tuned (mean of 3 seeds)")
    save_figure(fig, res / "fig7_accuracy.png")
    points = [p for p in table if "baseline" in table[p]]
    fig, axes = plt.subplots(len(points), 3, figsize=(14, 3.6 * len(points)), squeeze=False)
    for p, row in zip(points, axes):  # one row per operating point, as App. A.7 (the points are far apart in bpp)
        for ax, m, lab in zip(row, ("ms_ssim", "ssim", "psnr"), ("MS-SSIM", "SSIM", "PSNR [dB]")):
            _arrows(ax, {p: table[p]}, lambda r: r["kodak"]["bpp"], lambda r, m=m: r["kodak"][m], colors)
            ax.set_xlabel("bpp (real .ndc, Kodak)"); ax.set_ylabel(lab); ax.grid(alpha=0.3); ax.legend(fontsize=8)
            ax.set_title(f"{p}: {lab}", fontsize=10)
    fig.suptitle("Fig. 11: compression metrics, baseline -> fine-tuned (joint: mean of 3 seeds' codecs)")
    save_figure(fig, res / "fig11_compression.png")


def main():
    ap = experiment_parser(__doc__, area="joint")
    ap.add_argument("--data", default="/root/data/imagenette2-224")
    ap.add_argument("--kodak", default="/root/data/kodak")
    ap.add_argument("--camvid", default="/root/data/camvid")
    ap.add_argument("--cache", default="/root/cache")
    ap.add_argument("--cls-root", default="/root/cls", help="Table 2 classifiers: <point>-latent-cresnet51-s0/")
    ap.add_argument("--cls-pattern", default=DEFAULT_CLS_PATTERN,
                    help="a point's baseline classifier run folder (or .safetensors), formatted with root (--cls-root), "
                         "point and seed, e.g. /root/matched/runs/{point}-latent-cresnet51-w1-s{seed} (default: %(default)s)")
    ap.add_argument("--recipe", default="paper", help="tasks.recipe of the classifier stages: paper (App. A.4) or "
                                                      "imagenette (issue 12, as experiments/classification/matched.py)")
    ap.add_argument("--gammas", default=None, help="γ ablation of Eq. 2, comma separated: each γ other than the "
                                                   "default 0.001 adds a row joint_ft_g<γ> (e.g. 0.0003,0.001,0.003)")
    ap.add_argument("--merge", default=None,
                    help="run: an earlier machine's runs.json (formatted with point and seed) whose stages count as "
                         "done, e.g. results/joint/imagenette/runs-{point}-s{seed}.json to add --gammas rows only")
    ap.add_argument("--work", default="/root/joint")
    ap.add_argument("--out", default="/root/results/joint")
    ap.add_argument("--runs-json", nargs="+", default=[str(ROOT / "results" / "joint" / f"runs-{p}.json") for p in ("c8", "c32")],
                    help="collect: input(s), merged")
    ap.add_argument("--points", default="c8,c32")
    ap.add_argument("--seeds", type=int, default=1, help="run seeds --first-seed .. SEEDS-1")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--epochs", type=float, default=9, help="joint / codec-only fine-tune epochs (App. A.8)")
    ap.add_argument("--scratch-epochs", type=int, default=None,
                    help="control cResNet-51 from scratch (§4.4) and a baseline trained here (default: the recipe's: "
                         "paper 28, imagenette 40)")
    ap.add_argument("--more-epochs", type=int, default=9, help="control: more epochs on the new point (§6.1)")
    ap.add_argument("--batch-size", type=int, default=64, help="joint / codec-only fine-tunes (App. A.8)")
    ap.add_argument("--cls-batch-size", type=int, default=None,
                    help="classifiers (default: paper 256 as experiments/classification/table2.py, else the recipe's)")
    ap.add_argument("--width", type=float, default=1.0, help="< 1 only for smoke tests (baseline trained here)")
    ap.add_argument("--image-size", type=int, default=224, help="< 224 only for smoke tests")
    ap.add_argument("--limit", type=int, default=None, help="images per class (smoke tests)")
    ap.add_argument("--kodak-limit", type=int, default=None)
    ap.add_argument("--segmentation", action="store_true", help="also the §6.1 CamVid stage (cResNet-51-d on the new codecs)")
    ap.add_argument("--seg-iters", type=int, default=None, help="segmentation iterations (default: App. A.5 scaled, 694)")
    ap.add_argument("--seg-batch-size", type=int, default=None, help="default: App. A.5's 10 (smaller for smoke tests)")
    ap.add_argument("--parallel", action="store_true",
                    help="run: one process per point and seed side by side on the visible GPU(s), each with "
                         "--out/--cache suffixed -POINT-sSEED, --work -sSEED (collect those runs.json files with "
                         "--runs-json)")
    a = ap.parse_args()
    if a.stage == "run":
        from nodecode.tasks.recipe import get_recipe
        get_recipe(a.recipe)       # an unknown name fails here, not after the joint fine-tune
        gammas = a.gammas
        a.scratch_epochs = a.scratch_epochs or get_recipe(a.recipe).epochs
        a.cls_batch_size = a.cls_batch_size or (256 if a.recipe == "paper" else get_recipe(a.recipe).batch_size)
        missing = [f for f in merge_files(a) if not Path(f).is_file()]
        if missing:
            ap.error(f"--merge: no such file {missing[0]}")
        if not a.parallel:     # --parallel passes the string on to the per-point processes
            a.gammas = [float(g) for g in gammas.split(",") if g] if gammas else []
    run(a) if a.stage == "run" else collect(a)


if __name__ == "__main__":
    main()
