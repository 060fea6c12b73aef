"""Decode-once helpers shared by the datasets: a process pool map and atomic .npy caching."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from nodecode.utils import atomic_path


def pool_map(fn: Callable, jobs: list, workers: int | None = None, chunksize: int = 32) -> list:
    """fn over jobs, in worker processes when there are enough jobs to pay for them."""
    workers = workers or min(16, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 64:
        with ProcessPoolExecutor(workers) as ex:
            return list(ex.map(fn, jobs, chunksize=chunksize))
    return [fn(j) for j in jobs]


def cached_array(path: Path | None, make: Callable[[], np.ndarray]) -> np.ndarray:
    """np.load(path) if it exists, else make() and save it atomically (no caching when path is None)."""
    if path is not None and path.exists():
        return np.load(path)
    arr = make()
    if path is not None:
        with atomic_path(path) as tmp:
            np.save(tmp, arr)
    return arr
