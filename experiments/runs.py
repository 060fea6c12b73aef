"""Experiment helpers (DESIGN.md): runs.json bookkeeping, the time budget of a device call, one job per GPU, mean ± std.

A job is a subprocess (its own CUDA context, `CUDA_VISIBLE_DEVICES` set to its GPU); `schedule` keeps every slot
busy while the budget lasts, hands each finished job to a callback in the parent (the only writer of runs.json),
and terminates what still runs a little after the deadline (jobs are expected to stop themselves before it).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

NCCL_SAFE = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


class Runs:
    """A runs.json of finished runs keyed by name, merged with earlier ones (`done`), written atomically."""

    def __init__(self, path: Path, done: Path | None = None):
        self.path = Path(path)
        self.rows: dict = {}
        for p in (done, self.path):
            if p is not None and Path(p).exists():
                self.rows.update(json.loads(Path(p).read_text()))

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def add(self, key: str, row: dict) -> None:
        self.rows[key] = row
        self.save()

    def save(self, path: Path | None = None) -> None:
        path = Path(path or self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.rows, indent=1))
        tmp.replace(path)


class Budget:
    """Minutes left of a device call's budget."""

    def __init__(self, minutes: float):
        self.end = time.time() + 60 * minutes

    def left(self) -> float:
        return (self.end - time.time()) / 60


def slots(gpus: int | None = None, cpu_jobs: int = 1, per_gpu: int = 1) -> list[str | None]:
    """Job slots: `per_gpu` per visible GPU (all of them unless `gpus`), else `cpu_jobs` CPU slots (None)."""
    import torch
    n = torch.cuda.device_count() if gpus is None else min(gpus, torch.cuda.device_count())
    return [str(i) for i in range(n) for _ in range(per_gpu)] if n else [None] * cpu_jobs


@dataclass
class Job:
    key: str
    cmd: list[str]
    log: Path
    env: dict = field(default_factory=dict)


def schedule(jobs: list[Job], free: list[str | None], budget: Budget, on_done: Callable[[Job, int], None],
             min_start: float = 1.0, grace: float = 0.5, poll_s: float = 1.0) -> list[Job]:
    """Run `jobs` in order, one per slot, while at least `min_start` minutes are left; returns the jobs not started."""
    queue, running = list(jobs), []
    free = list(free)
    while queue or running:
        while queue and free and budget.left() >= min_start:
            job, slot = queue.pop(0), free.pop(0)
            env = {**os.environ, **NCCL_SAFE, "PYTHONUNBUFFERED": "1", **job.env}
            if slot is None:
                env.setdefault("OMP_NUM_THREADS", "1")
            else:
                env["CUDA_VISIBLE_DEVICES"] = slot
            job.log.parent.mkdir(parents=True, exist_ok=True)
            with open(job.log, "a") as logf:
                running.append((job, slot, subprocess.Popen(job.cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)))
            print(f"[{time.strftime('%H:%M:%S')}] start {job.key} on {'GPU ' + slot if slot else 'CPU'}", flush=True)
        if not running:
            break
        time.sleep(poll_s)
        for item in list(running):
            job, slot, proc = item
            if proc.poll() is None and budget.left() < -grace:
                proc.terminate()
            if proc.poll() is not None:
                running.remove(item)
                free.append(slot)
                on_done(job, proc.returncode)
    return queue


def mean_std(values) -> tuple[float, float]:
    """Mean and (population) standard deviation; std 0 for one value."""
    v = np.asarray(list(values), dtype=float)
    return float(v.mean()), float(v.std())
