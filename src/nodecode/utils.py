"""Small shared helpers: atomic writes, device selection, JSON provenance."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch


TMP_TAG = ".tmp."   # temporaries are named .NAME.tmp.XXXXXXXX.EXT beside NAME


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temporary(path: Path, suffix: str | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_TAG}", suffix=suffix or path.suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())   # what open() would have given, not mkstemp's 0600
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_outputs(*paths: str | os.PathLike | None, suffix: str | None = None):
    """Yield one temporary path per output (None for a None path); all are renamed onto their outputs only
    if the block succeeds, so a command never leaves some of its outputs behind after failing.

    Every temporary is created before the block runs: an unwritable output fails before any work is done."""
    from nodecode.errors import NodecodeError
    tmps: list[Path | None] = []
    try:
        for p in paths:
            try:
                tmps.append(None if p is None else _temporary(Path(p), suffix))
            except OSError as e:
                raise NodecodeError(f"cannot write {p}: {e.strerror or e}") from None
        yield tmps
        for p, t in zip(paths, tmps):
            if t is not None:
                try:
                    os.replace(t, p)
                except OSError as e:
                    raise NodecodeError(f"cannot write {p}: {e.strerror or e}") from None
    finally:
        for t in tmps:
            if t is not None and os.path.exists(t):
                os.unlink(t)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside `path`; move it onto `path` only if the block succeeds."""
    with atomic_outputs(path, suffix=suffix) as (tmp,):
        yield tmp


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete temporaries a killed process left in `folder` (of output `name`, or of any output); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(f".{name or '*'}{TMP_TAG}*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def provenance(command: str | None = None) -> dict:
    """What a results JSON records about where and how it was produced."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001 - provenance is best effort
        commit = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {"command": command, "git_commit": commit, "device": device, "torch": torch.__version__}
