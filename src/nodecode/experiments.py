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

    def save(self, path: str | Path | None = None) -> None:
        """Write runs.json (or a copy of it to `path`, e.g. beside a report)."""
        from nodecode.utils import write_json
        path = Path(path or self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.done)

    def stage(self, key: str, fn: Callable[[float], dict | None], budget: Budget, reserve: float = 1.0,
              margin: float = 0.5) -> dict | None:
        """The recorded result of `key`, or fn(minutes it may take) run now and recorded (with its wall time and
        device) unless it returns None (stopped on its budget: rerun to resume). None too when less than `reserve`
        minutes are left."""
        if key in self.done:
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
    each job's environment (with NCCL_SAFE, unbuffered output); output to logs[name], else log_dir/NAME.log
    (appended), else inherited. {name: exit code}, `on_done(name, code)` called in this process as each job ends.
    With a `budget`, no job starts with less than `min_start` minutes left (those are left out of the result: the
    next call runs them), and one still running `grace` minutes past the budget is terminated (jobs are expected to
    stop themselves before it)."""
    devices = (list(gpus) if gpus is not None else visible_gpus()) or [None]
    slots = [g for _ in range(per_gpu) for g in devices]          # first one job per GPU, then a second, ...
    queue, running, codes = list(jobs), {}, {}
    while queue or running:
        while queue and slots and (budget is None or budget.left() >= min_start):
            (name, argv), gpu = queue.pop(0), slots.pop(0)
            job_env = {**os.environ, **NCCL_SAFE, "PYTHONUNBUFFERED": "1", **(env or {}),
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
