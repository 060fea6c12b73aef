"""What every script under experiments/ shares: the `run` / `collect` command line, a time budget, the runs.json
of finished work (merged, skipped, saved after each item), jobs spread over the visible GPUs (within the budget,
each handed back as it ends), mean ± std over seeds, markdown tables and figures. A script keeps only its own rows,
stages and plots.

    ap = experiment_parser(__doc__, area="joint")         # stage (run | collect), --budget-minutes, --results
    ap.add_argument(...)                                    # the script's own flags
    a = ap.parse_args()
    runs, budget = Runs(Path(a.out) / "runs.json"), Budget(a.budget_minutes)
    runs.stage("c8-latent", lambda minutes: train(..., max_minutes=minutes), budget)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[2]        # the checkout: results/ and experiments/ live here
# NVLink multicast off in every job (experiments/device/README.md)
NCCL_SAFE = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def experiment_parser(doc: str | None, budget_minutes: float = 9.0,
                      stages: Sequence[str] = ("run", "collect"), area: str | None = None) -> argparse.ArgumentParser:
    """The parser every experiment starts from: `run` (device work, resumable) or `collect` (tables and figures into
    --results: results/AREA of the checkout unless told), or the script's own `stages`."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=list(stages))
    ap.add_argument("--budget-minutes", type=float, default=budget_minutes,
                    help="run: stop cleanly (finished work recorded, the current run checkpointed) before this")
    ap.add_argument("--results", default=str(ROOT / "results" / area) if area else None,
                    help="collect: where the tables and figures are written")
    return ap


class Budget:
    """Wall-time budget of one call, in minutes."""

    def __init__(self, minutes: float):
        self.minutes, self.t0 = minutes, time.time()

    def elapsed(self) -> float:
        return (time.time() - self.t0) / 60

    def left(self) -> float:
        return self.minutes - self.elapsed()


def load_runs(*paths: str | Path) -> dict:
    """The runs.json files that exist, merged in order (a later file's entry wins)."""
    done: dict = {}
    for p in paths:
        done.update(read_json(p, {}))
    return done


class Runs:
    """runs.json: finished work by key, merged with earlier files (`merge`, its own entries win), saved after every
    record so that a killed call loses only the item in progress."""

    def __init__(self, path: str | Path, merge: Sequence[str | Path] = ()):
        self.path = Path(path)
        self.done = load_runs(*merge, self.path)

    def __contains__(self, key) -> bool:
        return key in self.done

    def __getitem__(self, key):
        return self.done[key]

    def __len__(self) -> int:
        return len(self.done)

    def get(self, key, default=None):
        return self.done.get(key, default)

    def items(self):
        return self.done.items()

    def record(self, key: str, value: dict) -> dict:
        self.done[key] = value
        self.save()
        return value

    def add(self, *paths: str | Path) -> int:
        """Rows of other runs.json files (a device session's) added and saved; the number of new rows. A key already
        here with other values stops everything unsaved: a re-run of a key is a repeat, not a replacement."""
        new: dict = {}
        for p in paths:
            rows = read_json(p)
            if not isinstance(rows, dict):
                raise SystemExit(f"error: {p}: no runs.json (a JSON object of runs) there")
            for key, row in rows.items():
                if self.done.get(key, new.get(key, row)) != row:
                    where = self.path if key in self.done else "an earlier --add file"
                    raise SystemExit(f"error: {p}: run {key} is already in {where} with other values")
                if key not in self.done:
                    new[key] = row
        self.done.update(new)
        if new:
            self.save()
        return len(new)

    def save(self, path: str | Path | None = None) -> None:
        """Write runs.json (or a copy of it to `path`, e.g. beside a report)."""
        from nodecode.utils import write_json
        path = Path(path or self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.done)

    def stage(self, key: str, fn: Callable[[float], dict | None], budget: Budget, reserve: float = 1.0,
              margin: float = 0.5, redo: Callable[[dict], bool] | None = None) -> dict | None:
        """The recorded result of `key`, or fn(minutes it may take) run now and recorded (with its wall time and
        device) unless it returns None (stopped on its budget: rerun to resume). None too when less than `reserve`
        minutes are left. `redo(recorded)` true runs it again (e.g. its files stayed on an earlier machine)."""
        if key in self.done and not (redo and redo(self.done[key])):
            return self.done[key]
        if budget.left() < reserve:
            print(f"budget spent; next: {key}", flush=True)
            return None
        print(f"== {key} ({budget.left():.1f} min left)", flush=True)
        t = time.time()
        res = fn(budget.left() - margin)
        if res is None:
            return None
        return self.record(key, {"wall_s": time.time() - t, "device": device_name(), **res})


def finished(result) -> dict | None:
    """The summary of a train_* TrainResult, or None when it stopped on its time budget."""
    return result.summary if result.finished else None


def device_name() -> str:
    from nodecode.utils import provenance
    return provenance()["device"]


def visible_gpus() -> list[str]:
    """The GPU ids this process may use (CUDA_VISIBLE_DEVICES, else all torch sees); [] without CUDA."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


def run_jobs(jobs: Sequence[tuple[str, list[str]]], gpus: Sequence[str] | None = None, per_gpu: int = 1,
             log_dir: str | Path | None = None, poll_s: float = 1.0, *, budget: Budget | None = None,
             min_start: float = 0.0, grace: float = 0.5, on_done: Callable[[str, int], None] | None = None,
             env: Mapping[str, str] | None = None, logs: Mapping[str, str | Path] | None = None) -> dict[str, int]:
    """Run (name, argv) jobs as subprocesses, at most `per_gpu` at a time on each GPU (CUDA_VISIBLE_DEVICES set to
    it; with no GPUs, `gpus=[]` included, `per_gpu` at a time, CUDA_VISIBLE_DEVICES left as it is); `env` added to
    each job's environment (with NCCL_SAFE, unbuffered output, OMP_NUM_THREADS = cores / slots unless set); output
    to logs[name], else log_dir/NAME.log (appended), else inherited. {name: exit code}, `on_done(name, code)` called
    in this process as each job ends.
    With a `budget`, no job starts with less than `min_start` minutes left (those are left out of the result: the
    next call runs them), and one still running `grace` minutes past the budget is terminated (jobs are expected to
    stop themselves before it)."""
    devices = (list(gpus) if gpus is not None else visible_gpus()) or [None]
    slots = [g for _ in range(per_gpu) for g in devices]          # first one job per GPU, then a second, ...
    # each job's share of the cores unless told: torch's default (all cores in every process) put ~15 processes x 64
    # threads on a 4-GPU host's 64 cores, where 24 Kodak images took 186 s (7-10 s alone on an H200 host)
    threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // len(slots)))}
    queue, running, codes = list(jobs), {}, {}
    while queue or running:
        while queue and slots and (budget is None or budget.left() >= min_start):
            (name, argv), gpu = queue.pop(0), slots.pop(0)
            job_env = {**threads, **os.environ, **NCCL_SAFE, "PYTHONUNBUFFERED": "1", **(env or {}),
                       **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})}
            path = Path(logs[name]) if logs and name in logs else Path(log_dir) / f"{name}.log" if log_dir is not None else None
            out = None
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                out = open(path, "a")
            print(f"[{time.strftime('%H:%M:%S')}] start {name} on {'GPU ' + gpu if gpu is not None else 'CPU'}",
                  flush=True)
            running[name] = (subprocess.Popen(argv, env=job_env, stdout=out, stderr=subprocess.STDOUT if out else None),
                             gpu, out)
        if not running:
            break
        for name, (proc, gpu, out) in list(running.items()):
            if proc.poll() is None and budget is not None and budget.left() < -grace:
                proc.terminate()
                proc.wait()
            if proc.poll() is not None:
                codes[name] = proc.returncode
                slots.append(gpu)
                if out:
                    out.close()
                del running[name]
                if on_done is not None:
                    on_done(name, proc.returncode)
        if running:
            time.sleep(poll_s)
    return codes


def mean_std(values) -> tuple[float, float]:
    """Mean and (population) standard deviation over seeds; std 0 for one value."""
    import numpy as np
    v = np.asarray(list(values), dtype=float)
    return float(v.mean()), float(v.std())


def delta_se(std: float, n: int, ref_std: float, ref_n: int) -> float | None:
    """Standard error of a difference of two means over seeds (Welch), from mean_std's population stds turned into
    sample stds (ddof 1); None unless both sides have at least two runs."""
    if n < 2 or ref_n < 2:
        return None
    return (std ** 2 / (n - 1) + ref_std ** 2 / (ref_n - 1)) ** 0.5


def deltas_vs_decoded(rows: list[dict], key: str) -> None:
    """In place: each latent row's delta_`key` against the decoded row of its point and width, and its delta_se."""
    ref = {(r["point"], r["width"]): r for r in rows if r["input"] == "decoded"}
    for r in rows:
        d = ref.get((r["point"], r["width"])) if r["input"] == "latent" else None
        if d:
            r[f"delta_{key}"] = r[key] - d[key]
            r[f"delta_{key}_se"] = delta_se(r[f"{key}_std"], len(r["seeds"]), d[f"{key}_std"], len(d["seeds"]))


def delta_cells(row: dict, key: str) -> tuple[str, str]:
    """The table cells "Δ" and "SE of Δ" of a row after deltas_vs_decoded ("–" where there is none)."""
    d, se = row.get(f"delta_{key}"), row.get(f"delta_{key}_se")
    return ("–" if d is None else f"{d:+.2f}"), ("–" if se is None else f"{se:.2f}")


def mean_pm(mean: float, std: float, n: int) -> str:
    """A table cell: "mean ± std" over n > 1 seeds, the bare value for one (a single run has no spread to show)."""
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def best_seconds(fn: Callable[[], object], reps: int = 3) -> float:
    """The fastest of `reps` timed calls of fn (wall seconds): a benchmark's figure, robust to a noisy neighbour."""
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def log(msg: str) -> None:
    """A timestamped progress line (long pipelines whose log is read while they run)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_json(path: str | Path, default=None):
    """The JSON in `path`, or `default` when there is no such file (written with nodecode.utils.write_json)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], align: str | None = None) -> str:
    """A GitHub table; `align` one character per column ('l' or 'r', default: 'l' then 'r')."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    return "\n".join(["| " + " | ".join(map(str, header)) + " |", rule] +
                     ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on the device machines)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """Tight layout, written atomically, closed."""
    from nodecode.utils import atomic_path
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
    pyplot().close(fig)


def python_argv(script: str | Path, *args: str) -> list[str]:
    """The argv running an experiment script with this interpreter (for run_jobs)."""
    return [sys.executable, str(script), *map(str, args)]


# The grid experiments (experiments/*/matched.py): keys filtered by shell patterns, config overrides, one job per GPU
# (a subprocess of the script's `job` stage that stops itself with a checkpoint before the budget), runs.json written
# by the parent alone.
STOPPED = 75            # a job's exit code when it stopped on its budget (checkpointed: the next call resumes it)


def selected(key: str, patterns: Sequence[str] | None) -> bool:
    """Whether a grid key matches one of the --runs shell patterns (all keys when there are none)."""
    from fnmatch import fnmatch
    return not patterns or any(fnmatch(key, pat) for pat in patterns)


def overrides(items: Sequence[str] | None) -> dict:
    """--set name=value pairs (JSON values, else strings) as config fields."""
    out = {}
    for item in items or ():
        name, _, value = item.partition("=")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def add_grid_args(ap: argparse.ArgumentParser, state: str, points: str = "c8,c16,c32", widths: str = "0.25,0.5,1.0",
                  runs_example: str = "'c8-*-w1-s*,none-rgb-resnet50-w1-s0'") -> None:
    """The flags every grid experiment shares: state and report folders, the grid, the job scheduling."""
    ap.add_argument("config", nargs="?", help="job / prepare: the JSON config (internal)")
    ap.add_argument("--state", default=state, help="runs.json and run folders, kept between calls")
    ap.add_argument("--out", default=os.environ.get("OUT") or None, help="report folder (default $OUT, else --state)")
    ap.add_argument("--done", default=None, help="a runs.json of finished runs to skip (run) or tabulate (collect)")
    ap.add_argument("--add", nargs="+", default=(), metavar="RUNS_JSON",
                    help="collect: a device session's runs.json files, added to --done's before the report")
    ap.add_argument("--set", action="append", help="config override NAME=VALUE (JSON value), repeatable")
    ap.add_argument("--points", default=points)
    ap.add_argument("--widths", default=widths)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--runs", default=None, help="run: only grid keys matching these shell patterns (comma separated), "
                    f"e.g. {runs_example}")
    ap.add_argument("--gpus", type=int, default=None, help="GPUs to use (default: all visible)")
    ap.add_argument("--per-gpu", type=int, default=1, help="jobs side by side on one GPU")
    ap.add_argument("--cpu-jobs", type=int, default=1, help="parallel jobs without a GPU")
    ap.add_argument("--margin", type=float, default=1.0, help="minutes a job stops before the budget (loading, saving)")
    ap.add_argument("--min-start", type=float, default=2.0, help="no job starts with fewer minutes left")


def collected_runs(a) -> Runs:
    """collect: the table's runs (--done), with the rows of --add's files added to that runs.json first."""
    runs = Runs(Path(a.done))
    if a.add:
        print(f"{runs.add(*a.add)} new run(s) added to {runs.path}")
    return runs


def split_grid_args(a) -> None:
    """--points / --widths / --seeds / --runs as lists, --out defaulting to --state; --add only with collect."""
    if a.add and a.stage != "collect":
        raise SystemExit("error: --add is for collect (run merges finished runs with --done)")
    a.points = [p for p in a.points.split(",") if p]
    a.widths = [float(w) for w in a.widths.split(",")]
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.runs = [r for r in a.runs.split(",") if r] if a.runs else None
    a.out = a.out or a.state


def run_grid(a, script: str | Path, todo: Sequence[tuple[str, dict, dict]], runs: Runs,
             show: Callable[[dict], str], prepare: Callable[[list], None] | None = None) -> list[str]:
    """Run (key, config, row meta) as `script job` subprocesses over the GPUs (or CPU slots) within --budget-minutes,
    each stopping itself --margin minutes before it; `prepare(todo)` first (e.g. caches shared by the jobs); a
    finished job's RUN/result.json merged with its meta into runs.json and shown as `show(row)`. The keys left for the
    next call."""
    budget = Budget(a.budget_minutes)
    todo = [t for t in todo if t[0] not in runs]
    if not todo:
        return []
    if prepare is not None:
        prepare(todo)
    meta = {t[0]: t for t in todo}

    def done(k: str, rc: int) -> None:
        _, cfg, m = meta[k]
        if rc == 0:
            row = runs.record(k, {**m, **json.loads((Path(cfg["out"]) / "result.json").read_text())})
            print(f"  {k}: {show(row)}", flush=True)
        else:
            print(f"  {k}: " + ("stopped on the budget" if rc == STOPPED else f"failed (rc {rc}, see its log)")
                  + ", resumes next call", flush=True)

    stop_at = budget.t0 + 60 * (budget.minutes - a.margin)
    jobs = [(k, python_argv(script, "job", json.dumps({"config": cfg, "stop_at": stop_at}))) for k, cfg, _ in todo]
    gpus = visible_gpus()[: a.gpus]
    run_jobs(jobs, gpus=gpus, per_gpu=a.per_gpu if gpus else a.cpu_jobs, log_dir=Path(a.state) / "logs",
             budget=budget, min_start=a.min_start, on_done=done,
             env={} if gpus else {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return [k for k, _, _ in todo if k not in runs]


def grid_job(spec: dict, train: Callable[[dict, float], object], row: Callable[[object], dict]) -> int:
    """The `job` stage of a grid experiment: train(config, max_minutes until spec's stop_at) -> TrainResult; its exit
    code 0 with row(result) in RUN/result.json when finished, STOPPED (checkpointed) when it ran out of time."""
    from nodecode.utils import write_json
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["config"].items()}
    r = train(cfg, max((spec["stop_at"] - time.time()) / 60, 0.1))
    if not r.finished:
        return STOPPED
    write_json(r.out / "result.json", row(r))
    return 0


POINT_ORDER = ["c8", "c16", "c32"]      # operating points in table order


def grid_key(point: str, kind: str, model: str, width: float, seed: int) -> str:
    """A grid run's key: `{point|none}-{input}-{model}-w{width:g}-s{seed}` (RGB runs have no operating point)."""
    return f"{'none' if kind == 'rgb' else point}-{kind}-{model}-w{width:g}-s{seed}"


def matched_grid(points, widths, seeds, arms, patterns=None, widths_first: bool = False) -> list[tuple]:
    """(key, point, kind, model, width, seed) in run order: point by point (RGB rows with the first), then seed by seed
    and width by width in each (or width by width and seed by seed with `widths_first`), arm by arm; each key once,
    only those matching one of `patterns` (shell patterns) when given."""
    out, seen = [], set()
    for point in points:
        outer, inner = (widths, seeds) if widths_first else (seeds, widths)
        for o in outer:
            for i in inner:
                width, seed = (o, i) if widths_first else (i, o)
                for kind, model in arms:
                    k = grid_key(point, kind, model, width, seed)
                    if k not in seen and selected(k, patterns):
                        seen.add(k)
                        out.append((k, point, kind, model, width, seed))
    return out


def export_bundled(runs: Runs, run_dir: Path, out: Path, kind: str, metrics: Callable[[dict], dict]) -> list[Path]:
    """For each bundled `kind` (classifier / segmenter) of the zoo, the seed-0 grid run of its point, architecture
    and width (from its zoo entry), once finished, as fp16 weights in out/bundled/<zoo name>.safetensors with
    `metrics(row)` in the header: the files `python -m nodecode.zoo import-legacy` bundles. The files written."""
    from nodecode import zoo
    if kind == "classifier":
        from nodecode.tasks.classification import load_classifier as load, save_classifier as save
    else:
        from nodecode.tasks.segmentation import load_segmenter as load, save_segmenter as save
    written = []
    for name, cfg in zoo.index().items():
        key = grid_key(cfg.codec or "", "latent", cfg.architecture, cfg.width, 0)
        dest = out / "bundled" / f"{name}.safetensors"
        if cfg.kind != kind or key not in runs or dest.exists() or not (run_dir / key).is_dir():
            continue
        model, meta = load(run_dir / key, "cpu")
        dest.parent.mkdir(parents=True, exist_ok=True)
        save(model, dest, {**meta, **metrics(runs[key]), "source_run": key}, half=True)
        written.append(dest)
        print(f"bundle candidate {dest} ({dest.stat().st_size / 2**20:.2f} MiB) from {key}", flush=True)
    return written


def prepare_once(script: str | Path, cfg: dict) -> None:
    """`script prepare CFG` in one process on the first visible GPU (e.g. filling the caches the jobs share)."""
    gpus = visible_gpus()[:1]
    subprocess.run(python_argv(script, "prepare", json.dumps(cfg)), check=True,
                   env={**os.environ, **({"CUDA_VISIBLE_DEVICES": gpus[0]} if gpus else {})})


def arm(row: dict) -> tuple:
    """A grid row's arm: (point, input, model, width), what its seeds share."""
    return row["point"], row["input"], row["model"], row["width"]


def group_arms(rows: Mapping[str, dict]) -> list[tuple[tuple, list[dict]]]:
    """Rows grouped over seeds by arm (point, input, model, width), in table order: RGB first, then by point, width,
    input, model."""
    groups: dict = {}
    for r in rows.values():
        groups.setdefault(arm(r), []).append(r)
    return sorted(groups.items(), key=lambda kv: (POINT_ORDER.index(kv[0][0]) if kv[0][0] in POINT_ORDER else -1,
                                                  kv[0][3], kv[0][1], kv[0][2]))


def plot_arms(rows: Sequence[dict], arms, x: str, y: str, path: str | Path, xlabel: str, ylabel: str,
              style: Callable | None = None) -> None:
    """One panel per operating point, `y` (± `y`_std) against `x`, one colour per (input, model) arm in every panel
    (RGB rows in each); `style(ax)` for the axes' scales and ticks."""
    plt = pyplot()
    pts = [p for p in POINT_ORDER if any(r["point"] == p for r in rows)]
    fig, axes = plt.subplots(1, len(pts), figsize=(5 * len(pts), 4), sharex=True, sharey=True, squeeze=False)
    for ax, point in zip(axes[0], pts):
        for i, (kind, model) in enumerate(arms):
            rs = sorted((r for r in rows if r["input"] == kind and r["model"] == model
                         and r["point"] in (point, "none")), key=lambda r: r[x])
            if rs:
                ax.errorbar([r[x] for r in rs], [r[y] for r in rs], [r[f"{y}_std"] for r in rs],
                            marker="o", capsize=3, color=f"C{i}", label=f"{model} ({kind})")
        ax.set_title(point); ax.set_xlabel(xlabel); ax.grid(alpha=0.3)
        if style is not None:
            style(ax)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(ylabel)
    save_figure(fig, path)


def todo_points(todo: Sequence[tuple[str, dict, dict]]) -> list[str]:
    """The operating points the (key, config, row meta) items left to run need codec caches for, in table order."""
    return sorted({m["point"] for _, _, m in todo if m["input"] != "rgb"}, key=POINT_ORDER.index)


def grid_stage(a, stages: Mapping[str, Callable], job: Callable[[dict], int], prepare: Callable[[dict], None]) -> None:
    """Run a grid experiment's stage: `job` (exits with its code) and `prepare` on the JSON config (internal stages of
    run_grid / prepare_once), the others on the parsed arguments."""
    if a.stage == "job":
        sys.exit(job(json.loads(a.config)))
    if a.stage == "prepare":
        return prepare(json.loads(a.config))
    stages[a.stage](a)
