"""`archive add`: files and folders in, batched through Indexer.rows, each image stored with Archive.put."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from nodecode.archive.index import Indexer
from nodecode.archive.store import Archive
from nodecode.data.images import IMAGE_EXTENSIONS
from nodecode.errors import NodecodeError

EXTENSIONS = (*IMAGE_EXTENSIONS, ".ndc")


def collect(paths: list[str | os.PathLike]) -> list[Path]:
    """Image and .ndc files named or found (recursively) under the given folders, sorted, without duplicates."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in EXTENSIONS)
        elif p.is_file():
            out.append(p)
        else:
            raise NodecodeError(f"no such file or folder: {p}")
    seen, uniq = set(), []
    for f in out:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            uniq.append(f)
    return uniq


def add_files(archive: Archive, indexer: Indexer, files: list[Path], batch: int = 16, progress: bool = True, log=None) -> dict:
    """Store every file not yet in the archive; bad files are reported one line each and skipped."""
    from tqdm import tqdm
    log = log or sys.stderr
    counts = {"added": 0, "present": 0, "rejected": 0}
    pending: list[tuple[str, bytes]] = []

    def flush():
        good = []
        for name, data in pending:       # validate one by one so a bad file names itself and spoils nothing else
            try:
                indexer.symbols_of(name, data)
                good.append((name, data))
            except NodecodeError as e:
                print(f"nodecode: rejected: {e}", file=log)
                counts["rejected"] += 1
        for row in indexer.rows(good) if good else []:
            counts["added" if archive.put(row)[1] else "present"] += 1
        pending.clear()

    bar = tqdm(files, unit="img", disable=not progress, file=log)
    for f in bar:
        try:
            data = f.read_bytes()
        except OSError as e:
            print(f"nodecode: rejected: {f}: {e.strerror}", file=log)
            counts["rejected"] += 1
            continue
        if archive.has(hashlib.sha256(data).hexdigest()) is not None:   # resume: skip before any work
            counts["present"] += 1
            continue
        pending.append((f.name, data))
        if len(pending) >= batch:
            flush()
    flush()
    return counts
