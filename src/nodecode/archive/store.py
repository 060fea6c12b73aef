"""An archive folder: .ndc objects by content hash, the index database, a thumbnail cache; crash-safe writes.

Layout: ARCHIVE/archive.json (database URL, codec), ARCHIVE/objects/ab/<sha256>.ndc, ARCHIVE/index.sqlite (the
default database), ARCHIVE/cache/ (thumbnails, overlays; disposable). The sha256 is of the bytes that came in
(the original image file, or an uploaded .ndc), so the same image added twice is stored once.

Order of a write: object to a temp file -> fsync -> rename -> fsync(dir) -> one DB transaction with all rows of
the image. A crash leaves at worst an object without a row; `repair` (run when the first writer opens the archive,
under an exclusive lock that every writer then holds shared) removes those and any row whose object is missing.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from nodecode.archive.db import Database, is_postgres, sqlite_path
from nodecode.archive.index import Row
from nodecode.errors import NodecodeError

CONFIG = "archive.json"
SHA = re.compile(r"^[0-9a-f]{64}$")
WNID = re.compile(r"^n\d{8}$")   # a class id (ImageNet WordNet id) rather than a name


def init_archive(path: str | os.PathLike, db: str | None = None, codec: str = "c8") -> Path:
    """Create ARCHIVE (or adopt an empty/our own folder) and the database schema."""
    from nodecode.codec.zoo import list_codecs
    root = Path(path)
    if (root / CONFIG).exists():
        raise NodecodeError(f"{root} is already an archive")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise NodecodeError(f"{root} exists and is not an empty folder")
    if codec not in list_codecs():
        raise NodecodeError(f"unknown codec '{codec}' (bundled: {', '.join(list_codecs())})")
    if db is not None and not is_postgres(db):
        raise NodecodeError(f"--db takes a postgresql:// URL (the default is SQLite inside the archive), not {db!r}")
    (root / "objects").mkdir(parents=True, exist_ok=True)
    database = Database(db or sqlite_path(root))
    try:
        database.create()
    finally:
        database.close()
    cfg = {"format": "nodecode-archive-1", "db": db, "codec": codec, "created": time.time()}
    tmp = root / f".{CONFIG}.tmp"
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    _fsync_file(tmp)
    os.replace(tmp, root / CONFIG)
    _fsync_dir(root)
    return root


def _fsync_file(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Archive:
    """An open archive. `write=True` takes the writer lock (and repairs if it is the only writer)."""

    def __init__(self, path: str | os.PathLike, write: bool = False):
        self.root = Path(path)
        cfg_path = self.root / CONFIG
        if not cfg_path.is_file():
            raise NodecodeError(f"{self.root} is not an archive (run: nodecode archive init {self.root})")
        try:
            self.config = json.loads(cfg_path.read_text())
        except ValueError:
            raise NodecodeError(f"{cfg_path} is corrupted") from None
        self.codec_name = self.config["codec"]
        self.db = Database(self.config.get("db") or sqlite_path(self.root))
        self.objects = self.root / "objects"
        self.cache = self.root / "cache"
        self._lock_fd = None
        self.repaired: dict | None = None
        self._emb = None   # (count, max id, ids, matrix) cache for similarity
        self._put_lock = threading.Lock()   # one put at a time per process: the server's upload threads share it
        if write:
            self._lock_fd = os.open(self.root / "writers.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.repaired = self.repair()
            except BlockingIOError:
                pass  # other writers are live: their in-flight objects are not orphans
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- objects ----------------------------------------------------------------------------------------------
    def object_path(self, sha: str) -> Path:
        if not SHA.match(sha):   # the only way a name reaches the filesystem
            raise NodecodeError("bad object name")
        return self.objects / sha[:2] / f"{sha}.ndc"

    def _write_object(self, sha: str, data: bytes) -> None:
        dst = self.object_path(sha)
        dst.parent.mkdir(exist_ok=True)
        tmp = dst.parent / f".{sha}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)

    def repair(self) -> dict:
        """Remove temp files, objects without a row, and rows without an object. Returns the counts."""
        shas = {r[0] for r in self.db.query("SELECT sha256 FROM images")}
        temps = orphans = 0
        on_disk = set()
        for p in self.objects.glob("*/*"):
            if p.name.startswith("."):
                p.unlink(missing_ok=True)
                temps += 1
            elif p.suffix == ".ndc":
                if p.stem in shas:
                    on_disk.add(p.stem)
                else:
                    p.unlink(missing_ok=True)
                    orphans += 1
        missing = shas - on_disk
        if missing:
            with self.db.transaction() as cur:
                for sha in missing:
                    cur.execute("DELETE FROM images WHERE sha256 = ?", (sha,))
        return {"temp_files": temps, "orphan_objects": orphans, "rows_without_object": len(missing)}

    # -- writes -----------------------------------------------------------------------------------------------
    def has(self, sha: str) -> int | None:
        r = self.db.query("SELECT id FROM images WHERE sha256 = ?", (sha,))
        return int(r[0][0]) if r else None

    def put(self, row: Row) -> tuple[int, bool]:
        """Store one indexed image: (id, True) if new, (existing id, False) if its content was already there.

        Serialised within the process: two threads storing the same content would otherwise share the object's temp
        file (one's rename fails: a 500 in the server), and the loser's clean-up could delete the object that the
        winner is about to index. Other processes write other temp files, and the transaction settles who indexes."""
        with self._put_lock:
            return self._put(row)

    def _put(self, row: Row) -> tuple[int, bool]:
        old = self.has(row.sha256)
        if old is not None:
            return old, False
        self._write_object(row.sha256, row.ndc)
        try:
            with self.db.transaction() as cur:
                hit = cur.execute("SELECT id FROM images WHERE sha256 = ?", (row.sha256,)).fetchone()
                if hit:   # a concurrent writer stored it between our check and now
                    return int(hit[0]), False
                image_id = cur.insert_id(
                    "INSERT INTO images (sha256, name, width, height, orig_bytes, ndc_bytes, codec, label, added, embedding)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (row.sha256, row.name[:500], row.width, row.height, row.orig_bytes, len(row.ndc), row.codec,
                     row.top[0][1] if row.top else None, time.time(), row.embedding.astype(np.float32).tobytes()))
                cur.executemany("INSERT INTO labels (image_id, rank, label, name, score) VALUES (?, ?, ?, ?, ?)",
                                [(image_id, k, c, n, s) for k, (c, n, s) in enumerate(row.top)])
                cur.executemany("INSERT INTO areas (image_id, name, fraction) VALUES (?, ?, ?)",
                                [(image_id, n, f) for n, f in row.areas.items()])
            self._emb = None   # this process's next similarity query sees the new row
        except BaseException:
            if self.has(row.sha256) is None:   # no row: the object must not stay behind
                self.object_path(row.sha256).unlink(missing_ok=True)
            raise
        return image_id, True

    # -- reads ------------------------------------------------------------------------------------------------
    def image(self, image_id: int) -> dict:
        r = self.db.query("SELECT id, sha256, name, width, height, orig_bytes, ndc_bytes, codec, label, added"
                          " FROM images WHERE id = ?", (int(image_id),))
        if not r:
            raise NodecodeError(f"no image with id {image_id}")
        keys = ("id", "sha256", "name", "width", "height", "orig_bytes", "ndc_bytes", "codec", "label", "added")
        d = dict(zip(keys, r[0]))
        d["labels"] = [{"label": a, "name": b, "score": float(c)} for a, b, c in self.db.query(
            "SELECT label, name, score FROM labels WHERE image_id = ? ORDER BY rank", (int(image_id),))]
        d["areas"] = {a: float(b) for a, b in self.db.query(
            "SELECT name, fraction FROM areas WHERE image_id = ? ORDER BY fraction DESC", (int(image_id),))}
        return d

    def ndc(self, image_id: int) -> bytes:
        p = self.object_path(self.image(image_id)["sha256"])
        if not p.is_file():
            raise NodecodeError(f"object of image {image_id} is missing (run any write command to repair)")
        return p.read_bytes()

    def search(self, text: str, min_score: float = 0.0, limit: int = 50) -> list[dict]:
        """Images whose top-k labels include `text` (class name or id, case-insensitive), best score first."""
        q = text.strip().lower()
        if not q:
            return self.recent(limit)
        # each query is one range scan of an index on (key, score), read in score order and stopped at `limit`
        by = "l.label = ?" if WNID.match(text.strip()) else "lower(l.name) = ?"
        rows = self.db.query(
            "SELECT i.id, i.name, l.name, l.score FROM labels l JOIN images i ON i.id = l.image_id"
            f" WHERE {by} AND l.score >= ? ORDER BY l.score DESC LIMIT ?",
            (text.strip() if by.startswith("l.label") else q, float(min_score), int(limit)))
        if not rows:   # segmenter classes ("road", "sky"): by area fraction
            rows = self.db.query(
                "SELECT i.id, i.name, a.name, a.fraction FROM areas a JOIN images i ON i.id = a.image_id"
                " WHERE lower(a.name) = ? AND a.fraction >= ? ORDER BY a.fraction DESC LIMIT ?",
                (q, float(min_score), int(limit)))
        return [{"id": int(a), "name": b, "match": c, "score": float(s)} for a, b, c, s in rows]

    def recent(self, limit: int = 50) -> list[dict]:
        rows = self.db.query("SELECT id, name, label FROM images ORDER BY id DESC LIMIT ?", (int(limit),))
        return [{"id": int(a), "name": b, "match": c, "score": None} for a, b, c in rows]

    def _embeddings(self) -> tuple[np.ndarray, np.ndarray, list]:
        """(ids, unit embeddings, names) of all images, held in memory; re-checked against the database at most
        once a second (and at once after this process's own writes), reloaded when rows changed."""
        now = time.monotonic()
        if self._emb is None or now - self._emb[1] > 1.0:
            n, top = self.db.query("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM images")[0]
            if self._emb is None or self._emb[0] != (n, top):
                rows = self.db.query("SELECT id, name, embedding FROM images ORDER BY id")
                ids = np.array([r[0] for r in rows], dtype=np.int64)
                mat = np.stack([np.frombuffer(bytes(r[2]), dtype=np.float32) for r in rows]) if rows \
                    else np.zeros((0, 1), np.float32)
                self._emb = ((n, top), now, ids, mat, [r[1] for r in rows])
            else:
                self._emb = (self._emb[0], now, *self._emb[2:])
        return self._emb[2], self._emb[3], self._emb[4]

    def similar(self, embedding: np.ndarray, k: int = 10, exclude: int | None = None) -> list[dict]:
        """The k nearest images by cosine similarity of the embeddings (exact search over the in-memory matrix)."""
        ids, mat, names = self._embeddings()
        if not len(ids):
            return []
        sims = mat @ embedding.astype(np.float32)
        if exclude is not None:
            sims[ids == exclude] = -np.inf
        k = min(k, len(ids) - int(exclude is not None and bool((ids == exclude).any())))
        if k <= 0:
            return []
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top])]
        return [{"id": int(ids[i]), "name": names[i], "score": float(sims[i])} for i in top]

    def embedding(self, image_id: int) -> np.ndarray:
        ids, mat, _ = self._embeddings()
        i = int(np.searchsorted(ids, int(image_id)))
        if i < len(ids) and ids[i] == int(image_id):
            return mat[i]
        r = self.db.query("SELECT embedding FROM images WHERE id = ?", (int(image_id),))
        if not r:
            raise NodecodeError(f"no image with id {image_id}")
        return np.frombuffer(bytes(r[0][0]), dtype=np.float32)

    def stats(self) -> dict:
        n, ndc, orig = self.db.query("SELECT COUNT(*), COALESCE(SUM(ndc_bytes), 0), COALESCE(SUM(orig_bytes), 0) FROM images")[0]
        per = self.db.query("SELECT label, COUNT(*) FROM images GROUP BY label ORDER BY COUNT(*) DESC, label")
        disk = sum(p.stat().st_size for p in self.objects.glob("*/*.ndc"))
        return {"images": int(n), "ndc_bytes": int(ndc), "objects_on_disk_bytes": disk, "original_bytes": int(orig),
                "ratio": (int(orig) / int(ndc)) if ndc else None, "codec": self.codec_name,
                "database": "postgresql" if self.db.pg else "sqlite",
                "labels": {str(a): int(b) for a, b in per}}

    def clear_cache(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)
